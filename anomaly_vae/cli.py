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
import json
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._version import __version__

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_ROW_ERRORS = 0, 1, 2, 3
EXIT_SIGNAL_BASE = 128  # + the signal's number, as a shell reports a process killed by it
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

EPILOG = """exit codes: 0 all rows scored; 3 some rows had errors (see the error column); 2 usage error;
1 fatal error; 130 / 143 / 129 stopped by SIGINT (Ctrl-C) / SIGTERM / SIGHUP: the output being
written is removed (outputs appear only when whole).
Data: CSV / TSV (delimiter sniffed, or --sep), Parquet, .npy / .npz, or a folder of PNG / JPEG /
BMP / TIFF / WebP images (recursive, sorted). Only regular files are read: a named pipe, socket or
device is refused (in an image folder: an error row), never opened."""


class UsageError(Exception):
    """Flags that do not fit together: exit 2."""


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread as Ctrl-C raises ``KeyboardInterrupt``, so
    that every ``with`` and ``finally`` on the way out runs (the output's ``.part`` is removed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP stop the command by an exception in the main thread (see the
    module docstring). Only handlers still at their defaults are replaced: a signal that was
    ignored when the process started (nohup, ``&``) stays ignored. The previous handlers are
    restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    stopping = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal stopping
        if stopping:  # the first signal's cleanup is still running: do not wait for it
            from .io import remove_partial_outputs

            remove_partial_outputs()
            os.write(2, f"anomaly-vae: {signal.Signals(signum).name} again: exiting now\n".encode())
            os._exit(EXIT_SIGNAL_BASE + signum)
        stopping = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Stopped(signum)

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


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def parse_size(text: str) -> tuple[int, int]:
    """``"28x28"`` -> (28, 28): height x width."""
    from .exceptions import InputError

    parts = text.lower().split("x")
    try:
        h, w = (int(v) for v in parts)
    except ValueError:
        raise InputError(f"image size must look like HxW (for example 28x28), got {text!r}") from None
    if h < 8 or w < 8:
        raise InputError(f"image size must be at least 8x8, got {text!r}")
    return h, w


def _data_options(args: argparse.Namespace) -> Any:
    from .jobs import DataOptions

    return DataOptions(
        sep=_sep(getattr(args, "sep", None)), label_column=getattr(args, "label_column", None),
        normal_label=getattr(args, "normal_label", None), id_column=getattr(args, "id_column", None),
        drop_columns=[c.strip() for c in (getattr(args, "drop_columns", None) or "").split(",") if c.strip()],
        image_size=parse_size(args.image_size) if getattr(args, "image_size", None) else None,
        channels=getattr(args, "channels", None), batch_size=getattr(args, "batch_size", None) or 16384,
    )


