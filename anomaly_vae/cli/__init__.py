"""The command line: parse, call the core, print. No logic of its own.

Exit codes: 0 everything done; 3 done, but some rows could not be scored (each has its ``error``
in the output); 2 usage error (bad flags); 1 fatal error (missing file or column, unreadable model,
...); 128 + the signal's number when stopped by a signal: 130 SIGINT (Ctrl-C), 143 SIGTERM (what
``timeout``, systemd, Kubernetes and Airflow send), 129 SIGHUP. The three signals are handled alike:
the command stops, the hidden ``.part`` file of an output being written is removed (an output file
appears only when whole), and it exits with that code. A signal ignored by whoever started the
command (``nohup``, a shell's ``&``) stays ignored. A second signal while the first one's cleanup
runs removes the ``.part`` files and exits at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from typing import Any

from .commands import EXIT_FATAL, EXIT_OK, EXIT_ROW_ERRORS, EXIT_USAGE, UsageError
from .parser import build_parser
from .signals import EXIT_SIGNAL_BASE, STOP_SIGNALS, Stopped  # noqa: F401 - STOP_SIGNALS: the package's names
from .signals import stop_signals as _stop_signals

__all__ = ["main", "build_parser", "UsageError", "Stopped", "EXIT_OK", "EXIT_FATAL", "EXIT_USAGE", "EXIT_ROW_ERRORS",
           "EXIT_SIGNAL_BASE"]


# The allowed values of some flags, under the names this module gave its copies of them; they are
# the owners' own, imported on first access (the owners import torch).
_OWNED = {"LIKELIHOODS": ("objectives", "LIKELIHOODS"), "SCORES": ("scoring", "SCORES"),
          "PLOT_KINDS": ("plots", "KINDS")}


def __getattr__(name: str) -> Any:
    if name in _OWNED:
        module, attr = _OWNED[name]
        return getattr(importlib.import_module(f"..{module}", __name__), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    """Run ``anomaly-vae`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    with _stop_signals():
        try:
            args = parser.parse_args(argv)  # under the handlers: a command's flags can import the core
            logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                                format="%(levelname)s: %(message)s")
            return _run(parser, args)
        except KeyboardInterrupt as err:  # Ctrl-C, or Stopped (SIGTERM, SIGHUP): the cleanup has run
            signum = getattr(err, "signum", signal.SIGINT)
            try:
                print(f"anomaly-vae: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
            except OSError:  # after SIGHUP the terminal may be gone
                pass
            return EXIT_SIGNAL_BASE + signum


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ..exceptions import AnomalyVAEError  # after parsing: --help and usage errors stay fast

    try:
        return int(args.func(args))
    except UsageError as err:
        parser.print_usage(sys.stderr)
        print(f"anomaly-vae: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (AnomalyVAEError, ValueError, OSError) as err:
        print(f"anomaly-vae: error: {err}", file=sys.stderr)
        return EXIT_FATAL
