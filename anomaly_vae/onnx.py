"""Export of a fitted detector's scoring graph to ONNX, for runtimes other than PyTorch
(onnxruntime, Triton, KServe). Needs the ``onnx`` extra: pip install 'anomaly-vae[onnx]'.

The graph
    ``input`` -> ``score`` (float64 [N], nats, higher = more anomalous) and, when the detector has
    them, ``p_value`` (float64 [N], the conformal p-value (1 + #{calibration scores >= s}) / (n + 1)
    against the stored calibration scores) and ``is_anomaly`` (bool [N], ``score > threshold``).
    The batch dimension ``N`` is dynamic; rows are independent. The score is the same computation
    as the Python API's (``scoring``): the torch code of ``scoring.block_scores`` is what gets
    traced, with the fixed Monte-Carlo noise of the detector (``noise_``) as a constant, and the
    same capping (NaN -> ``SCORE_MAX``, then clipped to +-``SCORE_MAX``), so no NaN or infinity
    leaves the graph.

Inputs
    * images: ``input`` float32 [N, C, H, W] in [0, 1], exactly ``det.preprocess(X)``;
    * tables with a categorical (string) column: ``input`` float32 [N, n_features_out] =
      ``det.preprocess(X)`` (scaled, one-hot, missing indicators: ONNX has no strings to one-hot
      here, so the caller prepares the rows);
    * tables whose columns are all numeric: by default the raw values, ``input`` float64
      [N, n_columns] in the model's column order (metadata ``columns``), NaN for a missing value;
      the graph does what ``TablePreprocessor`` does (training-median imputation, (v - mean) / std
      in float64, capped at +-``Z_MAX``, missing indicators, cast to float32). ``prepared_input=True``
      takes the prepared form instead. One difference: the Python API refuses infinity
      (``InputError`` naming row and column); a graph cannot raise per row, so it treats +-inf like
      any value beyond ``Z_MAX`` standard deviations: standardised to +-``Z_MAX`` and scored (a
      huge, finite score, as for a huge finite value). Check for infinity before the graph if
      that matters.
    * a table fitted with ``marginals="kde"``: a raw-input graph maps each mapped column as
      ``preprocessing.marginals.apply_map`` does, and every graph adds the maps' log-Jacobian to
      the score (``TablePreprocessor.log_jacobian``, once per network), as the Python API does.

Why this module is long: the graph repeats the preprocessing in torch (scaling, maps, Jacobian),
and the export's checks and metadata sit beside it; splitting them would scatter one contract.

Tolerance
    ONNX scores equal the Python API's within ``ONNX_RTOL`` (relative) + ``ONNX_ATOL`` nats
    (absolute: ``|onnx - python| <= ONNX_ATOL + ONNX_RTOL * |python|``), the cross-CPU contract of
    ``scoring``: the graph runs a whole batch where the Python API runs fixed blocks of
    ``scoring.BLOCK`` rows, and onnxruntime's kernels sum float32 in another order than torch's.
    Measured (onnxruntime 1.31, torch 2.13, one x86-64 CPU) on the tests' models, tables raw and
    prepared, a table with a categorical column, 8x8 images, every score kind and likelihood: at
    most 4.3e-7 relative for scores above 1 nat and 1.1e-4 nats absolute near zero, i.e. at most
    4% of the tolerance. For the same reason a row's ONNX score is not bit-identical across batch
    sizes (dense models: 1e-7 relative between a batch of 1 and one of 200); it is within the same
    tolerance. p-values and ``is_anomaly`` are exact functions of the graph's own score (float64
    comparisons, as ``calibration.conformal_p_values`` and ``predict`` make them); they differ from
    the Python API's only for a score within the tolerance of a calibration score or the threshold.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .exceptions import CalibrationError, ExportError
from .preprocessing.tables import Z_MAX
from .scoring import CROSS_CPU_ATOL, CROSS_CPU_RTOL, SCORE_MAX, SCORES, block_scores

if TYPE_CHECKING:
    from .detector import VAEAnomalyDetector

log = logging.getLogger(__name__)

__all__ = ["export_onnx", "read_onnx_metadata", "onnxruntime_scorer", "ONNX_RTOL", "ONNX_ATOL", "EXPORT_VERSION", "INPUT_NAME"]

ONNX_RTOL, ONNX_ATOL = CROSS_CPU_RTOL, CROSS_CPU_ATOL  # measured: at most 4% of it (module docstring)
EXPORT_VERSION = 1  # the graph's interface (names, dtypes, metadata keys); raised when it changes
INPUT_NAME = "input"
BATCH_DIM = "N"


class _ScoringGraph(nn.Module):
    """What is traced: (raw numeric table -> prepared input ->) score (-> p_value, is_anomaly)."""

    def __init__(self, model: nn.Module, score: str, noise: torch.Tensor, numeric: dict[str, Any] | None,
                 calibration: np.ndarray | None, threshold: float | None, maps: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model, self.score = model, score
        self.maps = maps is not None  # the marginal maps (``marginals="kde"``): see _map_constants
        if maps is not None:
            self.networks = maps["networks"]
            for key in ("xk", "zk", "slopes", "log_slopes"):
                self.register_buffer(key, torch.as_tensor(np.asarray(maps[key]), dtype=torch.float64))
            for key in ("knots", "numeric_index", "column_to_map", "position", "flag_position"):
                self.register_buffer(key, torch.as_tensor(np.asarray(maps[key]), dtype=torch.int64))
            self.register_buffer("mapped", torch.as_tensor(maps["mapped"], dtype=torch.bool))
            self.register_buffer("has_flag", torch.as_tensor(maps["has_flag"], dtype=torch.bool))
        self.register_buffer("noise", noise.detach().cpu().float().clone())
        self.raw = numeric is not None
        if numeric is not None:
            for key in ("median", "mean", "std"):
                self.register_buffer(key, torch.as_tensor(numeric[key], dtype=torch.float64))
            self.register_buffer("indicator_cols", torch.as_tensor(numeric["indicator_cols"], dtype=torch.int64))
            self.register_buffer("order", torch.as_tensor(numeric["order"], dtype=torch.int64))
        self.p_value = calibration is not None
        if calibration is not None:
            self.register_buffer("calibration", torch.as_tensor(calibration, dtype=torch.float64))
        self.flag = threshold is not None
        if threshold is not None:
            self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float64))

    def _prepare(self, v: torch.Tensor) -> torch.Tensor:
        """``TablePreprocessor._fill_numeric`` for an all-numeric table: (N, n_columns) float64 ->
        (N, n_features_out) float32."""
        miss = torch.isnan(v)
        v = torch.where(miss, self.median, v)
        z = (v - self.mean) / self.std  # float64, as the Python API; +-inf stays +-inf here
        if self.maps:  # marginals.apply_map's formula, in float64, for the mapped columns
            vm = v.index_select(1, self.numeric_index)  # (N, M)
            i = torch.minimum((vm.unsqueeze(-1) >= self.xk).sum(-1), self.knots)  # knots at or below (padding: +inf)
            j = (i - 1).clamp(min=0)
            zm = (torch.gather(self.zk.expand(vm.shape[0], -1, -1), 2, j.unsqueeze(-1)).squeeze(-1)
                  + (vm - torch.gather(self.xk.expand(vm.shape[0], -1, -1), 2, j.unsqueeze(-1)).squeeze(-1))
                  * torch.gather(self.slopes.expand(vm.shape[0], -1, -1), 2, i.unsqueeze(-1)).squeeze(-1))
            z = torch.where(self.mapped, zm.index_select(1, self.column_to_map), z)
        z = torch.where(torch.isnan(z), 0.0, z).clamp(-Z_MAX, Z_MAX)  # np.nan_to_num + np.clip
        parts = [z.float()]
        if self.indicator_cols.numel():
            parts.append(miss.index_select(1, self.indicator_cols).float())
        # [values..., indicators...] -> the preprocessor's layout (an indicator right after its value)
        return torch.cat(parts, dim=1).index_select(1, self.order)

    # the argument is named as the ONNX input: dynamic_shapes refers to it by that name
    def forward(self, input: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self._prepare(input) if self.raw else input
        s = block_scores(self.model, x, self.score, self.noise).double()  # (N,)
        s = torch.where(torch.isnan(s), SCORE_MAX, s.clamp(-SCORE_MAX, SCORE_MAX))  # scoring._finite
        if self.maps:  # TablePreprocessor.log_jacobian, once per network (the detector's _scores)
            zf = x.index_select(1, self.position).double()  # (N, M), what the network was given
            i = (zf.unsqueeze(-1) >= self.zk).sum(-1)
            term = -torch.gather(self.log_slopes.expand(zf.shape[0], -1, -1), 2, i.unsqueeze(-1)).squeeze(-1)
            missing = (x.index_select(1, self.flag_position) == 1) & self.has_flag
            s = (s + self.networks * torch.where(missing, 0.0, term).sum(1)).clamp(-SCORE_MAX, SCORE_MAX)
        out = [s]
        if self.p_value:
            n_ge = (self.calibration.unsqueeze(0) >= s.unsqueeze(1)).sum(dim=1).double()  # (N,)
            out.append((1.0 + n_ge) / (self.calibration.numel() + 1.0))
        if self.flag:
            out.append(s > self.threshold)
        return tuple(out)


def _numeric_constants(pre: Any) -> dict[str, Any]:
    """The raw-table constants of an all-numeric ``TablePreprocessor``: per column median, mean and
    std, the columns with a missing indicator, and the permutation from [values, indicators] to
    the preprocessor's feature order."""
    cols = pre.columns
    ind = [m for m, c in enumerate(cols) if c["indicator"]]
    order, j_ind = [], len(cols)
    for m, c in enumerate(cols):
        order.append(m)
        if c["indicator"]:
            order.append(j_ind)
            j_ind += 1
    if len(order) != pre.n_features_out:  # not expected: the layout rule changed without this module
        raise ExportError(f"the table layout has {pre.n_features_out} features, the export computed {len(order)}")
    return {"median": [c["median"] for c in cols], "mean": [c["mean"] for c in cols],
            "std": [c["std"] for c in cols], "indicator_cols": ind, "order": order}


