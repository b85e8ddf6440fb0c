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

Each file is checked and read through one open descriptor, and both through one of the folder: a
model replaced while it loads (a symlink repointed, new weights renamed into place) is read whole
from the folder that was opened, and the tensors are made from the very bytes whose sha256 was
checked. The header checks live in ``anomaly_vae.weights``.

Directories written before ``card_sha256`` existed still load, fully checked, with a logged warning
that their card cannot be verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import stat
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from .card import FORMAT_NAME, FORMAT_VERSION, MAX_CARD_BYTES, check_card, describe, parse_card
from .exceptions import ArtifactError, ModelCardError
from .io import atomic_output
from .weights import check_header, check_values, read_header

log = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "save_model", "save_detector", "read_model", "read_model_card", "card_sha256",
           "export_to_bentoml", "resolve_model"]

DEFAULT_BENTO_NAME = "anomaly_vae"

JSON_NAME, WEIGHTS_NAME = "model.json", "model.safetensors"


def card_sha256(card: dict[str, Any]) -> str:
    """The digest stored as ``card_sha256``: sha256 of the card without that key, written as
    canonical JSON (keys sorted, no whitespace, ASCII only, floats as Python's ``json`` writes
    them: ``json.dumps(card, sort_keys=True, separators=(",", ":"))``), UTF-8 encoded."""
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _format_version(sections: dict[str, Any]) -> int:
    """The oldest format that describes the model: 6 with ``params.marginals`` (and column maps), 5 with ``params.pair_hidden_sizes``, 4 with ``architecture.pair``, 3 with
    ``architecture.marginal_floor``; 1 for a model loaded from format 1 whose one-hot features are
    Gaussian (no ``architecture.categorical`` while the table has categorical columns), so that
    saving it again (``calibrate``) keeps a model that loads and scores as before; else 2, which
    releases before format 3 read too."""
    arch = sections.get("architecture", {})
    if sections.get("params", {}).get("marginals", "standard") != "standard":
        return 6
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
            "weights": {"file": WEIGHTS_NAME, "sha256": hashlib.sha256(tmp.read_bytes()).hexdigest()},
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
        try:  # what a loader reads first: its size, then its JSON's limits
            if len(text.encode()) > MAX_CARD_BYTES:
                raise ModelCardError(str(out / JSON_NAME), None, f"{len(text.encode())} bytes, more than the "
                                                                 f"{MAX_CARD_BYTES} a model card may have")
            parse_card(text.encode(), str(out / JSON_NAME))
        except ModelCardError as err:  # a model saved there before is left as it was
            raise ModelCardError(err.file, err.field, f"{err.problem}: not saved, a model with this card would "
                                 "not load") from None
    with atomic_output(out / JSON_NAME) as tmp:
        tmp.write_text(text)
    return out


def save_detector(det: Any, path: str | os.PathLike[str]) -> Path:
    """Write the fitted estimator ``det`` to the model directory ``path`` (``det.save(path)``)."""
    return save_model(path, *det.fitted_state())


