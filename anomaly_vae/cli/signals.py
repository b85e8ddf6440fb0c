"""Stop signals for the command line (see the package docstring): SIGINT, SIGTERM and SIGHUP raise
in the main thread, so that every ``with`` and ``finally`` on the way out runs; a second signal
exits at once; a command may hold them a while (``signals_held``)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["EXIT_SIGNAL_BASE", "STOP_SIGNALS", "Stopped", "stop_signals", "signals_held", "exit_now"]

EXIT_SIGNAL_BASE = 128  # + the signal's number, as a shell reports a process killed by it
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread as Ctrl-C raises ``KeyboardInterrupt``, so
    that every ``with`` and ``finally`` on the way out runs (the output's ``.part`` is removed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP stop the command by an exception in the main thread (see the
    package docstring). Only handlers still at their defaults are replaced: a signal that was
    ignored when the process started (nohup, ``&``) stays ignored. The previous handlers are
    restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    stopping = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal stopping
        if stopping:  # the first signal's cleanup is still running: do not wait for it
            exit_now(signum)
        stopping = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Stopped(signum)

    handler.anomaly_vae_stop = True  # type: ignore[attr-defined]  # a command may hold signals a while (spark-score)

    previous: dict[int, Any] = {}
    for name in STOP_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is None:  # no SIGHUP on Windows
            continue
        current = signal.getsignal(signum)
        if current in (signal.SIG_DFL, signal.default_int_handler):
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def exit_now(signum: int) -> None:
    """A second stop signal: remove the partial outputs and exit at once, without waiting for the
    first one's cleanup."""
    from ..io import remove_partial_outputs

    remove_partial_outputs()
    os.write(2, f"anomaly-vae: {signal.Signals(signum).name} again: exiting now\n".encode())
    os._exit(EXIT_SIGNAL_BASE + signum)


@contextmanager
def signals_held() -> Iterator[list[int]]:
    """SIGINT, SIGTERM and SIGHUP noted, not acted on, while the block runs (Spark's start, seconds);
    the caller acts on them after it. PySpark's ``launch_gateway`` stopped by an exception while it
    waits for the JVM removes the folder the JVM writes its port to and forgets the process: the
    JVM's main thread fails and its gateway thread keeps it running, with no Python process left to
    stop it (seen: one JVM left for every SIGTERM in the first seconds of ``spark-score``). A second
    signal stops the command at once, as it always does. Handlers that are not this command's (an
    ignored signal, a caller's own) are left alone."""
    held: list[int] = []

    def note(signum: int, frame: Any) -> None:
        if held:
            exit_now(signum)
        held.append(signum)

    previous = {}
    for name in STOP_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is not None and getattr(signal.getsignal(signum), "anomaly_vae_stop", False):
            previous[signum] = signal.signal(signum, note)
    try:
        yield held
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