def _map_constants(pre: Any, networks: int) -> dict[str, Any] | None:
    """The marginal maps of a ``TablePreprocessor`` (None without any) as padded arrays for the graph:
    per mapped column its knots (x and z, padded with +inf), its slopes and their logs (padded with
    1 and 0), its number of knots, its index among the columns (``numeric_index``: all numeric
    when the graph takes raw values), the position of its value and of its missing indicator in
    the prepared input; per column, whether it is mapped and which map."""
    from .preprocessing.marginals import arrays

    cols = pre.columns
    mapped = [k for k, c in enumerate(cols) if "map" in c]
    if not mapped:
        return None
    parts = [arrays(cols[k]["map"]) for k in mapped]
    width = max(len(x) for x, _, _ in parts)
    pad = lambda a, n, v: np.concatenate([a, np.full(n - len(a), v)])  # noqa: E731
    starts = np.cumsum([0] + [pre._width(c) for c in cols[:-1]])
    numeric = [k for k, c in enumerate(cols) if c["type"] == "numeric"]
    return {"networks": networks, "xk": [pad(x, width, np.inf) for x, _, _ in parts],
            "zk": [pad(z, width, np.inf) for _, z, _ in parts], "slopes": [pad(s, width + 1, 1.0) for _, _, s in parts],
            "log_slopes": [pad(np.log(s), width + 1, 0.0) for _, _, s in parts], "knots": [len(x) for x, _, _ in parts],
            "numeric_index": [numeric.index(k) for k in mapped], "position": [int(starts[k]) for k in mapped],
            "flag_position": [int(starts[k]) + 1 if cols[k]["indicator"] else 0 for k in mapped],
            "has_flag": [bool(cols[k]["indicator"]) for k in mapped],
            "mapped": ["map" in cols[k] for k in numeric] if pre.all_numeric else [False],
            "column_to_map": [mapped.index(k) if k in mapped else 0 for k in numeric] if pre.all_numeric else [0]}