def _sep(text: str | None) -> str | None:
    if text is None:
        return None
    return {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(text, text)


def _alpha(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"alpha must be a number in (0, 1), got {text!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"alpha must be in (0, 1), got {text}")
    return v


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {v}")
    return v


def _progress(total: int | None, quiet: bool, unit: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=f" {unit}", disable=quiet, file=sys.stderr, dynamic_ncols=True)


# -- commands ----------------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    from .jobs import train_job

    opts = _data_options(args)
    params: dict[str, Any] = {"model": args.model, "alpha": args.alpha, "epochs": args.epochs,
                              "likelihood": args.likelihood, "score_kind": args.score, "verbose": 0 if args.quiet else 1,
                              "device": args.device}
    if args.latent_dim:
        params["latent_dim"] = args.latent_dim
    if args.hidden_sizes:
        params["hidden_sizes"] = tuple(int(v) for v in args.hidden_sizes.split(","))
    if args.activation:
        params["activation"] = args.activation
    if args.checkpoint_dir:
        params["checkpoint_dir"] = args.checkpoint_dir
    result = train_job(args.data, args.out, opts, params, test_size=args.test_size, seed=args.seed)
    det, info = result.detector, result.detector.fit_info_
    print(f"trained {det.model_.kind} VAE on {args.data}")
    print(f"  rows                 {result.n_rows} read; {info['n_train']} trained on, {info['n_validation']} "
          f"for early stopping, {info['n_calibration']} for calibration")
    print(f"  epochs               {info['epochs_run']} ({info['seconds']:.1f} s)")
    print(f"  threshold            {_fmt(det.threshold_, '.4g')} nats of {det.score_kind} score, alpha {det.alpha_}")
    if getattr(det, "calibration_error_", None):
        print(f"  warning              no usable threshold: {det.calibration_error_} "
              "(`anomaly-vae calibrate` fixes this without retraining)")
    if result.holdout:
        h = result.holdout
        print(f"  held out             {h['n_normal']} normal rows (label {result.normal_label!r}) + {h['n_anomalous']} others")
        print(f"  AUROC                {_fmt(h['auroc'])}   (average precision {_fmt(h['average_precision'])})")
        print(f"  false-alarm rate     {_fmt(h['false_alarm_rate'])}   (target alpha {det.alpha_})")
        print(f"  detection rate       {_fmt(h['detection_rate'])}")
    print(f"  model saved to       {args.out}")
    return EXIT_OK


def _load(model_dir: str, alpha: float | None) -> Any:
    from .detector import load_detector

    det = load_detector(model_dir)
    if alpha is not None:
        det.set_alpha(alpha)
    return det


def _score(args: argparse.Namespace) -> int:
    from .batch import score_file
    from .io import data_kind

    det = _load(args.model_dir, args.alpha)
    kind = data_kind(args.data)
    if args.id_column and kind not in ("csv", "parquet"):
        raise UsageError("--id-column is for CSV and Parquet tables")
    id_name = args.id_column or ("path" if kind == "images" else "row")
    with _progress(None, args.quiet, "rows" if kind != "images" else "files") as bar:
        def progress(n: int, total: int | None) -> None:
            if bar.total is None and total is not None:
                bar.total = total
            bar.update(n)

        summary = score_file(det, args.data, args.out, id_column=args.id_column, sep=_sep(args.sep),
                             explain=args.explain, batch_size=args.batch_size or 16384, progress=progress)
    rate = summary.anomaly_rate
    print(f"scored {summary.scored} of {summary.rows} {'files' if kind == 'images' else 'rows'} from {args.data} "
          f"in {summary.seconds:.2f} s ({summary.rows / max(summary.seconds, 1e-9):,.0f}/s)")
    print(f"  anomalies flagged    {summary.anomalies} ({_fmt(rate, '.2%')} of scored; target false-alarm rate "
          f"alpha {_fmt(summary.alpha, 'g')}, threshold {summary.threshold:.4g})")
    print(f"  rows with errors     {summary.errors}")
    for ident, err in summary.first_errors:
        print(f"    {id_name} {ident}: {err}")
    if summary.errors > len(summary.first_errors):
        print(f"    ... see the error column of {summary.output}")
    if summary.skipped_files:
        print(f"  not images, skipped  {summary.skipped_files} file(s) in the folder (other extensions or hidden)")
    print(f"  written to           {summary.output}")
    return EXIT_ROW_ERRORS if summary.errors else EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from .io import data_kind
    from .jobs import evaluate_job

    kind = data_kind(args.data)
    if kind != "images" and not args.label_column:
        raise UsageError("evaluate needs --label-column for a table or array (image folders: labels are subfolders)")
    metrics, scores, y, errors = evaluate_job(args.model_dir, args.data, _data_options(args), alpha=args.alpha)
    c = metrics["confusion"]
    print(f"evaluated {args.model_dir} on {args.data}: {metrics['n']} rows scored "
          f"({metrics['n_normal']} normal with label {metrics['normal_label']!r}, {metrics['n_anomalous']} others)")
    print(f"  AUROC                {_fmt(metrics['auroc'])}")
    print(f"  average precision    {_fmt(metrics['average_precision'])}")
    print(f"  threshold            {metrics['threshold']:.4g} (alpha {_fmt(metrics['alpha'], 'g')})")
    print(f"  false-alarm rate     {_fmt(metrics['false_alarm_rate'])}   of normal rows flagged")
    print(f"  detection rate       {_fmt(metrics['detection_rate'])}   of other rows flagged")
    print("  confusion            flagged   not flagged")
    print(f"    normal             {c['normal']['flagged']:>7}   {c['normal']['not_flagged']:>11}")
    print(f"    anomalous          {c['anomalous']['flagged']:>7}   {c['anomalous']['not_flagged']:>11}")
    if errors:
        print(f"  rows with errors     {len(errors)} (left out of the metrics)")
        for ident, err in errors[:5]:
            print(f"    {ident}: {err}")
    if args.json:
        from .io import atomic_output

        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"  metrics written to   {args.json}")
    if args.plots:
        from .plots import save_evaluation_plots

        for p in save_evaluation_plots(scores, y, metrics["threshold"], metrics["alpha"], args.plots):
            print(f"  plot                 {p}")
    return EXIT_ROW_ERRORS if errors else EXIT_OK


def _calibrate(args: argparse.Namespace) -> int:
    from .jobs import calibrate_job

    before, after = calibrate_job(args.model_dir, args.data, _data_options(args), alpha=args.alpha)
    print(f"recalibrated {args.model_dir} on {after['n']} normal rows of {args.data} (no retraining)")
    print(f"  threshold            {_fmt(before['threshold'], '.4g')} -> {_fmt(after['threshold'], '.4g')} "
          f"(alpha {_fmt(before['alpha'], 'g')} -> {_fmt(after['alpha'], 'g')})")
    print(f"  calibration rows     {before['n']} -> {after['n']}")
    if after["error"]:
        print(f"  warning              {after['error']}")
        return EXIT_FATAL
    return EXIT_OK


def _info(args: argparse.Namespace) -> int:
    from .artifact import read_model_card

    card = read_model_card(args.model_dir)
    if args.json:
        print(json.dumps(card, indent=2))
        return EXIT_OK
    inp, arch, cal, score = card["input"], card["architecture"], card["calibration"], card["score"]
    summary = card["training"]["summary"]
    print(f"anomaly-vae model {args.model_dir}")
    print(f"  versions             format {card['format_version']}, anomaly-vae {card['package_version']}, "
          f"torch {card['torch_version']}, created {card['created']}")
    pre = inp["preprocessing"]
    if pre["kind"] == "image":
        print(f"  input                images {pre['height']}x{pre['width']}, {pre['channels']} channel(s)")
    else:
        cols = ", ".join(f"{c['name']} ({c['type'][:3]})" for c in pre["columns"])
        print(f"  input                table, {len(pre['columns'])} columns: {cols}")
    shape = arch.get("hidden") or arch.get("channels")
    print(f"  architecture         {arch['kind']} VAE, latent {arch['latent_dim']}, layers {shape}, "
          f"likelihood {arch.get('likelihood')}")
    print(f"  score                {score['name']} ({score['units']}, higher = more anomalous, "
          f"{score['n_score_samples']} fixed noise samples)")
    print(f"  threshold            {_fmt(cal['threshold'], '.4g')} ({cal['method']}, alpha {_fmt(cal['alpha'], 'g')}, "
          f"{cal['n']} calibration scores)")
    if cal.get("error"):
        print(f"  calibration problem  {cal['error']}")
    print(f"  training             {summary['n_train']} rows, {summary['epochs_run']} epochs, {summary['seconds']} s, "
          f"seed {summary['seed']}, device {summary['device']}")
    h = summary.get("holdout")
    if h:
        print(f"  held-out check       AUROC {_fmt(h['auroc'])}, false-alarm rate {_fmt(h['false_alarm_rate'])}, "
              f"detection rate {_fmt(h['detection_rate'])} ({h['n_normal']} normal + {h['n_anomalous']} others)")
    return EXIT_OK


def _plot(args: argparse.Namespace) -> int:
    from . import plots
    from .evaluation import anomaly_labels, default_normal_label
    from .jobs import read_for_model

    det = _load(args.model_dir, args.alpha)
    kind = args.kind
    if kind not in ("grid", "history") and not args.data:
        raise UsageError(f"plot {kind} needs DATA (a table or an image folder)")
    X, labels = (None, None) if kind in ("grid", "history") else read_for_model(det, args.data, _data_options(args))
    if kind == "latent":
        fig = plots.latent_figure(det, X, labels, seed=args.seed)
    elif kind == "grid":
        fig = plots.grid_figure(det, n=args.n or 15, seed=args.seed)
    elif kind == "morph":
        i, j = args.pair
        for v in (i, j):
            if not 0 <= v < len(X):
                raise UsageError(f"--pair {i} {j}: DATA has {len(X)} samples (0..{len(X) - 1})")
        fig = plots.morph_figure(det, X[i], X[j], steps=args.n or 10)
    elif kind == "reconstructions":
        fig = plots.reconstructions_figure(det, X, n=args.n or 6)
    elif kind == "scores":
        fig = plots.scores_figure(det, X, labels)
    elif kind == "roc":
        if labels is None:
            raise UsageError("plot roc needs labels: --label-column for a table, subfolders for an image folder")
        y = anomaly_labels(labels, args.normal_label if args.normal_label is not None else default_normal_label(labels))
        fig = plots.roc_figure(det.anomaly_score(X), y, det.threshold_)
    elif kind == "history":
        fig = plots.history_figure(det)
    else:  # features
        row = args.row if args.row is not None else int(det.anomaly_score(X).argmax())
        if not 0 <= row < len(X):
            raise UsageError(f"--row {row}: DATA has {len(X)} rows (0..{len(X) - 1})")
        fig = plots.features_figure(det, X.iloc[[row]] if hasattr(X, "iloc") else X[row : row + 1])
    from .io import atomic_output

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format=out.suffix[1:].lower() or "png")  # by the target's suffix, not the temporary's
    w, h = (int(v) for v in fig.get_size_inches() * fig.dpi)
    print(f"wrote {out} ({kind}, {w}x{h} pixels)")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from .artifact import export_to_bentoml

    tag = export_to_bentoml(args.model_dir, args.name)
    print(f"exported {args.model_dir} to the BentoML model store as {tag}")
    print(f"  serve it             ANOMALY_VAE_MODEL={tag} bentoml serve   (from the repository root)")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from .demo import format_result, run_demo

    result = run_demo(alpha=args.alpha, seed=args.seed, verbose=0 if args.quiet else 1,
                      model_dir=Path(args.save) if args.save else None)
    print(format_result(result))
    if args.save:
        print(f"  model saved to       {args.save}")
    return EXIT_OK


