"""The Open Inference Protocol (KServe V2 REST) as data: requests into the model's input, scores
into answers. No HTTP here (``service/v2_http.py`` has the routes); every function is plain and
testable.

Requests
--------
A request is JSON, or, with the binary tensor data extension, a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw little-endian bytes of the inputs
that carry ``"parameters": {"binary_data_size": n}``, in input order. A ``BYTES`` element in binary
is a 4-byte little-endian length and that many bytes (UTF-8 here).

What the inputs may be, by model:

* **table**, one tensor per column named by column (MLServer's pandas codec), shape ``[N]`` or
  ``[N, 1]``: a numeric column takes any integer or float type (``FP64``, ``INT64``, ...), a
  categorical column ``BYTES`` (numbers are taken as their text, as everywhere). Tensors of other
  names are ignored, as extra columns are on every face.
* **table whose columns are all numeric**, or one ``FP32`` / ``FP64`` (or integer) tensor
  ``input`` of shape ``[N, n_columns]`` in the model's column order.
* **image**: one tensor ``input`` of shape ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]``,
  ``UINT8`` 0-255 or ``FP32`` / ``FP64`` in [0, 1], exactly the model's height and width; grey
  and colour are converted as on every face.

Missing values: ``null`` in JSON data; ``NaN`` in binary float data (binary has no null); an empty
string in a ``BYTES`` column (as an empty CSV cell). ``NaN`` and ``Infinity`` are not JSON and are
refused there; infinity is refused everywhere. The values then go through the same rules as ``/score``
(``anomaly_vae.preprocessing``), so the scores are exactly ``/score``'s and the Python API's.

Answers
-------
Outputs ``score`` (``FP64 [N]``, nats, higher = more anomalous), ``p_value`` (``FP64 [N]``,
conformal) and ``is_anomaly`` (``BOOL [N]``, score above the threshold), or those the request names
in ``outputs``. An output is binary when it asks ``"binary_data": true``, or when the request's
parameters ask ``"binary_data_output": true`` and the output does not say otherwise; a binary
answer has ``Inference-Header-Content-Length`` and ``Content-Type: application/octet-stream``.

Errors are ``V2Error`` (a status and a message, the protocol's ``{"error": ...}``): 400 for a
request that is not the protocol (not JSON, no ``inputs``, a tensor whose data do not fit its shape
or type), 404 for another model's name or version; values that do not fit the model are the core's
``InputError`` (422 in the service).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anomaly_vae.exceptions import InputError
from anomaly_vae.preprocessing import table_records
from anomaly_vae.preprocessing.records import describe_value

__all__ = ["DATATYPES", "OUTPUTS", "InferRequest", "Tensor", "V2Error", "encode_response", "model_input",
           "model_metadata", "parse_request"]

# the protocol's tensor types, as little-endian numpy types (BF16 has none in numpy)
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
NUMERIC = tuple(t for t in DATATYPES if t != "BOOL")
OUTPUTS = {"score": "FP64", "p_value": "FP64", "is_anomaly": "BOOL"}
INPUT = "input"  # the one tensor of an image model, or the matrix of an all-numeric table model
MAX_DIMS = 8


class V2Error(Exception):
    """A request the protocol cannot take: ``status`` (400, 404) and a message for ``{"error": ...}``."""

    def __init__(self, message: str, status: int = 400, reason: str = "invalid_request") -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any  # numpy array of the shape (numbers, bool) or an object array of str / None (BYTES)


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[tuple[str, bool]] = field(default_factory=list)  # (name, binary) in the order asked


def _reject_constant(name: str) -> float:
    raise V2Error(f"{name} is not JSON; send null for a missing value")


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """The request of ``body``; ``header_length`` is the ``Inference-Header-Content-Length``
    header (None: the whole body is JSON). Raises ``V2Error`` (400) naming what is wrong."""
    size = len(body)
    if header_length is None:
        header, rest = body, b""
    else:
        text = header_length.strip()
        if not text.isdigit() or not 0 < int(text) <= size:
            raise V2Error(f"Inference-Header-Content-Length must be the length of the JSON header, a whole number "
                          f"from 1 to the body's {size} bytes; got {header_length[:40]!r}")
        header, rest = body[: int(text)], memoryview(body)[int(text):]
    try:
        doc = json.loads(header, parse_constant=_reject_constant)
    except V2Error:
        raise
    except RecursionError:
        raise V2Error("the request's JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:
        hint = "" if header_length is not None else " (binary tensor data needs the Inference-Header-Content-Length header)"
        raise V2Error(f"the request is not JSON: {err}{hint}") from None
    if not isinstance(doc, dict):
        raise V2Error(f"the request must be a JSON object, got {describe_value(doc)}")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise V2Error("the request needs 'inputs', a non-empty list of tensors")
    params = _parameters(doc, "the request")
    binary_default = params.get("binary_data_output", False) is True
    offset, tensors = 0, []
    for k, spec in enumerate(inputs):
        tensor, offset = _input_tensor(spec, k, rest, offset)
        tensors.append(tensor)
    if offset != len(rest):
        raise V2Error(f"the body has {len(rest) - offset} bytes after the binary data of the inputs; "
                      "binary_data_size must add up to the bytes after the JSON header")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise V2Error(f"input names must be distinct, got {names}")
    outputs = []
    asked = doc.get("outputs")
    if asked is None:
        outputs = [(name, binary_default) for name in OUTPUTS]
    elif not isinstance(asked, list) or not asked:
        raise V2Error("'outputs' must be a non-empty list of {\"name\": ...} objects, or absent for all outputs")
    else:
        for j, out in enumerate(asked):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise V2Error(f"outputs[{j}] must be an object with a string 'name'")
            if out["name"] not in OUTPUTS:
                raise V2Error(f"outputs[{j}]: unknown output {out['name'][:80]!r}; the model's outputs are "
                              f"{list(OUTPUTS)}")
            binary = _parameters(out, f"outputs[{j}]").get("binary_data", binary_default)
            outputs.append((out["name"], binary is True))
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2Error(f"'id' must be a string, got {describe_value(request_id)}")
    return InferRequest(request_id, tensors, outputs)


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise V2Error(f"{where}: 'parameters' must be an object, got {describe_value(params)}")
    return params


def _input_tensor(spec: Any, k: int, rest: memoryview | bytes, offset: int) -> tuple[Tensor, int]:
    where = f"inputs[{k}]"
    if not isinstance(spec, dict):
        raise V2Error(f"{where} must be an object with name, shape, datatype and data")
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str) or not name:
        raise V2Error(f"{where} needs a 'name' (a non-empty string)")
    where = f"input {name[:80]!r}"
    if datatype != "BYTES" and datatype not in DATATYPES:
        raise V2Error(f"{where}: datatype {str(datatype)[:20]!r} is not one this model takes: "
                      f"{', '.join([*DATATYPES, 'BYTES'])}")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= MAX_DIMS
            or not all(type(d) is int and 0 <= d < 2**31 for d in shape)):
        raise V2Error(f"{where}: 'shape' must be a list of 1 to {MAX_DIMS} whole numbers >= 0, got {str(shape)[:80]}")
    count = math.prod(shape)
    size = _parameters(spec, where).get("binary_data_size")
    if size is not None:
        if type(size) is not int or not 0 <= size <= len(rest) - offset:
            raise V2Error(f"{where}: binary_data_size {str(size)[:20]} is more than the {len(rest) - offset} bytes "
                          "left after the JSON header")
        if "data" in spec:
            raise V2Error(f"{where}: has both 'data' and binary_data_size; send one")
        raw = rest[offset: offset + size]
        data = _binary_data(raw, datatype, count, where)
        return Tensor(name, datatype, tuple(shape), data.reshape(shape)), offset + size
    if "data" not in spec:
        raise V2Error(f"{where} has neither 'data' nor parameters.binary_data_size")
    return Tensor(name, datatype, tuple(shape), _json_data(spec["data"], datatype, shape, count, where)), offset


def _binary_data(raw: memoryview | bytes, datatype: str, count: int, where: str) -> np.ndarray:
    if datatype == "BYTES":
        if count > len(raw) // 4:  # before allocating: every element has a 4-byte length
            raise V2Error(f"{where}: shape says {count} BYTES elements, but binary_data_size {len(raw)} has room "
                          f"for at most {len(raw) // 4} (4 bytes of length each)")
        out, pos, raw = np.empty(count, dtype=object), 0, bytes(raw)
        for i in range(count):
            if pos + 4 > len(raw):
                raise V2Error(f"{where}: the binary BYTES data ends after {i} of {count} elements")
            (n,) = struct.unpack_from("<I", raw, pos)
            if pos + 4 + n > len(raw):
                raise V2Error(f"{where}: BYTES element {i} says {n} bytes, more than are left")
            out[i] = _text(raw[pos + 4: pos + 4 + n], where, i)
            pos += 4 + n
        if pos != len(raw):
            raise V2Error(f"{where}: {len(raw) - pos} bytes left after the {count} BYTES elements")
        return out
    dtype = DATATYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise V2Error(f"{where}: binary_data_size is {len(raw)} bytes; shape and {datatype} need "
                      f"{count} x {dtype.itemsize} = {count * dtype.itemsize}")
    data = np.frombuffer(raw, dtype=dtype)
    if datatype == "BOOL" and not np.isin(np.frombuffer(raw, dtype=np.uint8), (0, 1)).all():
        raise V2Error(f"{where}: BOOL elements are bytes 0 or 1")
    return data


def _text(raw: bytes, where: str, i: int) -> str | None:
    if not raw:
        return None  # an empty string is a missing value, as an empty CSV cell
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{where}, element {i}: BYTES are read as UTF-8 text, and these bytes are not",
                         reason="invalid_value") from None


def _json_data(data: Any, datatype: str, shape: list[int], count: int, where: str) -> np.ndarray:
    if not isinstance(data, list):
        raise V2Error(f"{where}: 'data' must be a list (flat, or nested as the shape), got {describe_value(data)}")
    flat = data
    if any(isinstance(v, list) for v in data[:1]):
        try:
            arr = np.array(data, dtype=object)
        except ValueError:
            arr = None
        if arr is None or any(isinstance(v, list) for v in arr.ravel()[:count + 1]):
            raise V2Error(f"{where}: nested 'data' must be a regular array (rows of equal length)")
        if arr.shape != tuple(shape):
            raise V2Error(f"{where}: nested 'data' has shape {list(arr.shape)}, the tensor {shape}; send it flat "
                          "or nested as the shape")
        flat = arr.ravel().tolist()
    if len(flat) != count:
        raise V2Error(f"{where}: shape {shape} has {count} elements, 'data' has {len(flat)}")
    kinds = {type(v) for v in flat}
    if datatype == "BYTES":
        if not kinds <= {str, type(None)}:
            raise V2Error(f"{where}: BYTES data are strings (or null), found {_kind_names(kinds - {str, type(None)})}")
        out = np.empty(count, dtype=object)
        out[:] = [v if v else None for v in flat]  # "" is a missing value, as in binary
        return out.reshape(shape)
    if datatype == "BOOL":
        if not kinds <= {bool}:
            raise V2Error(f"{where}: BOOL data are true or false, found {_kind_names(kinds - {bool})}")
        return np.array(flat, dtype=bool).reshape(shape)
    if not kinds <= {int, float, type(None)}:
        raise V2Error(f"{where}: {datatype} data are numbers (or null for a missing value), found "
                      f"{_kind_names(kinds - {int, float, type(None)})}")
    if type(None) in kinds and datatype not in ("FP16", "FP32", "FP64"):
        raise V2Error(f"{where}: null (a missing value) needs a float datatype (FP32, FP64), not {datatype}")
    dtype = DATATYPES[datatype]
    if dtype.kind != "f" and float in kinds:
        raise V2Error(f"{where}: {datatype} data are whole numbers, found a float")
    try:
        values = np.array(flat, dtype=np.float64 if dtype.kind == "f" else dtype)  # None -> NaN
    except (OverflowError, ValueError):  # an integer beyond the type
        raise V2Error(f"{where}: a value does not fit {datatype}") from None
    if dtype.kind == "f":
        if np.isinf(values).any():
            i = int(np.flatnonzero(np.isinf(values))[0])
            raise InputError(f"{where}, element {i}: {flat[i]!r} is beyond the range of a 64-bit float", reason="not_finite")
        if datatype != "FP64" and (np.abs(values[np.isfinite(values)]) > np.finfo(dtype).max).any():
            raise V2Error(f"{where}: a value is beyond the range of {datatype}")
        values = values.astype(dtype)
    return values.reshape(shape)


def _kind_names(kinds: set[type]) -> str:
    return ", ".join(sorted(describe_value(k()) if k is not type(None) else "null" for k in kinds))


# -- requests into the model's input -----------------------------------------------------------
def model_input(det: Any, request: InferRequest) -> np.ndarray:
    """The network's input for ``request`` (what ``det.score_prepared`` takes). Raises ``V2Error``
    for inputs the protocol's metadata rules out and ``InputError`` for values the model refuses."""
    by_name = {t.name: t for t in request.inputs}
    pre = det.preprocessor_
    if det.input_kind_ == "image":
        tensor = by_name.get(INPUT)
        if tensor is None:
            raise InputError(f"an image model takes one tensor named {INPUT!r}, [N, H, W], [N, H, W, C] or "
                             f"[N, C, H, W]; got {list(by_name)}", reason="missing_column")
        if tensor.datatype not in NUMERIC:
            raise InputError(f"input {INPUT!r}: pixels are UINT8 (0-255) or FP32 (0-1), got {tensor.datatype}",
                             reason="non_numeric")
        return pre.transform(_pixels(tensor))
    names = pre.names
    if INPUT in by_name and INPUT not in names:
        return _matrix_input(pre, by_name[INPUT])
    missing = [n for n in names if n not in by_name]
    if missing:
        alt = (f", or one FP32 / FP64 tensor {INPUT!r} of shape [N, {len(names)}]" if pre.all_numeric else "")
        raise InputError(f"missing input tensor(s) {missing[:20]}: send one tensor per column, named by column "
                         f"({names}){alt}", reason="missing_column")
    columns = [_column(by_name[n], col) for n, col in zip(names, pre.columns)]
    rows = {len(c) for c in columns}
    if len(rows) > 1:
        sizes = {n: len(c) for n, c in zip(names, columns)}
        raise InputError(f"the column tensors have different lengths: {sizes}", reason="shape")
    if rows == {0}:
        raise InputError("the input tensors have no rows", reason="empty")
    if pre.all_numeric:  # a float matrix straight into the scaling, as /score's numeric rows
        return pre.transform_numeric(np.column_stack(columns))
    # Python values, NaN as None (missing): the same rules as /score's instances
    listed = [c.tolist() if c.dtype == object else np.where(np.isnan(c), None, c.astype(object)).tolist()
              for c in columns]
    return table_records(pre, list(zip(*listed)), label="row")


