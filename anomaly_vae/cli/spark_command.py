"""``anomaly-vae spark-score``: ``commands``' counterpart for the Spark job (``anomaly_vae.spark``),
with what starting and stopping a JVM from a command line needs: the model checked before Spark
starts, stop signals held while it starts, py4j's tracebacks kept off the terminal."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .commands import UsageError, _first_line, _report, _sep
from .signals import Stopped, signals_held

__all__ = ["spark_score"]


def spark_score(args: argparse.Namespace) -> int:
    from ..spark import spark_score as job
    from ..spark.job import check_job, reads_local_files

    if args.explain < 0:
        raise UsageError(f"--explain must be >= 0, got {args.explain}")
    # a wrong path, output name or model is said before Spark's JVM starts (seconds)
    checked = check_job(args.model_dir, args.data, args.out, args.alpha,
                        local=reads_local_files(args.master, dict(args.conf)))
    with warnings.catch_warnings():
        # PySpark 4 warns twice a run that it does not yet fully support pandas 3 (its pandas UDFs work
        # with it: tests/test_spark.py); the warning is for PySpark's developers, not this command's users
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        return _spark_score(args, job, checked)


def _spark_score(args: argparse.Namespace, job: Any, checked: Any) -> int:
    from ..spark import session

    # PySpark installs its own SIGINT handler with the context, and py4j logs a traceback for a
    # call a signal interrupts, some of it through its own logger and some through the root one
    # (``logging.exception`` in ``send_command``): keep this command's handlers (clean exit 128 +
    # signal) and its quiet
    logging.getLogger("py4j").setLevel(logging.CRITICAL)
    quiet = _NotFromPy4j()
    logging.getLogger().addFilter(quiet)
    jvm_stderr = _JvmStderr() if args.quiet else None
    try:
        handler = signal.getsignal(signal.SIGINT)
        with signals_held() as held, _jvm_ignores_stop_signals(jvm_stderr):  # held: see signals.signals_held
            try:
                spark = session(args.master, dict(args.conf))
            except Exception as err:
                if not held:
                    _did_not_start(err, jvm_stderr)
                spark = None  # the JVM failed to start meanwhile: report the signal
        signal.signal(signal.SIGINT, handler)
        if held:
            try:
                if spark is not None:
                    spark.stop()
            except Exception:  # noqa: BLE001 - the signal may have stopped the JVM too
                pass
            raise (KeyboardInterrupt() if held[0] == signal.SIGINT else Stopped(held[0]))
        if args.quiet:
            spark.sparkContext.setLogLevel("ERROR")
        return _spark_job(args, spark, job, checked)
    finally:
        logging.getLogger().removeFilter(quiet)
        if jvm_stderr is not None:
            jvm_stderr.close_unused()


def _did_not_start(err: Exception, jvm_stderr: _JvmStderr | None) -> None:
    """Spark's session could not be made: a JVM that exited at once (a bad ``--master`` or ``--conf``, no
    Java) is one line after the JVM's own message, not PySpark's traceback; other errors as they are."""
    from ..exceptions import InputError

    if not type(err).__module__.startswith(("pyspark", "py4j")):
        raise err
    if jvm_stderr is not None:
        jvm_stderr.drain()  # the JVM's own message first
    raise InputError(f"Spark did not start: {_java_message(err)} (check --master, --conf and the Java runtime; "
                     "the JVM's own message, if it printed one, is above)") from None


class _JvmStderr:
    """``--quiet``: the JVM's standard error read through a pipe and passed on to this process's, but for
    the lines its start always prints (the JVM's incubator-module warning, Spark's default log4j
    profile and level, Hadoop's native-library warning) and Java stack-trace frames; its messages and
    errors still show. Nothing in Spark's or log4j's configuration is changed (a user's settings and
    log files stay theirs). Lines go to a copy of this process's standard error taken first: a command
    started with it closed has no pipe (fd 2 may then be py4j's socket, which no line must reach). The
    JVM outlives the job (PySpark keeps its gateway until this process exits): lines it writes after
    this process has gone are dropped, and output without a newline (a progress bar's ``\r`` updates,
    on only with ``spark.ui.showConsoleProgress``) shows once a newline or the JVM's end comes."""

    DROPPED_LINES = (
        re.compile(rb"WARNING: Using incubator modules: [\w.,]+"),
        re.compile(rb"Using Spark's default log4j profile: \S+"),
        re.compile(rb'Setting default log level to "\w+"\.'),
        re.compile(rb"To adjust logging level use sc\.setLogLevel\(newLevel\)\..*"),
        re.compile(rb"\S+ \S+ WARN NativeCodeLoader: Unable to load native-hadoop library for your platform.*"),
        re.compile(rb"\tat .*|\t\.\.\. \d+ more"),  # a Java stack trace's frames: its message lines stay
    )

    def __init__(self) -> None:
        self.proc: Any = None
        self.thread: threading.Thread | None = None
        self.fd: int | None = None
        if sys.__stderr__ is not None:  # None: started with fd 2 closed
            try:
                self.fd = os.dup(sys.__stderr__.fileno())
            except (OSError, ValueError):
                self.fd = None

    def popen_kwargs(self, kwargs: dict[str, Any]) -> None:
        if self.fd is not None and "stderr" not in kwargs:  # PySpark's own choice, where it makes one, stays
            kwargs["stderr"] = subprocess.PIPE

    def started(self, proc: Any) -> None:
        if getattr(proc, "stderr", None) is None:
            return
        self.proc = proc
        self.thread = threading.Thread(target=self._forward, args=(proc.stderr,), name="jvm-stderr", daemon=True)
        self.thread.start()

    def _forward(self, pipe: Any) -> None:
        ok, fd = True, self.fd  # writes go on being drained after one fails: a full pipe would stall the JVM
        try:
            with pipe:
                for line in iter(pipe.readline, b""):
                    if ok and fd is not None and not any(p.fullmatch(line.rstrip(b"\r\n")) for p in self.DROPPED_LINES):
                        try:
                            view = memoryview(line)
                            while view:  # a pipe or terminal may take part of a line
                                view = view[os.write(fd, view):]
                        except OSError:
                            ok = False
        finally:
            self.fd = None
            if fd is not None:
                os.close(fd)

    def close_unused(self) -> None:
        """The copy of standard error, where no JVM was started to use it."""
        if self.thread is None and self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def drain(self, timeout: float = 1.0) -> None:
        """Wait for the last lines of a JVM that has exited (until its pipe ends); for one that runs on,
        at most ``timeout`` seconds for it to exit."""
        if self.thread is not None:  # set with proc, in started
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return
            self.thread.join(5.0)


@contextmanager
def _jvm_ignores_stop_signals(jvm_stderr: _JvmStderr | None = None) -> Iterator[None]:
    """The JVM PySpark starts meanwhile ignores SIGTERM and SIGHUP, as PySpark already has it ignore
    SIGINT: a signal to the whole process group (a closed terminal, systemd's stop, ``kill -- -PGID``)
    then stops the job through this command alone, which quiets Spark's log and stops its context.
    Acted on by the JVM too, its shutdown hook cancelled the running job first, and Spark logged the
    cancellation as ERRORs, dozens of lines of Java stack traces on the terminal. The JVM still goes
    with this command: PySpark's gateway exits when its stdin (a pipe from this process) closes,
    however this process ends. Done in the child between fork and exec (PySpark's ``Popen`` given
    one more ``preexec_fn`` step), so this process's own handlers are never changed; a disposition
    of "ignore" is what survives ``exec`` (a JVM does not install its shutdown handler for a signal
    it was started with ignored, as under ``nohup``). Where PySpark has no such ``Popen`` (another
    version) or the system is not POSIX, nothing changes."""
    try:
        from pyspark import java_gateway
    except ImportError:
        yield
        return
    real = getattr(java_gateway, "Popen", None)
    if real is None or os.name != "posix":
        yield
        return

    def popen(*args: Any, **kwargs: Any) -> Any:
        theirs = kwargs.get("preexec_fn")

        def preexec() -> None:
            if theirs is not None:
                theirs()
            for name in ("SIGTERM", "SIGHUP"):
                signal.signal(getattr(signal, name), signal.SIG_IGN)

        kwargs["preexec_fn"] = preexec
        if jvm_stderr is not None:
            jvm_stderr.popen_kwargs(kwargs)
        proc = real(*args, **kwargs)
        if jvm_stderr is not None:
            jvm_stderr.started(proc)
        return proc

    java_gateway.Popen = popen
    try:
        yield
    finally:
        java_gateway.Popen = real


class _NotFromPy4j:
    """A logging filter: no record logged from py4j's own source files (its tracebacks of a call a
    signal interrupted), whichever logger it used."""

    def filter(self, record: object) -> bool:
        path = str(getattr(record, "pathname", "")).replace("\\", "/")
        return "/py4j/" not in path


def _spark_job(args: argparse.Namespace, spark: Any, job: Any, checked: Any) -> int:
    from ..exceptions import InputError
    from ..spark.output import stop_in_chain

    stopped = True  # until the job returns or fails on its own: a signal, or an exception from outside Spark
    try:
        summary = job(spark, args.model_dir, args.data, args.out, id_column=args.id_column, explain=args.explain,
                      alpha=args.alpha, sep=_sep(args.sep), partitions=args.partitions, multiline=args.multiline_csv,
                      checked=checked,  # the model checked above, loaded once for the whole job
                      on_stop=lambda: spark.sparkContext.setLogLevel("OFF"))  # see the finally below
        stopped = False
    except Exception as err:  # Spark's own errors (a missing path, a failed stage) as one clear line
        stop = stop_in_chain(err)
        if stop is not None:  # a signal, then py4j's failure to say so to the JVM: report the signal
            raise stop from None
        stopped = False
        if type(err).__module__.startswith(("pyspark", "py4j")):
            raise InputError(f"Spark: {_spark_message(err)}") from None
        raise
    finally:
        for step in ((lambda: spark.sparkContext.setLogLevel("OFF")) if stopped else None, spark.stop):
            # setLogLevel: the job the signal cancelled is logged as an ERROR with a stack trace
            try:
                if step is not None:
                    step()
            except Exception:  # noqa: BLE001 - after a signal the Java side may already be gone
                pass
    return _report(summary, args.data, summary.id_name == "path")


def _spark_message(err: BaseException) -> str:
    """One line for a Spark error: the core's own message when a Python worker raised one (an
    ``InputError`` or ``ArtifactError`` inside the stack trace), else the error's first line."""
    found = re.findall(r"anomaly_vae\.exceptions\.\w+: (.+)", str(err))
    return found[-1].strip()[:500] if found else _java_message(err)


def _java_message(err: BaseException) -> str:
    """The error's first line, or where that is py4j's "An error occurred while calling o91.collect...",
    which names only the call, the Java exception's message under it."""
    first = _first_line(err)
    java = re.search(r"^\W*(?:[\w$]+\.)+[\w$]*(?:Exception|Error): (.+)$", str(err), re.MULTILINE)
    return java.group(1).strip()[:500] if java and first.startswith("An error occurred while calling") else first
