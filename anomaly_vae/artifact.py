"""Save and load a model directory: ``model.json`` (everything readable, the "card") +
``model.safetensors`` (weights, calibration scores, fixed noise). No pickle anywhere: JSON is parsed by
``json`` and the tensors by ``safetensors``, which only reads raw arrays.

Integrity. ``model.json`` records the sha256 of ``model.safetensors`` (``weights.sha256``) and of its
own content (``card_sha256``: the sha256 of the card without that key, as canonical JSON, see
``card_sha256``). Together they detect any change to either file after it was saved: a flipped bit, a
truncated copy, a wrong file copied in, a hand edit of the threshold. Reformatting ``model.json``
(indentation, key order) is not a change. ``card_sha256`` also fingerprints the whole model (it covers
the weights' digest): compare it with a value you got over a trusted channel to know you have that model.

What the hashes do not do: they are not a signature. Anyone who can write the directory can recompute
both, so they do not protect against a malicious author. That is what the full check is for (see
``anomaly_vae.card``): every field of the card is checked, and the tensors declared in the weights
file's header are compared with what the card implies, before any tensor is read or any network is
built. A hostile or broken directory costs at most the size of its files in memory and ends in one
``ModelCardError`` naming the file and the field.

Directories written before ``card_sha256`` existed still load, fully checked, with a logged warning
that their card cannot be verified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import re
import stat
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .card import (FORMAT_NAME, FORMAT_VERSION, MAX_CARD_BYTES, CardProblem, Choice, Int, ListOf, Obj, check_card,
                   describe, parse_card, parse_json)
from .exceptions import ArtifactError, ModelCardError
from .io import atomic_output
from .models import LOGVAR_MAX, LOGVAR_MIN, build_model

log = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "save_model", "save_detector", "read_model", "read_model_card", "card_sha256",
           "export_to_bentoml", "resolve_model"]

DEFAULT_BENTO_NAME = "anomaly_vae"

JSON_NAME, WEIGHTS_NAME = "model.json", "model.safetensors"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def card_sha256(card: dict[str, Any]) -> str:
    """The digest stored as ``card_sha256``: sha256 of the card without that key, written as
    canonical JSON (keys sorted, no whitespace, ASCII only, floats as Python's ``json`` writes
    them: ``json.dumps(card, sort_keys=True, separators=(",", ":"))``), UTF-8 encoded."""
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _format_version(sections: dict[str, Any]) -> int:
    """The oldest format that describes the model: 5 with ``params.pair_hidden_sizes``, 4 with ``architecture.pair``, 3 with
    ``architecture.marginal_floor``; 1 for a model loaded from format 1 whose one-hot features are
    Gaussian (no ``architecture.categorical`` while the table has categorical columns), so that
    saving it again (``calibrate``) keeps a model that loads and scores as before; else 2, which
    releases before format 3 read too."""
    arch = sections.get("architecture", {})
    if sections.get("params", {}).get("pair_hidden_sizes") is not None:
        return 5
    if "pair" in arch:
        return 4
    if "marginal_floor" in arch:
        return 3
    pre = sections.get("input", {}).get("preprocessing", {})
    has_categorical = any(c.get("type") == "categorical" for c in pre.get("columns", []))
    if pre.get("kind") == "table" and has_categorical and not arch.get("categorical"):
        return 1
    return 2


def save_model(path: str | os.PathLike[str], sections: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write a model directory at ``path`` (created; existing model files are replaced) from a fitted
    estimator's state: ``sections`` of the card (``params``, ``architecture``, ``input``, ``score``,
    ``calibration``, ``training``) and its named ``tensors`` (``VAEAnomalyDetector.fitted_state()``).
    This module adds the envelope: format and versions, the weights' sha256 and ``card_sha256``."""
    from . import __version__

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    # write beside the target and rename, so a crash never leaves a half-written model; the card is made and checked
    # as a loader checks it before the weights are renamed into place: a card that would not load is not written
    with atomic_output(out / WEIGHTS_NAME) as tmp:  # removed if interrupted (SIGTERM in the CLI)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        card = {
            "format": FORMAT_NAME, "format_version": _format_version(sections), "package_version": __version__,
            "torch_version": torch.__version__, "python_version": platform.python_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **sections,
            "weights": {"file": WEIGHTS_NAME, "sha256": _sha256(tmp)},
        }
        try:  # the card as a reader sees it: lists, string keys
            card = json.loads(json.dumps(card, allow_nan=True))
        except (TypeError, ValueError) as err:
            raise ArtifactError(f"not saved to {out}: the model card cannot be written as JSON ({err})") from None
        try:
            check_card(card, str(out / JSON_NAME))
        except ModelCardError as err:  # a model saved there before is left as it was
            raise ModelCardError(err.file, err.field, f"{err.problem}: not saved, a model with this card would not load "
                                 "(set_params a valid value and save again)") from None
        card["card_sha256"] = card_sha256(card)
        text = json.dumps(card, indent=2, allow_nan=True)
    with atomic_output(out / JSON_NAME) as tmp:
        tmp.write_text(text)
    return out


