"""Save and load a model directory: ``model.json`` (everything readable) + ``model.safetensors``
(weights, calibration scores, fixed noise). No pickle anywhere: JSON is parsed by ``json`` and the
tensors by ``safetensors``, which only reads raw arrays."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .exceptions import ArtifactError
from .models import build_model
from .preprocessing import ImagePreprocessor, TablePreprocessor

__all__ = ["FORMAT_VERSION", "save_detector", "load_detector", "read_model_card", "export_to_bentoml", "resolve_model"]

DEFAULT_BENTO_NAME = "anomaly_vae"

FORMAT_VERSION = 1
JSON_NAME, WEIGHTS_NAME = "model.json", "model.safetensors"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_params(det: Any) -> dict[str, Any]:
    out = {}
    for k, v in det.get_params().items():
        if isinstance(v, tuple):
            v = list(v)
        if k == "random_state" and not isinstance(v, (int, type(None))):
            v = None  # a RandomState instance is not a reproducible setting; the seed used is in training
        out[k] = v
    return out


def save_detector(det: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``det`` to the directory ``path`` (created; existing model files are replaced)."""
    from . import __version__

    if not hasattr(det, "model_"):
        from sklearn.exceptions import NotFittedError

        raise NotFittedError("this VAEAnomalyDetector is not fitted yet: call fit(X) before save()")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in det.model_.state_dict().items()}
    tensors["calibration.scores"] = torch.from_numpy(np.ascontiguousarray(det.calibration_scores_, dtype=np.float64))
    tensors["scoring.noise"] = det.noise_.detach().cpu().contiguous()
    # write beside the target and rename, so a crash never leaves a half-written model
    fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
    os.close(fd)
    save_file(tensors, tmp)
    digest = _sha256(Path(tmp))
    os.replace(tmp, out / WEIGHTS_NAME)
    cal_scores = np.asarray(det.calibration_scores_)
    card = {
        "format": "anomaly-vae model",
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "params": _json_params(det),
        "architecture": det.model_.config(),
        "input": {
            "kind": det.input_kind_,
            "n_features_in": int(det.n_features_in_),
            "feature_names_in": [str(c) for c in det.feature_names_in_] if hasattr(det, "feature_names_in_") else None,
            "preprocessing": det.preprocessor_.to_dict(),
        },
        "score": {"name": det.score_kind, "units": "nats", "higher_is_more_anomalous": True,
                  "n_score_samples": int(det.noise_.shape[0])},
        "calibration": {
            "method": det.threshold_method_, "alpha": det.alpha_, "threshold": det.threshold_,
            "n": int(cal_scores.size),
            "quantiles": {q: float(np.quantile(cal_scores, float(q))) for q in ("0.5", "0.9", "0.99")} if cal_scores.size else {},
            "error": getattr(det, "_calibration_error", None),
            "best_f1": getattr(det, "best_f1_", None),
        },
        "training": {"summary": det.fit_info_, "history": det.history_},
        "weights": {"file": WEIGHTS_NAME, "sha256": digest},
    }
    text = json.dumps(card, indent=2, allow_nan=True)
    fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, out / JSON_NAME)
    return out