def _matrix_input(pre: Any, tensor: Tensor) -> np.ndarray:
    n_cols = len(pre.columns)
    if not pre.all_numeric:
        raise InputError(f"input {INPUT!r}: a matrix is only for models whose columns are all numeric; this one has "
                         f"categorical columns: send one tensor per column, named by column ({pre.names})",
                         reason="shape")
    if tensor.datatype not in NUMERIC:
        raise InputError(f"input {INPUT!r}: expected FP32 or FP64 numbers, got {tensor.datatype}", reason="non_numeric")
    if len(tensor.shape) != 2 or tensor.shape[1] != n_cols:
        raise InputError(f"input {INPUT!r}: expected shape [N, {n_cols}] (columns {pre.names}), got "
                         f"{list(tensor.shape)}", reason="width")
    if tensor.shape[0] == 0:
        raise InputError(f"input {INPUT!r} has no rows", reason="empty")
    return pre.transform_numeric(tensor.data.astype(np.float64))


def _column(tensor: Tensor, col: dict[str, Any]) -> np.ndarray:
    where = f"input {tensor.name!r}"
    if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)):
        raise InputError(f"{where}: a column tensor has shape [N] or [N, 1], got {list(tensor.shape)}", reason="shape")
    data = tensor.data.reshape(-1)
    if col["type"] == "numeric":
        if tensor.datatype not in NUMERIC:
            raise InputError(f"{where}: the column is numeric: send FP64, FP32 or an integer type, got "
                             f"{tensor.datatype}", reason="non_numeric")
        return data.astype(np.float64)  # NaN: missing
    if tensor.datatype == "BOOL":
        raise InputError(f"{where}: the column is categorical: send BYTES (text), got BOOL", reason="invalid_value")
    if tensor.datatype == "BYTES":
        return data
    # numbers in a categorical column are their text, as on every face; a float NaN is missing
    out = np.empty(len(data), dtype=object)
    out[:] = [None if isinstance(v, float) and math.isnan(v) else v for v in data.tolist()]
    return out