def save_detector(det: Any, path: str | os.PathLike[str]) -> Path:
    """Write the fitted estimator ``det`` to the model directory ``path`` (``det.save(path)``)."""
    return save_model(path, *det.fitted_state())


# -- the weights file, from its header ------------------------------------------------------------
MAX_HEADER_BYTES = 16 << 20  # a safetensors header is about 100 bytes a tensor
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
            "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}

TensorInfo = tuple[str, tuple[int, ...]]  # (dtype, shape)


def _tensor(name: str) -> str:
    """A tensor name from a file, safe to print on one line."""
    return name if re.fullmatch(r"[\w.]{1,128}", name) else json.dumps(name[:64], ensure_ascii=True)


def _read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors a safetensors file declares, ``{name: (dtype, shape)}``, from its header only (an
    8-byte little-endian length, then that many bytes of JSON). Checks that every tensor's byte range
    has the size its dtype and shape need, and that the ranges tile the file's data exactly (no
    truncation, no overlap, no trailing bytes). Raises ``ModelCardError``."""
    file = str(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelCardError(file, None, f"truncated: {size} bytes, too short for a safetensors header")
        n = int.from_bytes(head, "little")
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise ModelCardError(file, None, f"truncated or not a safetensors file: its header claims {n} bytes, "
                                             f"the file has {size - 8} after the length")
        header = parse_json(f.read(n), file, max_depth=4)
    if not isinstance(header, dict):
        raise ModelCardError(file, None, f"not a safetensors file: the header is {describe(header)}, not an object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise ModelCardError(file, "__metadata__", "expected an object of strings")
    entry = Obj({"dtype": Choice(*ITEMSIZE), "shape": ListOf(Int(0, 2**40), 0, 8),
                 "data_offsets": ListOf(Int(0, 2**62), 2, 2)})
    out: dict[str, TensorInfo] = {}
    spans = []
    for name, e in header.items():
        try:
            entry.check(e, "")
        except CardProblem as p:
            raise ModelCardError(file, f"{_tensor(name)}{'.' if p.field else ''}{p.field or ''}", p.problem) from None
        (begin, end), shape = e["data_offsets"], tuple(e["shape"])
        need = math.prod(shape) * ITEMSIZE[e["dtype"]]
        if end - begin != need:
            raise ModelCardError(file, _tensor(name), f"its data_offsets span {end - begin} bytes, but {e['dtype']} "
                                                  f"{list(shape)} needs {need}")
        out[name] = (e["dtype"], shape)
        spans.append((begin, end, name))
    data = size - 8 - n
    at = 0
    for begin, end, name in sorted(spans):
        if begin != at:
            raise ModelCardError(file, _tensor(name), f"its data starts at byte {begin}, expected {at} "
                                                      "(tensors must not overlap or leave gaps)")
        at = end
    if at != data:
        what = "truncated: the header declares" if at > data else "the header declares only"
        raise ModelCardError(file, None, f"{what} {at} bytes of tensor data, the file holds {data}")
    return out


def _expected_tensors(card: dict[str, Any]) -> dict[str, tuple[TensorInfo, str]]:
    """What ``model.safetensors`` must hold for ``card``: ``{name: ((dtype, shape), the card fields
    it follows from)}``. The network is built on PyTorch's meta device: shapes, no memory."""
    arch = card["architecture"]
    with torch.device("meta"):
        model = build_model(arch)
    dtypes = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16"}
    out = {f"model.{k}": ((dtypes.get(t.dtype, str(t.dtype)), tuple(t.shape)), "architecture")
           for k, t in model.state_dict().items()}
    out["calibration.scores"] = (("F64", (card["calibration"]["n"],)), "calibration.n")
    out["scoring.noise"] = (("F32", (card["score"]["n_score_samples"], arch["latent_dim"])),
                            "score.n_score_samples and architecture.latent_dim")
    return out


