"""``anomaly-vae spark-score``: ``commands``' counterpart for the Spark job (``anomaly_vae.spark``),
with what starting and stopping a JVM from a command line needs: the model checked before Spark
starts, stop signals held while it starts, py4j's tracebacks kept off the terminal."""

from __future__ import annotations

import argparse
from typing import Any

from .commands import UsageError, _first_line, _report, _sep
from .signals import Stopped, signals_held

__all__ = ["spark_score"]


def spark_score(args: argparse.Namespace) -> int:
    import logging
    import signal

    from ..spark import session
    from ..spark import spark_score as job
    from ..spark.job import check_job, reads_local_files

    if args.explain < 0:
        raise UsageError(f"--explain must be >= 0, got {args.explain}")
    # a wrong path, output name or model is said before Spark's JVM starts (seconds)
    checked = check_job(args.model_dir, args.data, args.out, args.alpha,
                        local=reads_local_files(args.master, dict(args.conf)))
    # PySpark installs its own SIGINT handler with the context, and py4j logs a traceback for a
    # call a signal interrupts, some of it through its own logger and some through the root one
    # (``logging.exception`` in ``send_command``): keep this command's handlers (clean exit 128 +
    # signal) and its quiet
    logging.getLogger("py4j").setLevel(logging.CRITICAL)
    quiet = _NotFromPy4j()
    logging.getLogger().addFilter(quiet)
    try:
        handler = signal.getsignal(signal.SIGINT)
        with signals_held() as held:  # not while Spark starts: see signals.signals_held
            try:
                spark = session(args.master, dict(args.conf))
            except Exception:
                if not held:
                    raise
                spark = None  # the signal (to the process group) stopped the JVM too: report the signal
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


class _NotFromPy4j:
    """A logging filter: no record logged from py4j's own source files (its tracebacks of a call a
    signal interrupted), whichever logger it used."""

    def filter(self, record: object) -> bool:
        path = str(getattr(record, "pathname", "")).replace("\\", "/")
        return "/py4j/" not in path


def _spark_job(args: argparse.Namespace, spark: Any, job: Any, checked: Any) -> int:
    from ..exceptions import InputError

    try:
        summary = job(spark, args.model_dir, args.data, args.out, id_column=args.id_column, explain=args.explain,
                      alpha=args.alpha, sep=_sep(args.sep), partitions=args.partitions, multiline=args.multiline_csv,
                      checked=checked)  # the model checked above, loaded once for the whole job
    except Exception as err:  # Spark's own errors (a missing path, a failed stage) as one clear line
        if type(err).__module__.startswith(("pyspark", "py4j")):
            raise InputError(f"Spark: {_spark_message(err)}") from None
        raise
    finally:
        try:
            spark.stop()
        except Exception:  # noqa: BLE001 - after a signal the Java side may already be gone
            pass
    return _report(summary, args.data, summary.id_name == "path")


def _spark_message(err: BaseException) -> str:
    """One line for a Spark error: the core's own message when a Python worker raised one (an
    ``InputError`` or ``ArtifactError`` inside the stack trace), else the error's first line."""
    import re

    found = re.findall(r"anomaly_vae\.exceptions\.\w+: (.+)", str(err))
    return found[-1].strip()[:500] if found else _first_line(err)