def _pixels(tensor: Tensor) -> np.ndarray:
    if len(tensor.shape) not in (3, 4):
        raise InputError(f"input {INPUT!r}: images are [N, H, W], [N, H, W, C] or [N, C, H, W], got shape "
                         f"{list(tensor.shape)}", reason="shape")
    if tensor.shape[0] == 0:
        raise InputError(f"input {INPUT!r} has no images", reason="empty")
    data = tensor.data
    if data.dtype.kind == "f" and data.dtype != np.float32 and data.dtype != np.float64:
        data = data.astype(np.float32)
    return data


# -- answers -------------------------------------------------------------------------------------
def encode_response(request: InferRequest, results: dict[str, np.ndarray], model_name: str, model_version: str,
                    parameters: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The answer's body and headers (Content-Type, and Inference-Header-Content-Length when some
    output is binary) for the outputs the request asked, in its order."""
    outputs, chunks = [], []
    for name, binary in request.outputs:
        values = results[name]
        out: dict[str, Any] = {"name": name, "datatype": OUTPUTS[name], "shape": [int(len(values))]}
        if binary:
            raw = np.ascontiguousarray(values, dtype=DATATYPES[OUTPUTS[name]]).tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out["data"] = values.tolist()
        outputs.append(out)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outputs,
                           "parameters": parameters}
    if request.id is not None:
        doc["id"] = request.id
    header = json.dumps(doc, allow_nan=False).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return b"".join([header, *chunks]), {"content-type": "application/octet-stream",
                                         "inference-header-content-length": str(len(header))}


def model_metadata(det: Any, name: str, version: str, threshold: float, alpha: float | None) -> dict[str, Any]:
    """The model metadata answer: the inputs (with types and shapes, -1 for any size), the outputs,
    and the threshold, alpha and score definition in ``parameters``."""
    pre = det.preprocessor_
    params: dict[str, Any] = {"threshold": threshold, "alpha": alpha, "score": det.score_kind_,
                              "score_units": "nats, higher = more anomalous", "input_kind": det.input_kind_}
    if det.input_kind_ == "image":
        inputs = [{"name": INPUT, "datatype": "FP32", "shape": [-1, *det.prepared_shape]}]
        params["input_formats"] = ("UINT8 0-255 or FP32 0-1; [N, H, W], [N, H, W, C] or [N, C, H, W]; "
                                   "grey and colour converted")
    else:
        inputs = [{"name": col["name"], "datatype": "FP64" if col["type"] == "numeric" else "BYTES", "shape": [-1]}
                  for col in pre.columns]
        if pre.all_numeric:
            params["matrix_input"] = {"name": INPUT, "datatype": "FP64", "shape": [-1, len(pre.columns)],
                                      "columns": pre.names}
    outputs = [{"name": n, "datatype": t, "shape": [-1]} for n, t in OUTPUTS.items()]
    return {"name": name, "versions": [version], "platform": "anomaly_vae", "inputs": inputs, "outputs": outputs,
            "parameters": params}