def _encoder_layers(arch: dict[str, Any], tensors: dict[str, TensorInfo]) -> list[str]:
    """The weights of the encoder's dense (conv) layers, in order, as the weights file has them."""
    ndim = 2 if arch["kind"] == "dense" else 4
    found = [(int(m.group(1)), name) for name, (_, shape) in tensors.items()
             if (m := re.fullmatch(r"model\.encoder\.(\d+)\.weight", name)) and len(shape) == ndim]
    return [name for _, name in sorted(found)]


def _sizes_in_weights(arch: dict[str, Any], tensors: dict[str, TensorInfo]) -> list[tuple[str, Any, str, int]]:
    """(card field, its value in the card, tensor, the value that tensor's shape gives) for the sizes
    that can be read off the weights, so that a mismatch names the card's field, not only a tensor."""
    layers = _encoder_layers(arch, tensors)
    dense = arch["kind"] == "dense"
    key = "hidden" if dense else "channels"
    out = [(f"architecture.{key}[{i}]", arch[key][i], t, 0) for i, t in enumerate(layers)]
    first = layers[0] if layers else "model.to_mu.weight"
    out.append(("architecture.n_features", arch["n_features"], first, 1) if dense else
               ("architecture.in_channels", arch["in_channels"], first, 1))
    if not dense:
        out.append(("architecture.hidden", arch["hidden"], "model.to_mu.weight", 1))
    out.append(("architecture.latent_dim", arch["latent_dim"], "model.to_mu.weight", 0))
    return [(f, v, t, tensors[t][1][axis]) for f, v, t, axis in out if t in tensors and len(tensors[t][1]) > axis]


def _check_weights(card: dict[str, Any], tensors: dict[str, TensorInfo], card_file: str, weights_file: str) -> None:
    """Compare the tensors declared in the weights file's header with those ``card`` implies: first
    the architecture's sizes (a mismatch names the card's field), then every tensor's name (none
    missing, none extra), dtype and shape. Raises ``ModelCardError``."""
    arch, weights_name = card["architecture"], Path(weights_file).name
    key = "hidden" if arch["kind"] == "dense" else "channels"
    n_layers = len(_encoder_layers(arch, tensors))
    if n_layers != len(arch[key]):
        raise ModelCardError(card_file, f"architecture.{key}", f"expected {n_layers} layer sizes to match the "
                                                               f"encoder in {weights_name}, got {len(arch[key])}")
    for fld, in_card, tensor, in_weights in _sizes_in_weights(arch, tensors):
        if in_card != in_weights:
            raise ModelCardError(card_file, fld, f"expected {in_weights} to match the weights "
                                                 f"({weights_name}: {tensor}), got {describe(in_card)}")
    expected = _expected_tensors(card)
    for name, ((dtype, shape), source) in expected.items():
        if name not in tensors:
            raise ModelCardError(weights_file, name, f"missing (model.json's {source} needs it)")
        got_dtype, got_shape = tensors[name]
        if got_dtype != dtype:
            raise ModelCardError(weights_file, name, f"expected dtype {dtype}, got {got_dtype}")
        if got_shape != shape:
            raise ModelCardError(weights_file, name, f"expected shape {list(shape)} from model.json's {source}, "
                                                     f"got {list(got_shape)}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ModelCardError(weights_file, _tensor(extra[0]), f"unexpected tensor ({len(extra)} in all), not part of "
                                                          "the model that model.json describes")


