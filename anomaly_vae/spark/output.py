"""The output of a Spark job, written atomically: Spark's committer writes into a sibling temporary
directory, and ``OutputStaging.commit`` renames it to the output's name (through Hadoop's file
system, so HDFS and object stores work too), replacing an old output only then.

Replacing takes two renames (the old output aside, the new one into place). A signal or an error
between them used to leave no output under the name and the old one hidden beside it
(``.NAME.part-*.old``): the old output is now put back under its name, and one left aside after
the new output is in place is removed, however the block is left; a second signal, which exits at
once, does the same for a local output first. A signal that lands after the new output is in
place still stops the command (exit 128 + signal): the output under the name is then the new one.

Leaving the block early (a signal, an error) does not stop the Spark jobs it started: a Python
exception ends only the driver's wait for them. They are cancelled (by a job tag, so that other
jobs in the session run on) and their tasks waited for, a few seconds at most, before the
temporary directory is removed: removed under a running task, it made Spark log "Mkdirs failed"
as an ERROR with a stack trace after a stop (and could be made again by the task, left behind).
Where the output is on another file system (HDFS, an object store) and the JVM is gone, nothing
can be put back from Python: the old output stays beside the name, hidden."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..exceptions import InputError
from ..io import on_forced_exit
from .worker import local_path, on_another_file_system

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["OutputStaging", "stop_in_chain"]


class OutputStaging:
    """A context manager for one job's output ``out``: ``write`` it, then ``commit``. Leaving the block
    without ``commit`` (an error, a signal) removes the temporary directory and keeps an old output under
    its name; a cleanup that fails (a Java side already gone) never hides the error that caused it, and
    falls back to the local file system where the output is local. ``on_stop``: called first when a
    stop (``KeyboardInterrupt`` or a subclass, or an error raised while handling one) leaves the
    block, before its jobs are cancelled (the command line quiets Spark's log there: a cancelled
    job is logged as ERRORs)."""

    STOP_WAIT_S = 10.0  # at most, for the cancelled jobs' tasks to end

    def __init__(self, spark: SparkSession, out: str, *, on_stop: Callable[[], object] | None = None) -> None:
        self._sc = spark.sparkContext
        self._on_stop = on_stop
        jvm = spark.sparkContext._jvm
        self._jvm = jvm
        self.out = out
        self.target = jvm.org.apache.hadoop.fs.Path(out.rstrip("/"))
        self.fs = self.target.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        self.tmp_name = f".{self.target.getName()}.part-{uuid.uuid4().hex[:12]}"
        self.tmp = jvm.org.apache.hadoop.fs.Path(self.target.getParent(), self.tmp_name)
        self.tmp_str = self.tmp.toString()
        self.old = jvm.org.apache.hadoop.fs.Path(self.target.getParent(), f"{self.tmp_name}.old")
        # ".." resolved by text, as Hadoop resolves it (not through a symlinked folder, as pathlib's parent is)
        local = None if on_another_file_system(out) else Path(os.path.normpath(local_path(out.rstrip("/"))))
        self._local = None if local is None else (local, local.parent / self.tmp_name,
                                                   local.parent / f"{self.tmp_name}.old")
        self._moved_aside = False  # the old output is at ``old`` (until it is removed or put back)
        self._forced = contextlib.ExitStack()
        self._tag: str | None = None  # the job tag of this block's Spark jobs, while it is set
        self._check_replaceable()

    def _check_replaceable(self) -> bool:
        """Whether an output is there; one is replaced only if it is an earlier Spark job's (it holds
        ``_SUCCESS``), else refused."""
        if not self.fs.exists(self.target):
            return False
        if not self.fs.getFileStatus(self.target).isDirectory() or not self.fs.exists(
                self._jvm.org.apache.hadoop.fs.Path(self.target, "_SUCCESS")):
            raise InputError(f"{self.out} exists and is not the output of an earlier Spark job (no _SUCCESS in "
                             "it): it is not replaced; give another --out or remove it")
        return True

    def __enter__(self) -> OutputStaging:
        tag = f"anomaly-vae-output-{self.tmp_name.rsplit('-', 1)[-1]}"
        self._sc.addJobTag(tag)  # a local property of this thread: its jobs until the block is left
        self._tag = tag
        if self._local is not None:  # a second signal exits at once, without this block's cleanup: do it then
            self._forced.enter_context(on_forced_exit(self._clean_up_locally))
        return self

    def write(self, df: DataFrame, fmt: str) -> None:
        writer = df.write.mode("errorifexists").format(fmt)
        if fmt == "csv":  # RFC 4180 quoting: a quote inside a field is doubled, as pandas and `score` write it
            writer = writer.option("header", "true").option("escape", '"')
        writer.save(self.tmp_str)

    def commit(self) -> None:
        if self._check_replaceable():  # again: something else may have been put there while the job ran
            self._moved_aside = True  # before the call: a signal during it may land after the rename
            if not self.fs.rename(self.target, self.old):
                raise InputError(f"{self.out}: cannot move the old output aside")
        if not self.fs.rename(self.tmp, self.target):
            raise InputError(f"{self.out}: cannot rename the finished output into place")
        if self._moved_aside:
            self.fs.delete(self.old, True)
            self._moved_aside = False

    def __exit__(self, *exc: object) -> None:
        with self._forced:
            if exc[0] is not None:
                self._stop_jobs(isinstance(exc[1], BaseException) and stop_in_chain(exc[1]) is not None)
            if self._tag is not None:
                with contextlib.suppress(Exception):  # the gateway may be gone
                    self._sc.removeJobTag(self._tag)
                self._tag = None
            try:
                self._clean_up(self.fs.exists, lambda p: self.fs.delete(p, True), self.fs.rename,
                               (self.target, self.tmp, self.old))
            except BaseException as e:  # noqa: BLE001 - the gateway may be gone (a signal): clean up locally
                self._clean_up_locally()
                if exc[0] is None and not isinstance(e, Exception):  # a signal during the cleanup: acted on
                    raise

    def _stop_jobs(self, stop: bool) -> None:
        """Cancel this block's running jobs and wait for their tasks to end (``STOP_WAIT_S`` at most);
        nothing to wait for after a failed stage, whose job has ended. A Java side already gone, or
        a second Ctrl-C meanwhile (a library caller's), ends the wait: the cleanup goes on."""
        try:
            tracker = _reconnected(lambda: self._sc._jsc.sc().statusTracker())
            if stop and self._on_stop is not None:
                self._on_stop()
            if self._tag is None:
                return
            self._sc.cancelJobsWithTag(self._tag)
            deadline = time.monotonic() + self.STOP_WAIT_S
            while any(_running(tracker, job) for job in tracker.getJobIdsForTag(self._tag)):
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)
        except BaseException:  # noqa: BLE001, S110 - see the docstring: the removal that follows is what matters
            pass

    def _clean_up_locally(self) -> None:
        if self._local is not None:
            with contextlib.suppress(OSError):  # the error that left the block is the one to report
                self._clean_up(lambda p: p.exists() or p.is_symlink(), _remove_local, lambda a, b: a.rename(b),
                               self._local)

    def _clean_up(self, exists: Any, remove: Any, rename: Any, paths: tuple[Any, Any, Any]) -> None:
        """An old output moved aside goes back under its name when nothing is there, and is removed
        when the new output is; then the temporary directory is removed (in this order: the old output
        is the one to keep if a second signal ends the process during the cleanup)."""
        target, tmp, old = paths
        if self._moved_aside and exists(old):
            if exists(target):
                remove(old)
            else:
                rename(old, target)
        self._moved_aside = False
        if exists(tmp):
            remove(tmp)


