"""The commands of ``anomaly-vae``: each takes the parsed arguments, calls the core (``jobs``,
``batch``, ``plots``, ...), prints for people and returns the exit code. The core is imported when
a command runs, so that parsing, ``--help`` and usage errors do not wait for torch."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

    from ..detector import VAEAnomalyDetector
    from ..jobs import DataOptions

__all__ = ["EXIT_OK", "EXIT_FATAL", "EXIT_USAGE", "EXIT_ROW_ERRORS", "UsageError", "parse_size", "train", "score",
           "evaluate", "calibrate", "info", "plot", "export", "demo"]

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_ROW_ERRORS = 0, 1, 2, 3


class UsageError(Exception):
    """Flags that do not fit together: exit 2."""


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def parse_size(text: str) -> tuple[int, int]:
    """``"28x28"`` -> (28, 28): height x width (``--image-size``)."""
    from ..exceptions import InputError

    parts = text.lower().split("x")
    try:
        h, w = (int(v) for v in parts)
    except ValueError:
        raise InputError(f"image size must look like HxW (for example 28x28), got {text!r}") from None
    if h < 8 or w < 8:
        raise InputError(f"image size must be at least 8x8, got {text!r}")
    return h, w


def _data_options(args: argparse.Namespace) -> DataOptions:
    from ..jobs import DataOptions

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



def _progress(total: int | None, quiet: bool, unit: str) -> tqdm:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=f" {unit}", disable=quiet, file=sys.stderr, dynamic_ncols=True)


def train(args: argparse.Namespace) -> int:
    from ..jobs import train_job

    opts = _data_options(args)
    params: dict[str, Any] = {"model": args.model, "alpha": args.alpha, "epochs": args.epochs,
                              "likelihood": args.likelihood, "score_kind": args.score, "verbose": 0 if args.quiet else 1,
                              "device": args.device}
    optional = {"latent_dim": args.latent_dim, "activation": args.activation, "checkpoint_dir": args.checkpoint_dir or None,
                "marginal_floor": args.marginal_floor, "pair": args.pair,
                "marginals": args.marginals}  # flags not given: the detector's defaults
    params.update({k: v for k, v in optional.items() if v is not None})
    if args.hidden_sizes is not None:
        params["hidden_sizes"] = _sizes(args.hidden_sizes, "--hidden-sizes")
    if args.checkpoint_dir and args.pair_hidden_sizes == "same":
        raise UsageError("the one-run pair (--pair-hidden-sizes same) is not checkpointed; drop --checkpoint-dir, or give "
                         "the long network layers of its own")
    if args.pair_hidden_sizes is not None:
        if args.pair is False:
            raise UsageError("--pair-hidden-sizes is the long network of a pair: not with --no-pair")
        params["pair_hidden_sizes"] = (None if args.pair_hidden_sizes == "same"
                                       else _sizes(args.pair_hidden_sizes, "--pair-hidden-sizes"))
    result = train_job(args.data, args.out, opts, params, test_size=args.test_size, seed=args.seed)
    det, info = result.detector, result.detector.fit_info_
    print(f"trained {det.model_.kind} VAE{' pair' if det.pair_ else ''} on {args.data}")
    print(f"  rows                 {result.n_rows} read; {info['n_train']} trained on, {info['n_validation']} "
          f"for early stopping, {info['n_calibration']} for calibration")
    print(f"  epochs               {_epochs(info)} ({info['seconds']:.1f} s)")
    print(f"  threshold            {_fmt(det.threshold_, '.4g')} nats of {det.score_kind_} score, alpha {det.alpha_}")
    if det.calibration_error_:
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


def _sizes(text: str, flag: str) -> tuple[int, ...]:
    """Layer widths from a flag: integers separated by commas, within the model card's bounds."""
    from ..card import MAX_LAYERS, MAX_WIDTH

    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if not 1 <= len(sizes) <= MAX_LAYERS or not all(1 <= h <= MAX_WIDTH for h in sizes):
        raise UsageError(f"{flag} takes 1 to {MAX_LAYERS} layer widths (integers in 1..{MAX_WIDTH}) separated by "
                         f"commas, e.g. 256,128; got {text!r}")
    return sizes


def _epochs(summary: dict[str, Any]) -> str:  # a pair trained in two runs: the first network's + the long one's
    first = summary.get("epochs_run_first")
    return f"{summary['epochs_run']}" if first is None else f"{first} + {summary['epochs_run']}"


def _own_layers(arch: dict[str, Any]) -> str:
    return f" of layers {arch['pair']['hidden']}" if arch["pair"]["hidden"] != arch["hidden"] else ""