def _feature_names(pre: Any) -> list[str]:
    """Names of a table's prepared features: ``col``, ``col=<missing>`` (indicator), ``col=category``."""
    names: list[str] = []
    for c in pre.columns:
        if c["type"] == "numeric":
            names.append(c["name"])
            if c["indicator"]:
                names.append(f"{c['name']}=<missing>")
        else:
            names += [f"{c['name']}={cat}" for cat in c["categories"]]
    return names


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep torch's exporter out of the user's console: its logged warnings (e.g. "torchvision is
    not installed", one per torchvision op it would register) and any progress it prints."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    out = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out):
            # torch 2.13's exporter deep-copies pytree specs whose __reduce__ calls a deprecated
            # isinstance(treespec, LeafSpec): a FutureWarning about torch's own internals, not ours
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                    category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)
        if out.getvalue().strip():
            log.debug("torch.onnx: %s", out.getvalue().strip())


def _import_onnx() -> Any:
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch's exporter needs it; fail here with the fix, not deep in torch
    except ImportError as err:
        raise ExportError(f"ONNX export needs onnx and onnxscript ({err.name} is missing): "
                          "pip install 'anomaly-vae[onnx]'") from None
    return onnx


def export_onnx(det: VAEAnomalyDetector, path: str | os.PathLike[str], *, score: str | None = None,
                p_value: bool = True, prepared_input: bool | None = None) -> Path:
    """Write the scoring graph of a fitted detector as an ONNX model (see the module docstring).

    Parameters
    ----------
    det : a fitted ``VAEAnomalyDetector`` (fitted here or loaded with ``load_detector``).
    path : the ``.onnx`` file to write (replaced atomically; its folder must exist).
    score : "elbo", "reconstruction" or "iwae"; None is the score the fit calibrated (``score_kind_``). The
        threshold and p-values are those of the detector's calibration, which was made with
        ``score_kind``: with another score they are left out (they would not mean anything).
    p_value : add the ``p_value`` output (needs calibration scores).
    prepared_input : None (default): raw float64 values for an all-numeric table, the prepared
        float32 input (``det.preprocess(X)``) otherwise; True: always the prepared input; False:
        the raw input, an ``ExportError`` where there is none (images, tables with string columns).

    Returns
    -------
    pathlib.Path : ``path``. Inputs: ``input`` ([N, n_columns] float64 raw, or [N, n_features_out]
    / [N, C, H, W] float32 prepared). Outputs: ``score`` float64 [N] (nats, higher = more
    anomalous); ``p_value`` float64 [N] (when asked and the detector has calibration scores);
    ``is_anomaly`` bool [N] (when the threshold is usable, ``check_threshold``). The metadata
    properties (``anomaly_vae.*``) say which, and why one is missing.

    Raises
    ------
    NotFittedError : ``det`` is not fitted.
    FileNotFoundError : the folder of ``path`` does not exist.
    ExportError : an unknown score, a raw input asked where there is none, a missing ``onnx`` /
        ``onnxscript`` package, or a graph torch's exporter or ONNX's checker refuses.
    """
    from sklearn.utils.validation import check_is_fitted

    from . import __version__
    from .io.writers import atomic_output

    check_is_fitted(det, "model_")
    onnx = _import_onnx()
    target = Path(path)
    if not target.parent.is_dir():  # before the export's seconds of work, and with the user's path in the message
        raise FileNotFoundError(f"{target}: the folder {target.parent} does not exist")
    if target.is_dir():
        raise ExportError(f"{target} is a directory: give the path of the .onnx file to write")
    score = score or det.score_kind_
    if score not in SCORES:
        raise ExportError(f"score must be one of {SCORES}, got {score!r}")
    pre, kind = det.preprocessor_, det.input_kind_
    can_raw = kind == "table" and pre.all_numeric
    if prepared_input is False and not can_raw:
        what = "images" if kind == "image" else "a table with string columns"
        raise ExportError(f"prepared_input=False: a raw input is only for tables whose columns are all numeric; this "
                          f"model takes {what}, whose graph takes det.preprocess(X) (prepared_input=None or True)")
    raw = can_raw and not prepared_input

    notes: dict[str, str] = {}
    same_score = score == det.score_kind_
    threshold: float | None = None
    if not same_score:
        notes["threshold_note"] = (f"no is_anomaly / p_value: the calibration is of the {det.score_kind_!r} score, "
                                   f"this graph computes {score!r}")
    else:
        try:
            threshold = det.check_threshold()
        except CalibrationError as err:
            notes["threshold_note"] = f"no is_anomaly output: no usable threshold ({err})"
    cal_scores = np.asarray(getattr(det, "calibration_scores_", np.zeros(0)), dtype=np.float64)
    calibration = cal_scores if (p_value and same_score and cal_scores.size) else None
    if p_value and same_score and not cal_scores.size:
        notes["p_value_note"] = "no p_value output: the detector has no calibration scores"

    model = det.model_
    if next(model.parameters()).device.type != "cpu":  # export from a CPU copy; the detector stays as it is
        model = copy.deepcopy(model).cpu()
    maps = _map_constants(pre, len(model.members)) if kind == "table" else None
    graph = _ScoringGraph(model, score, det.noise_, _numeric_constants(pre) if raw else None, calibration,
                          threshold, maps).eval()
    event = (len(pre.columns),) if raw else det.prepared_shape
    # two rows: a batch of 1 would let the tracer specialise the batch dimension to 1
    example = torch.zeros((2, *event), dtype=torch.float64 if raw else torch.float32)
    outputs = ["score", *(["p_value"] if calibration is not None else []),
               *(["is_anomaly"] if threshold is not None else [])]
    batch = torch.export.Dim(BATCH_DIM, min=1)
    was_training = model.training
    model.eval()
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(graph, (example,), dynamo=True, verbose=False, input_names=[INPUT_NAME],
                                        output_names=outputs, dynamic_shapes={"input": {0: batch}})
    except Exception as err:  # the exporter's errors are long; say what failed, keep the cause chained
        first = (str(err).strip().splitlines() or [""])[0]
        raise ExportError(f"torch.onnx could not export the {model.kind} model's {score!r} score: "
                          f"{type(err).__name__}: {first}") from err
    finally:
        model.train(was_training)
    proto = program.model_proto

    card = getattr(det, "model_card_", None) or {}
    meta: dict[str, Any] = {
        "package_version": __version__,
        "export_version": EXPORT_VERSION,
        "model_format_version": card.get("format_version", ""),
        "weights_sha256": (card.get("weights") or {}).get("sha256", ""),
        "card_sha256": card.get("card_sha256", ""),
        "score": score,
        "units": "nats, higher = more anomalous",
        "n_score_samples": int(det.noise_.shape[0]),
        "outputs": json.dumps(outputs),
        "threshold": repr(float(threshold)) if threshold is not None else "",
        "alpha": "" if det.alpha_ is None or threshold is None else repr(float(det.alpha_)),
        "threshold_method": det.threshold_method_ if threshold is not None else "",
        "n_calibration": int(calibration.size) if calibration is not None else int(cal_scores.size),
        "input": "raw_numeric" if raw else "prepared",
        "input_kind": kind,
        "input_name": INPUT_NAME,
        "input_dtype": "float64" if raw else "float32",
        "input_shape": json.dumps([BATCH_DIM, *event]),
        "rtol": repr(ONNX_RTOL),
        "atol": repr(ONNX_ATOL),
        **notes,
    }
    if kind == "table":
        meta["columns"] = json.dumps(pre.names)
        if not raw:
            meta["feature_names"] = json.dumps(_feature_names(pre))
    else:
        meta.update(image_height=pre.height, image_width=pre.width, image_channels=pre.channels)
    onnx.helper.set_model_props(proto, {f"anomaly_vae.{k}": str(v) for k, v in meta.items()})
    proto.producer_name, proto.producer_version = "anomaly-vae", __version__
    proto.doc_string = (f"anomaly-vae {__version__}: {score} anomaly score of a {model.kind} VAE ({meta['units']}); "
                        f"input {INPUT_NAME} {meta['input_dtype']} {meta['input_shape']} ({meta['input']}); "
                        f"outputs {', '.join(outputs)}")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"the exported graph fails ONNX's checker: {err}") from err

    with atomic_output(target) as tmp:
        onnx.save_model(proto, str(tmp))
    log.info("wrote %s: %s score of a %s model, input %s, outputs %s", target, score, model.kind, meta["input"],
             outputs)
    return target


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``anomaly_vae.*`` metadata properties of an exported file, without the prefix: ``score``,
    ``input`` ("raw_numeric" / "prepared"), ``input_shape``, ``columns``, ``threshold``, ... (all
    strings; JSON for the lists). The weights are not read."""
    onnx = _import_onnx()
    model = onnx.load(str(path), load_external_data=False)
    prefix = "anomaly_vae."
    return {p.key[len(prefix):]: p.value for p in model.metadata_props if p.key.startswith(prefix)}


SCORER_BLOCK_ROWS = 1024
"""Rows ``onnxruntime_scorer`` hands onnxruntime at once: a pair's graph holds rows x
``n_score_samples`` x codes numbers (64 MB for 1024 rows at 16 x 1000), so a larger input is
scored in blocks of this many rows instead of all at once."""


def onnxruntime_scorer(det: VAEAnomalyDetector, threads: int = 1) -> Any:
    """A function that scores prepared input (``det.preprocess(X)``, float32) with onnxruntime
    instead of torch: the detector's default score, float64 (N,), within ``ONNX_RTOL`` /
    ``ONNX_ATOL`` of ``det.score_prepared`` (not bit-identical to it, and not across batch sizes:
    see the module docstring). Needs onnxruntime. The graph is exported to a temporary file,
    loaded, and the file removed.

    Parameters
    ----------
    det : a fitted detector.
    threads : onnxruntime's intra-op threads (one session, one inter-op thread).

    Returns
    -------
    callable : ``fn(x) -> scores`` for x of the shape ``det.score_prepared`` takes, scored in blocks
    of ``SCORER_BLOCK_ROWS`` rows; a wrong dtype or shape is an ``InputError``, as there.
    """
    import tempfile

    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("the onnxruntime backend needs onnxruntime: pip install 'anomaly-vae[onnx]'") from None
    with tempfile.TemporaryDirectory(prefix="anomaly-vae-onnx-") as work:
        path = export_onnx(det, Path(work) / "model.onnx", p_value=False, prepared_input=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = int(threads), 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def score(x: np.ndarray) -> np.ndarray:
        x = det.check_prepared(x)
        if len(x) == 0:
            return np.zeros(0)
        x, block = np.ascontiguousarray(x), int(SCORER_BLOCK_ROWS)
        return np.concatenate([np.asarray(session.run(["score"], {INPUT_NAME: x[i : i + block]})[0], dtype=np.float64)
                               for i in range(0, len(x), block)])

    return score