def _regular_file(path: Path, what: str) -> int:
    """The size of ``path``; a missing file or one that is not a regular file (a FIFO would block
    the reader forever, a device never end) is an ``ArtifactError``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: {what}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"{path} is not a regular file")
    return st.st_size


def _checked_card(p: Path) -> dict[str, Any]:
    """Read ``model.json`` and check it: JSON, format version, integrity hash, every field."""
    if not p.is_dir():
        raise ArtifactError(f"{p} is not a model directory (expected a folder with {JSON_NAME} and {WEIGHTS_NAME})")
    path = p / JSON_NAME
    size = _regular_file(path, "not a model directory")
    if size > MAX_CARD_BYTES:
        raise ModelCardError(str(path), None, f"{size} bytes, more than the {MAX_CARD_BYTES} a model card may have")
    card = parse_card(path.read_bytes(), str(path))
    version = card.get("format_version")
    if type(version) is not int or card.get("format") != FORMAT_NAME:
        raise ModelCardError(str(path), None, f'not an anomaly-vae model card (expected "format": '
                                              f'{json.dumps(FORMAT_NAME)} and an integer "format_version")')
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{p} was written in model format {version} (package {describe(card.get('package_version'))}), newer "
            f"than format {FORMAT_VERSION} that this anomaly-vae reads: upgrade anomaly-vae to load it"
        )
    recorded = card.get("card_sha256")
    if recorded is None:
        log.warning("%s has no card_sha256 (written by an older anomaly-vae): its fields are checked, but a change "
                    "to them cannot be detected; save the model again to add it", path)
    elif recorded != card_sha256(card):
        raise ModelCardError(str(path), "card_sha256", "does not match the card's content: model.json was modified "
                             "or corrupted after it was saved, refusing to load it (change a model by loading and "
                             "saving it, e.g. `anomaly-vae calibrate`, not by editing model.json)")
    check_card(card, str(path))
    return card


def _check_weights_file(p: Path, card: dict[str, Any]) -> Path:
    """Check ``model.safetensors`` against the card without reading a tensor: its header (byte
    ranges against the file size), its sha256, and its tensors' names, dtypes and shapes."""
    weights = p / WEIGHTS_NAME
    _regular_file(weights, "the model directory has no weights")
    header = _read_safetensors_header(weights)
    digest = _sha256(weights)
    if digest != card["weights"]["sha256"]:
        raise ModelCardError(str(weights), None, f"does not match the sha256 in {p / JSON_NAME} (file {digest[:12]}..., "
                             f"recorded {card['weights']['sha256'][:12]}...): refusing to load a modified or corrupt "
                             "weights file")
    _check_weights(card, header, str(p / JSON_NAME), str(weights))
    return weights


def read_model_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``model.json`` of a model directory, checked in full as ``read_model`` checks
    it (format version, integrity hashes, every field, the weights' header) without loading the
    weights. Raises ``ArtifactError`` (``ModelCardError`` naming the file and field)."""
    p = Path(path)
    card = _checked_card(p)
    _check_weights_file(p, card)
    return card


def read_model(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked card and the tensors of a model directory, for
    ``VAEAnomalyDetector.from_fitted_state`` (``anomaly_vae.load_detector`` does both).

    Nothing is read before the whole directory passed its checks (see the module docstring):
    ``model.json`` against its ``card_sha256`` and the schema in ``anomaly_vae.card``, the weights
    file against the sha256 recorded in ``model.json`` and its tensors' shapes against the card.
    Raises ``ArtifactError`` (``ModelCardError`` naming the file and field) for a bad directory."""
    p = Path(path)
    card = _checked_card(p)
    weights = _check_weights_file(p, card)
    tensors = load_file(str(weights))
    _check_values(tensors, str(weights))
    return card, tensors


MAX_PRIOR_MEAN = 1e6  # an aggregate prior's code means; a trained encoder's are in the tens


def _check_values(tensors: dict[str, torch.Tensor], file: str) -> None:
    """What the header cannot say: every number finite (a NaN weight would make every score
    ``SCORE_MAX``), and an aggregate prior's codes in the range its writer keeps them
    (``models.LOGVAR_MIN`` .. ``LOGVAR_MAX``; means within ``MAX_PRIOR_MEAN``). ``ModelCardError``."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelCardError(file, name, "expected finite numbers, found NaN or infinity")
        if (name.endswith(".prior_logvar") and t.numel()
                and not LOGVAR_MIN <= float(t.min()) <= float(t.max()) <= LOGVAR_MAX):
            raise ModelCardError(file, name, f"expected log-variances in [{LOGVAR_MIN:g}, {LOGVAR_MAX:g}], got "
                                             f"{float(t.min()):g} .. {float(t.max()):g}")
        if name.endswith(".prior_mu") and t.numel() and float(t.abs().max()) > MAX_PRIOR_MEAN:
            raise ModelCardError(file, name, f"expected code means within +-{MAX_PRIOR_MEAN:g}, got "
                                             f"{float(t.abs().max()):g}")


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
    card, _ = read_model(path)  # refuses a corrupt or modified model before it reaches the store
    p = Path(path)
    labels = {"package": "anomaly-vae", "input_kind": card["input"]["kind"], "score": card["score"]["name"],
              "weights_sha256": card["weights"]["sha256"][:12]}
    metadata = {"format_version": card["format_version"], "package_version": card.get("package_version"),
                "threshold": float(card["calibration"]["threshold"]), "alpha": card["calibration"]["alpha"],
                "calibration_n": int(card["calibration"]["n"]), "source": str(p.resolve())}
    with bentoml.models.create(name, labels=labels, metadata=metadata) as bento_model:
        for f in (JSON_NAME, WEIGHTS_NAME):
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