def _load(model_dir: str, alpha: float | None, strict: bool = False) -> VAEAnomalyDetector:
    """The model at ``alpha`` when one is given; ``strict``: a job that needs the threshold, so an
    alpha the calibration cannot serve is the error (said once), not a warning and then the error."""
    from ..detector import load_detector

    det = load_detector(model_dir)
    if alpha is not None:
        det.set_alpha(alpha, strict=strict)
    if strict:
        det.check_threshold()  # before the progress bar is drawn: nothing of the job has started
    return det


def score(args: argparse.Namespace) -> int:
    from ..batch import score_file
    from ..io import TABLE_FORMATS, data_kind

    det = _load(args.model_dir, args.alpha, strict=True)
    fmt = data_kind(args.data)
    if args.id_column and fmt not in TABLE_FORMATS:
        raise UsageError("--id-column is for CSV and Parquet tables")
    files = fmt == "images"  # a folder: one output row per image file
    with _progress(None, args.quiet, "files" if files else "rows") as bar:
        def progress(n: int, total: int | None) -> None:
            if bar.total is None and total is not None:
                bar.total = total
            bar.update(n)

        summary = score_file(det, args.data, args.out, id_column=args.id_column, sep=_sep(args.sep),
                             explain=args.explain, batch_size=args.batch_size or 16384, progress=progress)
    return _report(summary, args.data, files)


def _report(summary: Any, data: str, files: bool) -> int:
    """Print a score job's summary; the exit code: 3 when some rows had errors, else 0."""
    rate = summary.anomaly_rate
    print(f"scored {summary.scored} of {summary.rows} {'files' if files else 'rows'} from {data} "
          f"in {summary.seconds:.2f} s ({summary.rows / max(summary.seconds, 1e-9):,.0f}/s)")
    print(f"  anomalies flagged    {summary.anomalies} ({_fmt(rate, '.2%')} of scored; target false-alarm rate "
          f"alpha {_fmt(summary.alpha, 'g')}, threshold {summary.threshold:.4g})")
    print(f"  rows with errors     {summary.errors}")
    for ident, err in summary.first_errors:
        print(f"    {summary.id_name} {ident}: {err}")
    if summary.errors > len(summary.first_errors):
        print(f"    ... see the error column of {summary.output}")
    if summary.skipped_files:
        print(f"  not images, skipped  {summary.skipped_files} file(s) in the folder (other extensions or hidden)")
    print(f"  written to           {summary.output}")
    return EXIT_ROW_ERRORS if summary.errors else EXIT_OK


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:500]
    return type(err).__name__


def evaluate(args: argparse.Namespace) -> int:
    from ..io import data_kind
    from ..jobs import evaluate_job

    if data_kind(args.data) != "images" and not args.label_column:
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
        from ..io import atomic_output

        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"  metrics written to   {args.json}")
    if args.plots:
        from ..plots import save_evaluation_plots

        for p in save_evaluation_plots(scores, y, metrics["threshold"], metrics["alpha"], args.plots):
            print(f"  plot                 {p}")
    return EXIT_ROW_ERRORS if errors else EXIT_OK


def calibrate(args: argparse.Namespace) -> int:
    from ..jobs import calibrate_job

    before, after = calibrate_job(args.model_dir, args.data, _data_options(args), alpha=args.alpha)
    if not after["saved"]:
        print(f"anomaly-vae: error: {after['error']}; {args.model_dir} was left as it was", file=sys.stderr)
        return EXIT_FATAL
    print(f"recalibrated {args.model_dir} on {after['n']} normal rows of {args.data} (no retraining)")
    print(f"  threshold            {_fmt(before['threshold'], '.4g')} -> {_fmt(after['threshold'], '.4g')} "
          f"(alpha {_fmt(before['alpha'], 'g')} -> {_fmt(after['alpha'], 'g')})")
    print(f"  calibration rows     {before['n']} -> {after['n']}")
    return EXIT_OK


def info(args: argparse.Namespace) -> int:
    from ..artifact import read_model_card

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
          f"likelihood {arch.get('likelihood')}"
          + (f", marginal floor {arch['marginal_floor']:g}" if arch.get("marginal_floor") else "")
          + (f"; a pair: a second network{_own_layers(arch)} with the aggregate prior of "
             f"{arch['pair']['aggregate_prior']} training rows" if arch.get("pair") else ""))
    print(f"  score                {score['name']} ({score['units']}, higher = more anomalous, "
          f"{score['n_score_samples']} fixed noise samples)")
    print(f"  threshold            {_fmt(cal['threshold'], '.4g')} ({cal['method']}, alpha {_fmt(cal['alpha'], 'g')}, "
          f"{cal['n']} calibration scores)")
    if cal.get("error"):
        print(f"  calibration problem  {cal['error']}")
    print(f"  training             {summary['n_train']} rows, {_epochs(summary)} epochs, {summary['seconds']} s, "
          f"seed {summary['seed']}, device {summary['device']}")
    h = summary.get("holdout")
    if h:
        print(f"  held-out check       AUROC {_fmt(h['auroc'])}, false-alarm rate {_fmt(h['false_alarm_rate'])}, "
              f"detection rate {_fmt(h['detection_rate'])} ({h['n_normal']} normal + {h['n_anomalous']} others)")
    return EXIT_OK