@contextlib.contextmanager
def _model_dir(p: Path) -> Iterator[int | None]:
    """A descriptor of the model directory ``p`` that both its files are opened through, so that a folder
    swapped for another mid-load (a symlink repointed, a new model renamed into place) is read whole from
    one of them, never the card of one with the weights of the other; None where the platform opens no
    file relative to a directory (then by path)."""
    try:
        # O_PATH: a folder that may be entered but not listed opens too
        fd = os.open(p, getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY) if os.open in os.supports_dir_fd else None
    except (OSError, ValueError) as err:  # missing, a file, a loop of links, a NUL in the path
        fd, why = -1, f"{getattr(err, 'strerror', None) or err}; "
    if fd == -1 or (fd is None and not p.is_dir()):
        raise ArtifactError(f"{p} is not a model directory ({why if fd == -1 else ''}expected a folder with "
                            f"{JSON_NAME} and {WEIGHTS_NAME})")
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def _open_regular(p: Path, name: str, folder: int | None, what: str) -> tuple[BinaryIO, int]:
    """The file ``name`` of the model directory ``p`` (``folder``: its descriptor) open for reading, and its
    size. Its checks and its reads go through one descriptor, so a file replaced in between is never
    checked as one file and read as another. A missing file (``what``: why it matters), one that is not
    a regular file (a FIFO would block the reader forever, a device never end: opened non-blocking,
    never read; a terminal never made the process's own) or one that cannot be opened is an
    ``ArtifactError``."""
    path = p / name
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path if folder is None else name, flags, dir_fd=folder)
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: {what}") from None
    except OSError as err:  # a socket (ENXIO), a loop of links, no permission
        try:
            regular = stat.S_ISREG(os.stat(path if folder is None else name, dir_fd=folder).st_mode)
        except OSError:
            regular = True
        raise ArtifactError(f"{path} {'cannot be opened: ' + err.strerror if regular else 'is not a regular file'}"
                            ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{path} is not a regular file")
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as err:  # a read that failed (EIO: a failing disk or mount)
        raise ArtifactError(f"{path} cannot be read: {err.strerror or err}") from None


def _card_bytes(p: Path, folder: int | None) -> bytes:
    path = p / JSON_NAME
    f, size = _open_regular(p, JSON_NAME, folder, "not a model directory")
    with f, _reading(path):
        text = f.read(MAX_CARD_BYTES + 1) if size <= MAX_CARD_BYTES else b""
    if max(size, len(text)) > MAX_CARD_BYTES:  # the second: grown since it was opened
        raise ModelCardError(str(path), None, f"{max(size, len(text))} bytes, more than the {MAX_CARD_BYTES} a model "
                                              "card may have")
    return text


def _checked_card(p: Path, text: bytes) -> dict[str, Any]:
    """Check ``model.json``'s bytes ``text``: JSON, format version, integrity hash, every field."""
    path = p / JSON_NAME
    card = parse_card(text, str(path))
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


SHA_BEFORE_SHAPES = 1 << 30  # a weights file the card does not describe, up to this size: is it another file?


def _sha256_rest(f: BinaryIO, head: bytes, size: int, file: Path) -> str:
    """The sha256 of a file of ``size`` bytes whose first bytes ``head`` were read from ``f``, the rest
    streamed (never held in memory)."""
    h, n = hashlib.sha256(head), len(head)
    for chunk in iter(lambda: f.read(min(1 << 20, size + 1 - n)), b""):  # at most a byte more than it had
        h.update(chunk)
        n += len(chunk)
    if n != size:
        raise ArtifactError(f"{file} changed while it was read ({size} bytes when opened, {n} read)")
    return h.hexdigest()


def _check_weights_file(p: Path, card: dict[str, Any], folder: int | None, keep: bool) -> bytes:
    """The bytes of ``model.safetensors`` (``keep``; else b""), read once and checked against the card
    before a tensor is made of them: its header (byte ranges against the file size; then its tensors'
    names, dtypes and shapes, so that no more is held in memory than the card's network takes) and its
    sha256 (a file the card does not describe is said to be another file when it is one)."""
    weights = p / WEIGHTS_NAME
    f, size = _open_regular(p, WEIGHTS_NAME, folder, "the model directory has no weights")
    with f, _reading(weights):
        header, head = read_header(f, size, str(weights))
        try:
            check_header(card, header, str(p / JSON_NAME), str(weights))
        except ModelCardError:
            if size <= SHA_BEFORE_SHAPES:  # seconds of hashing, not minutes, for a file of another model
                _same_sha(p, card, _sha256_rest(f, head, size, weights))
            raise
        if not keep:
            _same_sha(p, card, _sha256_rest(f, head, size, weights))
            return b""
        f.seek(0)
        data = f.read(size + 1)
    if len(data) != size or not data.startswith(head):
        raise ArtifactError(f"{weights} changed while it was read ({size} bytes when opened, {len(data)} read)")
    _same_sha(p, card, hashlib.sha256(data).hexdigest())
    return data


def _same_sha(p: Path, card: dict[str, Any], digest: str) -> None:
    if digest != card["weights"]["sha256"]:
        raise ModelCardError(str(p / WEIGHTS_NAME), None, f"does not match the sha256 in {p / JSON_NAME} (file "
                             f"{digest[:12]}..., recorded {card['weights']['sha256'][:12]}...): refusing to load a "
                             "modified or corrupt weights file")


def _read_checked(path: str | os.PathLike[str], keep: bool) -> tuple[dict[str, Any], bytes, bytes]:
    """(the checked card, its bytes, the checked weights' bytes if ``keep``) of a model directory. A model
    saved in place while it loads (``save_model`` renames the weights in, then the card) is read again
    once, when the card on disk changed under a refusal (``_card_changes``)."""
    p = Path(path)
    for again in (False, True):
        with _model_dir(p) as folder:
            text = _card_bytes(p, folder)
            card = _checked_card(p, text)
            try:
                return card, text, _check_weights_file(p, card, folder, keep)
            except ArtifactError:
                if again or not _card_changes(p, folder, text):
                    raise
    raise AssertionError("unreachable")


def _card_changes(p: Path, folder: int | None, text: bytes) -> bool:
    """Whether the card on disk is no longer ``text``, or becomes another within a second while the weights
    were written in the last few seconds (a save in place between its two renames)."""
    for _ in range(20):
        if _card_bytes(p, folder) != text:
            return True
        try:
            st = os.stat(WEIGHTS_NAME if folder is not None else p / WEIGHTS_NAME, dir_fd=folder)
        except OSError:
            return False
        if abs(time.time() - st.st_mtime) > 5:  # not a save under way (abs: a clock ahead, a tar's future time)
            return False
        time.sleep(0.05)
    return False


def read_model_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``model.json`` of a model directory, checked in full as ``read_model`` checks
    it (format version, integrity hashes, every field, the weights' header) without loading the
    weights. Raises ``ArtifactError`` (``ModelCardError`` naming the file and field)."""
    return _read_checked(path, keep=False)[0]


def read_model(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked card and the tensors of a model directory, for
    ``VAEAnomalyDetector.from_fitted_state`` (``anomaly_vae.load_detector`` does both).

    Nothing is read before the whole directory passed its checks (see the module docstring):
    ``model.json`` against its ``card_sha256`` and the schema in ``anomaly_vae.card``, the weights
    file against the sha256 recorded in ``model.json`` and its tensors' shapes against the card.
    Raises ``ArtifactError`` (``ModelCardError`` naming the file and field) for a bad directory."""
    card, _, data = _read_checked(path, keep=True)
    file = str(Path(path) / WEIGHTS_NAME)
    tensors = _load(data, file)
    del data  # the bytes, the tensors and their check are not all held at once
    check_values(tensors, file)
    return card, tensors


def _load(data: bytes, file: str) -> dict[str, torch.Tensor]:
    """The tensors of checked weights' bytes: the very bytes checked, so a file replaced since is not read."""
    try:
        return load(data)
    except SafetensorError as err:  # what Python's JSON takes and safetensors' does not
        raise ModelCardError(file, None, f"not a safetensors file this safetensors reads: {err}") from None


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
    bentoml = _bentoml()
    card, text, data = _read_checked(path, keep=True)  # refuses a corrupt or modified model before it reaches the store
    p = Path(path)
    check_values(_load(data, str(p / WEIGHTS_NAME)), str(p / WEIGHTS_NAME))
    labels = {"package": "anomaly-vae", "input_kind": card["input"]["kind"], "score": card["score"]["name"],
              "weights_sha256": card["weights"]["sha256"][:12]}
    metadata = {"format_version": card["format_version"], "package_version": card.get("package_version"),
                "threshold": float(card["calibration"]["threshold"]), "alpha": card["calibration"]["alpha"],
                "calibration_n": int(card["calibration"]["n"]), "source": str(p.resolve())}
    with bentoml.models.create(name, labels=labels, metadata=metadata) as bento_model:
        for f, content in ((JSON_NAME, text), (WEIGHTS_NAME, data)):  # the bytes checked, not the path again
            (Path(bento_model.path) / f).write_bytes(content)
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