def read_model_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``model.json`` of a model directory, with its format version checked."""
    p = Path(path)
    if not p.is_dir():
        raise ArtifactError(f"{p} is not a model directory (expected a folder with {JSON_NAME} and {WEIGHTS_NAME})")
    try:
        card = json.loads((p / JSON_NAME).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{p / JSON_NAME} is missing: not a model directory") from None
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{p / JSON_NAME} is not valid JSON: {err}") from None
    version = card.get("format_version")
    if not isinstance(version, int):
        raise ArtifactError(f"{p / JSON_NAME} has no integer format_version: not an anomaly-vae model")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{p} was written in model format {version} (package {card.get('package_version')}), newer than "
            f"format {FORMAT_VERSION} that this anomaly-vae reads: upgrade anomaly-vae to load it"
        )
    return card


def load_detector(path: str | os.PathLike[str]) -> Any:
    """Rebuild a fitted ``VAEAnomalyDetector`` from a model directory. The weights file must match
    the sha256 recorded in ``model.json``."""
    from .detector import VAEAnomalyDetector

    p = Path(path)
    card = read_model_card(p)
    weights = p / card["weights"]["file"]
    if not weights.is_file():
        raise ArtifactError(f"{weights} is missing")
    digest = _sha256(weights)
    if digest != card["weights"]["sha256"]:
        raise ArtifactError(f"{weights} does not match the sha256 in {p / JSON_NAME} "
                            f"(file {digest[:12]}..., recorded {card['weights']['sha256'][:12]}...): refusing to load "
                            "a modified or corrupt weights file")
    tensors = load_file(str(weights))
    det = VAEAnomalyDetector(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in card["params"].items()})
    model = build_model(card["architecture"])
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ArtifactError(f"{weights} does not fit the architecture in {JSON_NAME}: {err}") from None
    model.eval()
    det.model_ = model
    inp = card["input"]
    det.input_kind_ = inp["kind"]
    det.n_features_in_ = inp["n_features_in"]
    if inp.get("feature_names_in") is not None:
        det.feature_names_in_ = np.asarray(inp["feature_names_in"], dtype=object)
    pre = inp["preprocessing"]
    det.preprocessor_ = TablePreprocessor.from_dict(pre) if pre["kind"] == "table" else ImagePreprocessor.from_dict(pre)
    det.noise_ = tensors["scoring.noise"]
    det.calibration_scores_ = tensors["calibration.scores"].numpy().astype(np.float64)
    det.history_ = card["training"]["history"]
    det.fit_info_ = card["training"]["summary"]
    c = card["calibration"]
    det._set_threshold(float(c["threshold"]), c["method"], c["alpha"])
    det._calibration_error = c.get("error")
    if c.get("best_f1") is not None:
        det.best_f1_ = c["best_f1"]
    det.model_card_ = card
    return det


# -- the BentoML model store ---------------------------------------------------------------------
def _bentoml() -> Any:
    try:
        import bentoml
    except ImportError:
        raise ArtifactError("the BentoML model store needs bentoml: pip install 'anomaly-vae[service]'") from None
    return bentoml


def export_to_bentoml(path: str | os.PathLike[str], name: str = DEFAULT_BENTO_NAME) -> str:
    """Put the model directory ``path`` into the BentoML model store as a new version of ``name``:
    the same ``model.json`` and ``model.safetensors`` files, checked by loading them first (never a
    pickled module). Returns the tag, ``"name:version"``."""
    import shutil

    bentoml = _bentoml()
    det = load_detector(path)  # refuses a corrupt or modified model before it reaches the store
    card = det.model_card_
    p = Path(path)
    labels = {"package": "anomaly-vae", "input_kind": det.input_kind_, "score": det.score_kind,
              "weights_sha256": card["weights"]["sha256"][:12]}
    metadata = {"format_version": card["format_version"], "package_version": card.get("package_version"),
                "threshold": float(det.threshold_), "alpha": det.alpha_,
                "calibration_n": int(len(det.calibration_scores_)), "source": str(p.resolve())}
    with bentoml.models.create(name, labels=labels, metadata=metadata) as bento_model:
        for f in (JSON_NAME, card["weights"]["file"]):
            shutil.copyfile(p / f, Path(bento_model.path) / f)
    return str(bento_model.tag)


def resolve_model(ref: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """A model reference, either a model directory or a BentoML model tag (``anomaly_vae`` or
    ``anomaly_vae:latest`` or ``anomaly_vae:VERSION``), as (directory, tag or None)."""
    p = Path(ref)
    if p.is_dir():
        return p, None
    text = str(ref)
    if os.sep in text or text.startswith(".") or (os.altsep and os.altsep in text):
        raise ArtifactError(f"{text} is not a model directory (no such folder); give a model directory or a "
                            "BentoML model tag such as anomaly_vae:latest")
    bentoml = _bentoml()
    try:
        stored = bentoml.models.get(text)
    except bentoml.exceptions.NotFound:
        raise ArtifactError(f"no model {text!r} in the BentoML model store ({_store_path()}): put one there with "
                            "`anomaly-vae export MODEL_DIR`, or give a model directory") from None
    except ValueError as err:  # a malformed tag
        raise ArtifactError(f"{text!r} is neither a model directory nor a BentoML model tag: {err}") from None
    return Path(stored.path), str(stored.tag)


def _store_path() -> str:
    return str(Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml")) / "models")
