"""The parser of ``anomaly-vae``: the commands, their flags and help, and the flag value types.

The allowed values of a flag come from the module that owns them (``objectives.LIKELIHOODS``,
``scoring.SCORES``, ``models.ACTIVATIONS``, ``plots.KINDS``). Those modules import torch or pandas,
so a command's flags are added when that command's parser is first used (to parse its arguments,
or for its help or usage): ``anomaly-vae --help`` and a usage error elsewhere do not wait for them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from .._version import __version__
from . import commands, spark_command

__all__ = ["build_parser", "EPILOG", "MODELS", "DEVICES"]

# Not yet exported by the detector, which checks the same values in __init__-time validation:
MODELS = ("auto", "dense", "conv")  # VAEAnomalyDetector(model=...)
DEVICES = ("cpu", "cuda", "auto")  # VAEAnomalyDetector(device=...)

EPILOG = """exit codes: 0 all rows scored; 3 some rows had errors (see the error column); 2 usage error;
1 fatal error; 130 / 143 / 129 stopped by SIGINT (Ctrl-C) / SIGTERM / SIGHUP: the output being
written is removed (outputs appear only when whole).
Data: CSV / TSV (delimiter sniffed, or --sep), Parquet, .npy / .npz, or a folder of PNG / JPEG /
BMP / TIFF / WebP images (recursive, sorted). Only regular files are read: a named pipe, socket or
device is refused (in an image folder: an error row), never opened."""


def _in_unit_interval(what: str, zero_ok: bool) -> Callable[[str], float]:
    """An argparse type: a number in (0, 1), or in [0, 1) when ``zero_ok``."""
    interval = "[0, 1)" if zero_ok else "(0, 1)"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number in {interval}, got {text!r}") from None
        if not (0 <= v < 1 if zero_ok else 0 < v < 1):
            raise argparse.ArgumentTypeError(f"{what} must be in {interval}, got {text}")
        return v

    return parse


_alpha = _in_unit_interval("alpha", zero_ok=False)
_floor_number = _in_unit_interval("marginal floor", zero_ok=True)


def _floor(text: str) -> float | None:
    """``--marginal-floor``: a number in [0, 1), or ``auto`` (None: the detector's "auto")."""
    return None if text == "auto" else _floor_number(text)


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {v}")
    return v


class _Command(argparse.ArgumentParser):
    """A command's parser whose flags are added by ``flags(parser)`` when it is first used: to
    parse (the subparsers action calls ``parse_known_args``), or to format its help or usage."""

    def __init__(self, *args: Any, flags: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flags = flags

    def _add_flags(self) -> None:
        if self._flags is not None:
            add, self._flags = self._flags, None
            add(self)

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        self._add_flags()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._add_flags()
        return super().format_usage()

    def format_help(self) -> str:
        self._add_flags()
        return super().format_help()


def _add_table_flags(p: argparse.ArgumentParser, labels: bool) -> None:
    p.add_argument("--sep", help="CSV delimiter (default: sniffed from the file; .tsv means tab; write \\t for tab)")
    if labels:
        p.add_argument("--label-column", metavar="COL",
                       help="column with the labels (tables), or key of the labels array (.npz)")
        p.add_argument("--normal-label", metavar="VALUE",
                       help="the label of normal rows (default: 'normal' if present, else 0); for an image folder "
                            "the labels are the first-level subfolder names")


def _train_flags(p: argparse.ArgumentParser) -> None:
    from ..models import ACTIVATIONS
    from ..objectives import LIKELIHOODS
    from ..scoring import SCORES

    p.add_argument("data", metavar="DATA", help="CSV / TSV / Parquet / .npy / .npz file or image folder")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model directory to write")
    p.add_argument("--alpha", type=_alpha, default=0.01, help="target false-alarm rate (default 0.01)")
    p.add_argument("--model", choices=MODELS, default="auto",
                   help="network: dense (tables), conv (images); auto picks by the data (default)")
    p.add_argument("--epochs", type=_positive, default=100, help="at most this many epochs; early stopping on a "
                   "validation split usually stops sooner (default 100); a pair's long network: 30 x this many "
                   "updates")
    p.add_argument("--latent-dim", type=_positive, help="size of z (default: 16, or half the features for small tables)")
    p.add_argument("--hidden-sizes", metavar="N,N", help="dense hidden layers, e.g. 256,128")
    p.add_argument("--activation", choices=tuple(ACTIVATIONS), help="dense hidden layers' "
                   "nonlinearity (default relu)")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="save the training state there every epoch; a run "
                   "that finds a checkpoint there goes on from it")
    p.add_argument("--likelihood", choices=LIKELIHOODS, default="gaussian", help="decoder likelihood (default gaussian, learned sigma)")
    p.add_argument("--marginal-floor", type=_floor, metavar="EPS", help="tables: mix each numeric column's "
                   "likelihood with its marginal N(0, 1) at this weight, so one sharply predicted column cannot "
                   "dominate a score (default auto: 0.01 for tables; 0: off)")
    p.add_argument("--marginals", choices=("standard", "kde"), help="tables: 'kde' gives the network each "
                   "near-normal numeric column through its training kernel density's CDF, made N(0, 1), and adds the "
                   "maps' log-Jacobian to every score (default standard: (x - mean) / std)")
    p.add_argument("--pair", action=argparse.BooleanOptionalAction, default=None, help="tables: score with two "
                   "networks, the early-stopped one and one trained to 30 x --epochs updates (3000) with the training "
                   "rows' aggregate posterior as its prior; the score is their sum (default: on for tables; "
                   "--no-pair: one network, scoring about 9x faster)")
    p.add_argument("--pair-hidden-sizes", metavar="N,N", help="the pair's long network's own hidden layers, trained "
                   "in a run of its own (default 256,128); 'same': the first network's layers, trained on in its run")
    p.add_argument("--score", choices=SCORES, default="elbo", help="anomaly score (default elbo: -ELBO in nats)")
    p.add_argument("--id-column", metavar="COL", help="a column that identifies rows: not used as a feature")
    p.add_argument("--drop-columns", metavar="A,B", help="columns not to use as features")
    p.add_argument("--image-size", metavar="HxW", help="resize images to this size (default: the images' own size)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="1 grey or 3 colour (default: 1 if every image is grey)")
    p.add_argument("--test-size", type=float, default=0.2, help="share of normal rows held out with labels (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed for the splits and the fit (default 0)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where to train (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_table_flags(p, labels=True)


def _score_flags(p: argparse.ArgumentParser) -> None:
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


def _conf(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def _spark_score_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("data", metavar="DATA", help="CSV / TSV or Parquet file, a directory of part files, or a folder of images")
    p.add_argument("--out", required=True, metavar="OUT",
                   help="output directory of part files, its name ending in .csv or .parquet")
    p.add_argument("--master", metavar="URL", help="Spark master (default: the one spark-submit set, else local[*])")
    p.add_argument("--id-column", metavar="COL", help="column to copy to the output as the row id")
    p.add_argument("--explain", type=int, default=0, metavar="K",
                   help="add the K features (or image regions) that contribute most to each score")
    p.add_argument("--partitions", type=_positive, metavar="N",
                   help="partitions to score and write (default: as Spark reads the input)")
    p.add_argument("--alpha", type=_alpha, help="use the threshold for this false-alarm rate instead of the model's "
                   "(from its stored calibration scores)")
    p.add_argument("--multiline-csv", action="store_true",
                   help="quoted CSV fields may hold newlines (each file is then read as one partition)")
    p.add_argument("--conf", type=_conf, action="append", default=[], metavar="KEY=VALUE",
                   help="a Spark setting (repeatable), e.g. --conf spark.executor.memory=4g")
    p.add_argument("--quiet", action="store_true",
                   help="Spark logs errors only (the lines its JVM prints at every start, and Java stack frames, are left "
                        "out)")
    _add_table_flags(p, labels=False)


def _evaluate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--json", metavar="OUT.json", help="also write the metrics as JSON")
    p.add_argument("--plots", metavar="DIR", help="write roc.png and scores.png to this folder")
    p.add_argument("--alpha", type=_alpha, help="evaluate at the threshold for this alpha")
    p.add_argument("--id-column", metavar="COL", help="row id column (not a feature)")
    p.add_argument("--batch-size", type=_positive, default=16384, metavar="N", help="rows read at a time")
    _add_table_flags(p, labels=True)


def _calibrate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--alpha", type=_alpha, help="target false-alarm rate (default: the model's)")
    p.add_argument("--id-column", metavar="COL", help="row id column (not a feature)")
    _add_table_flags(p, labels=True)


def _info_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--json", action="store_true", help="the whole model.json")


def _plot_flags(p: argparse.ArgumentParser) -> None:
    from ..plots import KINDS

    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("kind", choices=KINDS, metavar="KIND", help=f"one of {', '.join(KINDS)}")
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


def _export_flags(p: argparse.ArgumentParser) -> None:
    from ..scoring import SCORES

    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--format", choices=("bentoml", "onnx"), default="bentoml",
                   help="bentoml: into the BentoML model store (default); onnx: the scoring graph to --out")
    p.add_argument("--name", help="bentoml: model name in the store (default anomaly_vae)")
    p.add_argument("--out", metavar="FILE.onnx", help="onnx: the file to write (required with --format onnx)")
    p.add_argument("--score", choices=SCORES, help="onnx: the score the graph computes (default: the model's; "
                   "another score has no p_value or is_anomaly output, the calibration being of the model's)")
    p.add_argument("--no-p-value", dest="p_value", action="store_false", help="onnx: no p_value output")
    p.add_argument("--prepared-input", action="store_true",
                   help="onnx: an all-numeric table's graph takes the prepared float32 features (as images and "
                        "tables with string columns do) instead of the raw float64 values")


def _demo_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=_alpha, default=0.01, help="target false-alarm rate (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="random seed for the split and the fit (default 0)")
    p.add_argument("--save", metavar="MODEL_DIR", help="also save the trained model to this directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``anomaly-vae``: its global flags and one subparser per command, whose
    ``func`` default is the command to run."""
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Command)

    p = sub.add_parser("train", formatter_class=fmt, epilog=EPILOG, help="fit a VAE on normal data and calibrate its threshold",
                       description="Fit a VAE on DATA and calibrate a threshold for the false-alarm rate --alpha on "
                                   "held-out normal rows; save the model directory to --out.\n\nWithout labels every "
                                   "row is taken as normal. With --label-column (and --normal-label), the model is "
                                   "trained and calibrated on the normal rows only, and --test-size of them plus every "
                                   "other row are held out and scored: AUROC and the realized false-alarm rate are "
                                   "printed and stored in the model card.",
                       flags=_train_flags)
    p.set_defaults(func=commands.train)

    p = sub.add_parser("score", formatter_class=fmt, epilog=EPILOG, help="batch-score a file or folder, streaming",
                       description="Score every row of DATA (or every image in a folder) and write one output row "
                                   "per input row, in input order, to --out (.csv or .parquet): the id (--id-column, "
                                   "else 'row' = 0-based row number, or 'path' for images), score (nats, higher = more "
                                   "anomalous), p_value (conformal), is_anomaly, threshold and error (empty when "
                                   "scored). Rows that cannot be scored keep their place with the error. The output "
                                   "appears only when complete.",
                       flags=_score_flags)
    p.set_defaults(func=commands.score)

    p = sub.add_parser("spark-score", formatter_class=fmt, epilog=EPILOG, help="batch-score with Apache Spark",
                       description="The job of 'score' on Apache Spark (the 'spark' extra and Java): DATA is read by "
                                   "Spark, scored on the executors by the same core, and written to --out, a "
                                   "directory of part files that appears only when complete. Same output columns, "
                                   "summary and exit codes as 'score'; without --id-column, 'row' numbers rows in "
                                   "the order of the files' names and of the rows in each file. Runs Spark in local "
                                   "mode unless --master (or spark-submit) names another.",
                       flags=_spark_score_flags)
    p.set_defaults(func=spark_command.spark_score)

    p = sub.add_parser("evaluate", formatter_class=fmt, epilog=EPILOG, help="measure a model on labelled data",
                       description="Score labelled DATA and report AUROC, average precision, the realized false-alarm "
                                   "and detection rates at the model's threshold, and the confusion table.",
                       flags=_evaluate_flags)
    p.set_defaults(func=commands.evaluate)

    p = sub.add_parser("calibrate", formatter_class=fmt, epilog=EPILOG, help="re-choose the threshold on new normal data",
                       description="Score new normal DATA (never trained on) and make its scores the model's "
                                   "calibration scores; the threshold for --alpha is re-chosen from them. The model "
                                   "directory is rewritten in place; the weights do not change.",
                       flags=_calibrate_flags)
    p.set_defaults(func=commands.calibrate)

    p = sub.add_parser("info", help="show a model card", description="Print the model card of MODEL_DIR.",
                       flags=_info_flags)
    p.set_defaults(func=commands.info)

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
                       epilog="example: anomaly-vae plot model/ latent images/ --out latent.png",
                       flags=_plot_flags)
    p.set_defaults(func=commands.plot)

    p = sub.add_parser("export", formatter_class=fmt,
                       help="put a model into the BentoML model store, or write its scoring graph as ONNX",
                       description="--format bentoml (default): copy MODEL_DIR (model.json + model.safetensors, "
                                   "checked by loading them) into the BentoML model store ($BENTOML_HOME, default "
                                   "~/bentoml) as a new version of --name. The service serves anomaly_vae:latest "
                                   "unless ANOMALY_VAE_MODEL says otherwise.\n\n"
                                   "--format onnx (the 'onnx' extra): write the scoring graph to --out: input -> "
                                   "score (float64, nats, higher = more anomalous), p_value and is_anomaly (when "
                                   "the model is calibrated), batch dimension N dynamic. An all-numeric table's "
                                   "graph takes the raw float64 values in the model's column order (NaN = missing); "
                                   "images and tables with string columns take the prepared float32 input. The "
                                   "file's metadata says which, with the columns, threshold and tolerance.",
                       flags=_export_flags)
    p.set_defaults(func=commands.export)

    p = sub.add_parser("demo", help="train, calibrate and evaluate on the cardio table that ships with the repo",
                       description="Train on the normal rows of data/cardio.csv, calibrate a threshold for "
                                   "--alpha on held-out normal rows, and report AUROC and the realized "
                                   "false-alarm rate on unseen rows.",
                       flags=_demo_flags)
    p.set_defaults(func=commands.demo)
    return parser
