"""The weights file of a model directory checked against its card (``artifact`` reads both): from the
safetensors header alone, before a tensor is made (every tensor's byte range, name, dtype and shape
against what the card's network needs, a mismatch named by the card's field where one says the
size), then the values of the tensors made (finite numbers; an aggregate prior's codes in range).
Raises ``ModelCardError`` naming the file and the field."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .card import CardProblem, Choice, Int, ListOf, Obj, describe, parse_json
from .exceptions import ModelCardError
from .models import LOGVAR_MAX, LOGVAR_MIN, build_model

MAX_HEADER_BYTES = 16 << 20  # a safetensors header is about 100 bytes a tensor
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
            "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}

TensorInfo = tuple[str, tuple[int, ...]]  # (dtype, shape)


def _tensor_name(name: str) -> str:
    """A tensor name from a file, safe to print on one line."""
    return name if re.fullmatch(r"[\w.]{1,128}", name) else json.dumps(name[:64], ensure_ascii=True)


def read_header(f: BinaryIO, size: int, file: str) -> tuple[dict[str, TensorInfo], bytes]:
    """The tensors a safetensors file (``f`` at its start, ``size`` bytes) declares, ``{name: (dtype,
    shape)}``, and the bytes read, from its header only (an 8-byte little-endian length, then that many
    bytes of JSON). Checks that every tensor's byte range has the size its dtype and shape need, and that
    the ranges tile the file's data exactly (no truncation, no overlap, no trailing bytes). Raises
    ``ModelCardError``."""
    head = f.read(8)
    if len(head) < 8:
        raise ModelCardError(file, None, f"truncated: {size} bytes, too short for a safetensors header")
    n = int.from_bytes(head, "little")
    if n > min(MAX_HEADER_BYTES, size - 8):
        raise ModelCardError(file, None, f"truncated or not a safetensors file: its header claims {n} bytes, "
                                         f"the file has {size - 8} after the length")
    head += f.read(n)
    header = parse_json(head[8:], file, max_depth=4)
    try:  # Python's JSON takes an escaped lone surrogate, safetensors' parser does not
        json.dumps(header, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ModelCardError(file, None, "not a safetensors file: its header escapes a lone surrogate") from None
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
            raise ModelCardError(file, f"{_tensor_name(name)}{'.' if p.field else ''}{p.field or ''}", p.problem) from None
        (begin, end), shape = e["data_offsets"], tuple(e["shape"])
        need = math.prod(shape) * ITEMSIZE[e["dtype"]]
        if end - begin != need:
            raise ModelCardError(file, _tensor_name(name), f"its data_offsets span {end - begin} bytes, but {e['dtype']} "
                                                  f"{list(shape)} needs {need}")
        out[name] = (e["dtype"], shape)
        spans.append((begin, end, name))
    data = size - 8 - n
    at = 0
    for begin, end, name in sorted(spans):
        if begin != at:
            raise ModelCardError(file, _tensor_name(name), f"its data starts at byte {begin}, expected {at} "
                                                      "(tensors must not overlap or leave gaps)")
        at = end
    if at != data:
        what = "truncated: the header declares" if at > data else "the header declares only"
        raise ModelCardError(file, None, f"{what} {at} bytes of tensor data, the file holds {data}")
    return out, head


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


def check_header(card: dict[str, Any], tensors: dict[str, TensorInfo], card_file: str, weights_file: str) -> None:
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
        raise ModelCardError(weights_file, _tensor_name(extra[0]), f"unexpected tensor ({len(extra)} in all), not part of "
                                                          "the model that model.json describes")


MAX_PRIOR_MEAN = 1e6  # an aggregate prior's code means; a trained encoder's are in the tens


def check_values(tensors: dict[str, torch.Tensor], file: str) -> None:
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