# -- parser ------------------------------------------------------------------------------------
def _add_table_flags(p: argparse.ArgumentParser, labels: bool) -> None:
    p.add_argument("--sep", help="CSV delimiter (default: sniffed from the file; .tsv means tab; write \\t for tab)")
    if labels:
        p.add_argument("--label-column", metavar="COL",
                       help="column with the labels (tables), or key of the labels array (.npz)")
        p.add_argument("--normal-label", metavar="VALUE",
                       help="the label of normal rows (default: 'normal' if present, else 0); for an image folder "
                            "the labels are the first-level subfolder names")


LIKELIHOODS = ("gaussian", "gaussian-shared", "gaussian-fixed", "bernoulli")  # objectives.LIKELIHOODS (test)
SCORES = ("elbo", "reconstruction", "iwae")  # scoring.SCORES (test)
PLOT_KINDS = ("latent", "grid", "morph", "reconstructions", "scores", "roc", "history", "features")  # plots.KINDS (test)


def build_parser() -> argparse.ArgumentParser:

    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="anomaly-vae", formatter_class=fmt, epilog=EPILOG,
        description="Anomaly detection with a variational autoencoder and a calibrated false-alarm rate.\n\n"
                    "  anomaly-vae train normal.csv --out model/          fit and calibrate\n"
                    "  anomaly-vae score model/ new.csv --out scores.csv   score a file, streaming\n"
                    "  anomaly-vae evaluate model/ test.csv --label-column label\n"
                    "  anomaly-vae info model/")
    parser.add_argument("--version", action="version", version=f"anomaly-vae {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (warnings are always shown)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", formatter_class=fmt, epilog=EPILOG, help="fit a VAE on normal data and calibrate its threshold",
                       description="Fit a VAE on DATA and calibrate a threshold for the false-alarm rate --alpha on "
                                   "held-out normal rows; save the model directory to --out.\n\nWithout labels every "
                                   "row is taken as normal. With --label-column (and --normal-label), the model is "
                                   "trained and calibrated on the normal rows only, and --test-size of them plus every "
                                   "other row are held out and scored: AUROC and the realized false-alarm rate are "
                                   "printed and stored in the model card.")
    p.add_argument("data", metavar="DATA", help="CSV / TSV / Parquet / .npy / .npz file or image folder")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model directory to write")
    p.add_argument("--alpha", type=_alpha, default=0.01, help="target false-alarm rate (default 0.01)")
    p.add_argument("--model", choices=("auto", "dense", "conv"), default="auto",
                   help="network: dense (tables), conv (images); auto picks by the data (default)")
    p.add_argument("--epochs", type=_positive, default=100, help="at most this many epochs; early stopping on a "
                   "validation split usually stops sooner (default 100)")
    p.add_argument("--latent-dim", type=_positive, help="size of z (default: 16, or half the features for small tables)")
    p.add_argument("--hidden-sizes", metavar="N,N", help="dense hidden layers, e.g. 256,128")
    p.add_argument("--activation", choices=("relu", "tanh", "elu", "leaky_relu"), help="dense hidden layers' "
                   "nonlinearity (default relu)")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="save the training state there every epoch; a run "
                   "that finds a checkpoint there goes on from it")
    p.add_argument("--likelihood", choices=LIKELIHOODS, default="gaussian", help="decoder likelihood (default gaussian, learned sigma)")
    p.add_argument("--score", choices=SCORES, default="elbo", help="anomaly score (default elbo: -ELBO in nats)")
    p.add_argument("--id-column", metavar="COL", help="a column that identifies rows: not used as a feature")
    p.add_argument("--drop-columns", metavar="A,B", help="columns not to use as features")
    p.add_argument("--image-size", metavar="HxW", help="resize images to this size (default: the images' own size)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="1 grey or 3 colour (default: 1 if every image is grey)")
    p.add_argument("--test-size", type=float, default=0.2, help="share of normal rows held out with labels (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed for the splits and the fit (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="where to train (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_table_flags(p, labels=True)
    p.set_defaults(func=_train)

    p = sub.add_parser("score", formatter_class=fmt, epilog=EPILOG, help="batch-score a file or folder, streaming",
                       description="Score every row of DATA (or every image in a folder) and write one output row "
                                   "per input row, in input order, to --out (.csv or .parquet): the id (--id-column, "
                                   "else 'row' = 0-based row number, or 'path' for images), score (nats, higher = more "
                                   "anomalous), p_value (conformal), is_anomaly, threshold and error (empty when "
                                   "scored). Rows that cannot be scored keep their place with the error. The output "
                                   "appears only when complete.")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--out", required=True, metavar="OUT", help="output file, .csv or .parquet")
    p.add_argument("--id-column", metavar="COL", help="column to copy to the output as the row id")
    p.add_argument("--explain", type=int, default=0, metavar="K",
                   help="add the K features (or image regions) that contribute most to each score")
    p.add_argument("--batch-size", type=_positive, default=16384, metavar="N", help="rows read and scored at a time (default 16384)")
    p.add_argument("--alpha", type=_alpha, help="use the threshold for this false-alarm rate instead of the model's "
                   "(from its stored calibration scores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_table_flags(p, labels=False)
    p.set_defaults(func=_score)

    p = sub.add_parser("evaluate", formatter_class=fmt, epilog=EPILOG, help="measure a model on labelled data",
                       description="Score labelled DATA and report AUROC, average precision, the realized false-alarm "
                                   "and detection rates at the model's threshold, and the confusion table.")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--json", metavar="OUT.json", help="also write the metrics as JSON")
    p.add_argument("--plots", metavar="DIR", help="write roc.png and scores.png to this folder")
    p.add_argument("--alpha", type=_alpha, help="evaluate at the threshold for this alpha")
    p.add_argument("--id-column", metavar="COL", help="row id column (not a feature)")
    p.add_argument("--batch-size", type=_positive, default=16384, metavar="N", help="rows read at a time")
    _add_table_flags(p, labels=True)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("calibrate", formatter_class=fmt, epilog=EPILOG, help="re-choose the threshold on new normal data",
                       description="Score new normal DATA (never trained on) and make its scores the model's "
                                   "calibration scores; the threshold for --alpha is re-chosen from them. The model "
                                   "directory is rewritten in place; the weights do not change.")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--alpha", type=_alpha, help="target false-alarm rate (default: the model's)")
    p.add_argument("--id-column", metavar="COL", help="row id column (not a feature)")
    _add_table_flags(p, labels=True)
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("info", help="show a model card", description="Print the model card of MODEL_DIR.")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--json", action="store_true", help="the whole model.json")
    p.set_defaults(func=_info)

    p = sub.add_parser("plot", formatter_class=fmt, help="draw a figure of a model (and data)",
                       description="Draw one figure to --out (PNG):\n"
                                   "  latent           posterior means of DATA in the latent plane (PCA if > 2-D), by label\n"
                                   "  grid             decoded images over the latent plane (2-D) or prior samples\n"
                                   "  morph            decoded images between the latent codes of two samples (--pair)\n"
                                   "  reconstructions  most / least anomalous images, reconstructions, error maps\n"
                                   "  scores           score histogram (per label when given) with the threshold\n"
                                   "  roc              ROC curve (needs labels)\n"
                                   "  history          loss terms per epoch\n"
                                   "  features         one table row's per-column contributions (--row; default: "
                                   "the most anomalous)\n"
                                   "Labels: --label-column for a table; the first-level subfolders of an image folder.",
                       epilog="example: anomaly-vae plot model/ latent images/ --out latent.png")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("kind", choices=PLOT_KINDS, metavar="KIND", help=f"one of {', '.join(PLOT_KINDS)}")
    p.add_argument("data", nargs="?", metavar="DATA", help="table or image folder (all kinds but grid and history)")
    p.add_argument("--out", required=True, metavar="FILE.png", help="where to write the figure")
    p.add_argument("--label-column", metavar="COL", help="column with the labels (tables)")
    p.add_argument("--normal-label", metavar="VALUE", help="the normal label (roc; default 'normal' or 0)")
    p.add_argument("--row", type=int, metavar="N", help="features: the 0-based row to explain")
    p.add_argument("--pair", type=int, nargs=2, default=(0, 1), metavar=("I", "J"), help="morph: two samples (default 0 1)")
    p.add_argument("--n", type=_positive, metavar="N", help="grid side (15), morph steps (10), reconstructions per side (6)")
    p.add_argument("--alpha", type=_alpha, help="mark the threshold for this alpha instead of the model's")
    p.add_argument("--seed", type=int, default=0, help="seed for prior samples and subsampling (default 0)")
    p.add_argument("--sep", help="CSV delimiter (default: sniffed)")
    p.set_defaults(func=_plot)

    p = sub.add_parser("export", help="put a model directory into the BentoML model store for the service",
                       description="Copy MODEL_DIR (model.json + model.safetensors, checked by loading them) into "
                                   "the BentoML model store ($BENTOML_HOME, default ~/bentoml) as a new version of "
                                   "--name. The service serves anomaly_vae:latest unless ANOMALY_VAE_MODEL says "
                                   "otherwise.")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--name", default="anomaly_vae", help="model name in the store (default anomaly_vae)")
    p.set_defaults(func=_export)

    p = sub.add_parser("demo", help="train, calibrate and evaluate on the cardio table that ships with the repo",
                       description="Train on the normal rows of data/cardio.csv, calibrate a threshold for "
                                   "--alpha on held-out normal rows, and report AUROC and the realized "
                                   "false-alarm rate on unseen rows.")
    p.add_argument("--alpha", type=_alpha, default=0.01, help="target false-alarm rate (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="random seed for the split and the fit (default 0)")
    p.add_argument("--save", metavar="MODEL_DIR", help="also save the trained model to this directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    with _stop_signals():
        try:
            return _run(parser, args)
        except KeyboardInterrupt as err:  # Ctrl-C, or Stopped (SIGTERM, SIGHUP): the cleanup has run
            signum = getattr(err, "signum", signal.SIGINT)
            try:
                print(f"anomaly-vae: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
            except OSError:  # after SIGHUP the terminal may be gone
                pass
            return EXIT_SIGNAL_BASE + signum


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .exceptions import AnomalyVAEError  # after parsing: --help and usage errors stay fast

    try:
        return int(args.func(args))
    except UsageError as err:
        parser.print_usage(sys.stderr)
        print(f"anomaly-vae: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (AnomalyVAEError, ValueError, OSError) as err:
        print(f"anomaly-vae: error: {err}", file=sys.stderr)
        return EXIT_FATAL


if __name__ == "__main__":
    sys.exit(main())