def stop_in_chain(err: BaseException) -> KeyboardInterrupt | None:
    """The stop signal (``KeyboardInterrupt``, ``Stopped``) an exception was raised while handling,
    if any. A signal that lands in a py4j call (``collect``) is raised there, and PySpark's call-site
    bookkeeping on the way out then fails on the interrupted connection ("Answer from Java side is
    empty"): that error replaces the signal, which is still in its context."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        cause = todo.pop()
        if cause is None or id(cause) in seen:
            continue
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        todo += [cause.__context__, cause.__cause__]
    return None


def _reconnected(call: Callable[[], Any], tries: int = 5) -> Any:
    """``call``'s result, tried again on an error: py4j's first call after a signal interrupted one
    makes a new connection, whose handshake fails now and then ("Answer from Java side is empty")."""
    for attempt in range(tries):
        try:
            return call()
        except Exception:
            if attempt == tries - 1:
                raise
            time.sleep(0.05)
    return None


def _running(tracker: Any, job: int) -> bool:
    """Whether a job runs or has tasks that still run: a cancelled job is marked failed at once, and its
    tasks end when they next look (the stage's count of active tasks follows them)."""
    info = tracker.getJobInfo(job)
    if not info.isDefined():
        return False
    info = info.get()
    if str(info.status()) == "RUNNING":
        return True
    for stage_id in info.stageIds():
        stage = tracker.getStageInfo(stage_id)
        if stage.isDefined() and stage.get().numActiveTasks() > 0:
            return True
    return False


def _remove_local(path: Path) -> None:
    if path.is_symlink():  # the output was a link: the link goes, never what it points to
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)