def plot(args: argparse.Namespace) -> int:
    from .. import plots
    from ..io import atomic_output
    from ..jobs import read_for_model

    det = _load(args.model_dir, args.alpha)
    kind = args.kind
    read = args.data and plots.needs_data(kind)  # DATA missing where it is needed: draw says so
    X, labels = read_for_model(det, args.data, _data_options(args)) if read else (None, None)
    try:
        fig = plots.draw(kind, det, X, labels, n=args.n, pair=tuple(args.pair), row=args.row,
                         normal_label=args.normal_label, seed=args.seed)
    except plots.PlotOptionError as err:  # no DATA, or --pair, --row or labels that do not fit it
        raise UsageError(str(err)) from None
    try:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(out) as tmp:
            fig.savefig(tmp, format=out.suffix[1:].lower() or "png")  # by the target's suffix, not the temporary's
        w, h = (int(v) for v in fig.get_size_inches() * fig.dpi)
    finally:  # pyplot keeps every figure until closed: a caller of main() would collect them
        plots.pyplot().close(fig)
    print(f"wrote {out} ({kind}, {w}x{h} pixels)")
    return EXIT_OK


def export(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        return _export_onnx(args)
    onnx_only = [flag for flag, given in (("--out", args.out is not None), ("--score", args.score is not None),
                                          ("--no-p-value", not args.p_value), ("--prepared-input", args.prepared_input))
                 if given]
    if onnx_only:
        raise UsageError(f"{', '.join(onnx_only)}: only with --format onnx")
    from ..artifact import export_to_bentoml

    tag = export_to_bentoml(args.model_dir, args.name or "anomaly_vae")
    print(f"exported {args.model_dir} to the BentoML model store as {tag}")
    print(f"  serve it             ANOMALY_VAE_MODEL={tag} bentoml serve   (from the repository root)")
    return EXIT_OK


def _export_onnx(args: argparse.Namespace) -> int:
    if not args.out:
        raise UsageError("--format onnx needs --out FILE.onnx")
    if args.name is not None:
        raise UsageError("--name is for --format bentoml (the model store); with --format onnx use --out")
    from ..onnx import export_onnx, read_onnx_metadata

    out, model_dir = Path(args.out).resolve(), Path(args.model_dir).resolve()
    if out == model_dir or model_dir in out.parents:  # it would replace the model's own files
        raise UsageError(f"--out {args.out} is inside the model directory {args.model_dir}: write the .onnx file "
                         "elsewhere")
    det = _load(args.model_dir, None)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    path = export_onnx(det, args.out, score=args.score, p_value=args.p_value,
                       prepared_input=True if args.prepared_input else None)
    meta = read_onnx_metadata(path)
    shape = ", ".join(map(str, json.loads(meta["input_shape"])))
    print(f"exported {args.model_dir} as ONNX to {path}")
    if meta["input"] == "raw_numeric":
        what = "raw values in the column order of metadata anomaly_vae.columns, NaN = missing"
    elif meta["input_kind"] == "table":
        what = "prepared: det.preprocess(X), features as in metadata anomaly_vae.feature_names"
    else:
        what = "prepared: det.preprocess(X), pixels in [0, 1]"
    print(f"  input                {meta['input_name']} {meta['input_dtype']} [{shape}] ({what})")
    print(f"  outputs              {', '.join(json.loads(meta['outputs']))}")
    print(f"  score                {meta['score']} ({meta['units']}), within rtol {meta['rtol']} / atol "
          f"{meta['atol']} of the Python API's")
    if meta["threshold"]:
        print(f"  threshold            {float(meta['threshold']):.4g} ({meta['threshold_method']}, alpha "
              f"{meta['alpha'] or 'n/a'}, {meta['n_calibration']} calibration scores)")
    for key in ("threshold_note", "p_value_note"):
        if meta.get(key):
            print(f"  note                 {meta[key]}")
    return EXIT_OK


def demo(args: argparse.Namespace) -> int:
    from ..demo import format_result, run_demo

    result = run_demo(alpha=args.alpha, seed=args.seed, verbose=0 if args.quiet else 1,
                      model_dir=Path(args.save) if args.save else None)
    print(format_result(result))
    if args.save:
        print(f"  model saved to       {args.save}")
    return EXIT_OK


