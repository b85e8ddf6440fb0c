"""The folders a Spark job ships its model from (``frames.ship_model``): made in the temporary
directory, served to the executors while the application runs, removed when the driver exits.

A driver killed without its exit handlers (SIGKILL, the kernel's OOM killer) used to leave its
folder behind for good, a copy of the model per killed job. Each folder now holds a lock that its
process keeps for its lifetime (``flock``, released by the kernel however the process ends, and
seen across PID namespaces that share the disk), so the next job removes the folders whose process
is gone, and never one whose process still serves it. Where ``fcntl`` does not exist (Windows) the
folders are made as before and not swept.
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

__all__ = ["PREFIX", "LOCK_NAME", "new_staging_dir", "sweep_stale"]

PREFIX = "anomaly-vae-spark-"
LOCK_NAME = ".lock"  # in the folder, beside the model's folder (which is what is shipped)
_HELD: list[int] = []  # the locks' file descriptors, open for the process's lifetime


def new_staging_dir() -> Path:
    """A new folder under the temporary directory, locked by this process until it exits, and
    removed at its exit. The folders of jobs whose process is gone are removed first."""
    sweep_stale()
    parent = Path(tempfile.mkdtemp(prefix=PREFIX))
    atexit.register(shutil.rmtree, parent, True)
    if fcntl is not None:
        # locked under another name, then renamed: a sweep never sees the lock file unlocked
        fd = os.open(parent / (LOCK_NAME + ".new"), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(parent / (LOCK_NAME + ".new"), parent / LOCK_NAME)
        _HELD.append(fd)
    return parent


def sweep_stale(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the staging folders under ``root`` (default: the temporary directory) that this user
    owns and whose lock no process holds; returns them. A folder with no lock file (being made by
    another process this instant, or made by an anomaly-vae before the lock) is left alone."""
    if fcntl is None:
        return []
    removed = []
    for folder in Path(root if root is not None else tempfile.gettempdir()).glob(PREFIX + "*"):
        lock = folder / LOCK_NAME
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
            fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # flock needs no write access
        except OSError:  # no lock file, or gone meanwhile
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # not a lock this package made
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: its job is running
                continue
            if _remove_locked_last(folder, lock):
                removed.append(folder)
        except OSError:  # a file this user may not remove: left, with its lock file, for a later sweep
            pass
        finally:
            os.close(fd)
    return removed


def _remove_locked_last(folder: Path, lock: Path) -> bool:
    """Remove ``folder``, its lock file last: a folder that cannot be emptied (a file this user may
    not remove) keeps its lock file, so a later sweep tries again, and is not reported removed."""
    for child in folder.iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    if any(child.name != LOCK_NAME for child in folder.iterdir()):
        return False
    lock.unlink(missing_ok=True)
    folder.rmdir()
    return True
