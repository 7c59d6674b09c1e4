"""The Open Inference Protocol (KServe v2) inference request and response.

Parsing checks every field a request may carry and raises ``BadRequest`` with a
message that names the field, what was received and what is allowed. Two input
kinds are accepted on the model's one input:

* a tensor, FP32 or UINT8, shaped ``[N, H, W, 3]`` like the model input;
* BYTES, shaped ``[N]`` or ``[N, 1]``, each element an encoded image (JPEG, PNG,
  ...): base64 text in JSON, raw bytes with the binary tensor extension.

Triton's binary tensor data extension is supported both ways
(``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data``),
and so is the classification extension (``"classification": k`` on an output).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np

from graft.runtime.server.errors import BadRequest
from graft.runtime.server.repository import ModelEntry

HEADER_LENGTH = "inference-header-content-length"
TENSOR_TYPES = {"FP32": np.float32, "UINT8": np.uint8}
_ITEMSIZE = {"FP32": 4, "UINT8": 1}


@dataclass
class InferRequest:
    """A checked request: either pixels or encoded images, and what to answer."""

    request_id: str | None = None
    pixels: np.ndarray | None = None
    images: list[bytes] = field(default_factory=list)
    output_name: str = "probs"
    classification: int = 0          # top-k strings instead of probabilities when > 0
    binary_output: bool = False
    timeout_us: int | None = None

    @property
    def batch_size(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self.images)


# ------------------------------------------------------------------ parsing
def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """Separate the JSON header from the binary tensor data (if any)."""
    if header_length is None:
        return body, b""
    try:
        size = int(header_length)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length must be an integer; received "
                         f"{header_length[:40]!r}") from None
    if not 0 <= size <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length {size} is outside the body of "
                         f"{len(body)} bytes")
    return body[:size], body[size:]


def parse_json(text: bytes) -> dict:
    if not text:
        raise BadRequest("empty request body; expected a JSON object with 'inputs'")
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"the request body must be a JSON object; received {_kind(doc)}")
    return doc


def _no_constant(name: str):
    raise BadRequest(f"{name} is not a valid JSON number; send finite numbers")


def parse_infer(body: bytes, header_length: str | None, entry: ModelEntry,
                max_batch_size: int | None = None) -> InferRequest:
    """Check an inference request (JSON header and binary data) against ``entry``.

    A batch of more than ``max_batch_size`` (what /config advertises) is refused
    from its shape, before its data is read.
    """
    text, binary = split_body(body, header_length)
    doc = parse_json(text)
    request = InferRequest(output_name=entry.output_name)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"'id' must be a string; received {_kind(request_id)}")
    request.request_id = request_id
    params = _object(doc.get("parameters"), "parameters")
    request.timeout_us = _optional_int(params.get("timeout"), "parameters.timeout", 0)
    binary_all = _optional_bool(params.get("binary_data_output"), "parameters.binary_data_output")
    _parse_inputs(doc.get("inputs"), binary, entry, request, max_batch_size)
    _parse_outputs(doc.get("outputs"), entry, request, bool(binary_all))
    return request


def _parse_inputs(inputs: object, binary: bytes, entry: ModelEntry, request: InferRequest,
                  max_batch_size: int | None) -> None:
    if not isinstance(inputs, list) or len(inputs) != 1:
        got = f"{len(inputs)} inputs" if isinstance(inputs, list) else _kind(inputs)
        raise BadRequest(f"'inputs' must be a list with one input named {entry.input_name!r}; "
                         f"received {got}")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise BadRequest(f"inputs[0] must be an object; received {_kind(tensor)}")
    name = tensor.get("name")
    if name != entry.input_name:
        raise BadRequest(f"unknown input {_show(name)} for model {entry.name!r}; "
                         f"the model's input is {entry.input_name!r}")
    datatype = tensor.get("datatype")
    shape = _shape(tensor.get("shape"), name)
    params = _object(tensor.get("parameters"), "inputs[0].parameters")
    size = _optional_int(params.get("binary_data_size"), "inputs[0].parameters.binary_data_size", 0)
    if size is not None and size != len(binary):
        raise BadRequest(f"input {name!r}: binary_data_size is {size} but {len(binary)} bytes "
                         "follow the JSON header")
    if size is None and binary:
        raise BadRequest(f"{len(binary)} bytes follow the JSON header but no input sets binary_data_size")
    if size is None and "data" not in tensor:
        raise BadRequest(f"input {name!r} has no 'data' (and no binary_data_size)")
    if datatype in ("BYTES", *TENSOR_TYPES) and shape and max_batch_size and shape[0] > max_batch_size:
        raise BadRequest(f"input {name!r}: a batch of {shape[0]} exceeds the model's max_batch_size of "
                         f"{max_batch_size} (see /config); send at most {max_batch_size} per request")
    if datatype == "BYTES":
        request.images = _images(tensor.get("data"), binary if size is not None else None, shape, name)
    elif datatype in TENSOR_TYPES:
        request.pixels = _tensor(tensor.get("data"), binary if size is not None else None,
                                 shape, datatype, entry)
    else:
        raise BadRequest(f"input {name!r}: datatype {_show(datatype)} is not supported; allowed: "
                         f"FP32 or UINT8 shaped {entry.input_shape}, or BYTES (encoded images) shaped [N]")


def _shape(shape: object, name: object) -> list[int]:
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise BadRequest(f"input {_show(name)}: 'shape' must be a list of non-negative integers; "
                         f"received {_show(shape)}")
    return shape


def _tensor(data: object, binary: bytes | None, shape: list[int], datatype: str,
            entry: ModelEntry) -> np.ndarray:
    height, width = entry.classifier.input_size
    name = entry.input_name
    if len(shape) != 4 or shape[1:] != [height, width, 3] or shape[0] < 1:
        raise BadRequest(f"input {name!r}: shape {shape} does not match the model input "
                         f"[N, {height}, {width}, 3] with N >= 1")
    count = math.prod(shape)
    dtype = TENSOR_TYPES[datatype]
    if binary is not None:
        if len(binary) != count * _ITEMSIZE[datatype]:
            raise BadRequest(f"input {name!r}: {len(binary)} bytes of binary data; shape {shape} "
                             f"of {datatype} needs {count * _ITEMSIZE[datatype]}")
        array = np.frombuffer(binary, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    else:
        array = _json_numbers(data, name, count)
    if datatype == "FP32":
        if not np.all(np.isfinite(array)) or array.min(initial=0) < 0 or array.max(initial=0) > 255:
            raise BadRequest(f"input {name!r}: FP32 pixel values must be finite and in 0..255")
        array = array.astype(np.float32)
    elif array.dtype != np.uint8:
        if array.min(initial=0) < 0 or array.max(initial=0) > 255 or np.any(array != np.rint(array)):
            raise BadRequest(f"input {name!r}: UINT8 values must be integers in 0..255")
        array = array.astype(np.uint8)
    return array.reshape(shape)


def _json_numbers(data: object, name: str, count: int) -> np.ndarray:
    if not isinstance(data, list):
        raise BadRequest(f"input {name!r}: 'data' must be a list of numbers; received {_kind(data)}")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise BadRequest(f"input {name!r}: 'data' must be a flat or evenly nested list of numbers") from None
    if array.dtype.kind not in "iuf" or array.size != count:
        what = f"{array.size} values" if array.dtype.kind in "iuf" else f"values of type {array.dtype.kind!r}"
        raise BadRequest(f"input {name!r}: 'data' holds {what}; the shape needs {count} numbers")
    return array.reshape(-1).astype(np.float64)


def _images(data: object, binary: bytes | None, shape: list[int], name: str) -> list[bytes]:
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise BadRequest(f"input {name!r}: BYTES shape must be [N] or [N, 1] with N >= 1; received {shape}")
    count = shape[0]
    if binary is not None:
        images = _unpack_bytes(binary, name)
    else:
        if not isinstance(data, list):
            raise BadRequest(f"input {name!r}: 'data' must be a list of base64 strings; received {_kind(data)}")
        flat = [x[0] if isinstance(x, list) and len(x) == 1 else x for x in data]
        images = [_b64(x, name, i) for i, x in enumerate(flat)]
    if len(images) != count:
        raise BadRequest(f"input {name!r}: shape {shape} needs {count} images; received {len(images)}")
    return images


def _unpack_bytes(binary: bytes, name: str) -> list[bytes]:
    """Triton's BYTES wire format: each element is a 4-byte little-endian length, then the bytes."""
    items, offset = [], 0
    while offset < len(binary):
        if offset + 4 > len(binary):
            raise BadRequest(f"input {name!r}: truncated BYTES element length at offset {offset}")
        (size,) = struct.unpack_from("<I", binary, offset)
        offset += 4
        if offset + size > len(binary):
            raise BadRequest(f"input {name!r}: BYTES element of {size} bytes runs past the data")
        items.append(binary[offset:offset + size])
        offset += size
    return items


def _b64(value: object, name: str, index: int) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(f"input {name!r}: data[{index}] must be a base64 string; received {_kind(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"input {name!r}: data[{index}] is not valid base64") from None


def _parse_outputs(outputs: object, entry: ModelEntry, request: InferRequest, binary_all: bool) -> None:
    request.binary_output = binary_all
    if outputs is None:
        return
    if not isinstance(outputs, list) or len(outputs) > 1:
        got = f"{len(outputs)} outputs" if isinstance(outputs, list) else _kind(outputs)
        raise BadRequest(f"'outputs' must be a list of at most one output named "
                         f"{entry.output_name!r}; received {got}")
    for output in outputs:
        if not isinstance(output, dict) or output.get("name") != entry.output_name:
            got = _show(output.get("name")) if isinstance(output, dict) else _kind(output)
            raise BadRequest(f"unknown output {got} for model {entry.name!r}; "
                             f"the model's output is {entry.output_name!r}")
        params = _object(output.get("parameters"), "outputs[0].parameters")
        k = _optional_int(params.get("classification"), "outputs[0].parameters.classification", 0)
        request.classification = min(k or 0, len(entry.labels))
        binary = _optional_bool(params.get("binary_data"), "outputs[0].parameters.binary_data")
        request.binary_output = binary_all if binary is None else binary


# ------------------------------------------------------------------ answers
def infer_response(entry: ModelEntry, request: InferRequest, probs: np.ndarray) -> tuple[bytes, dict]:
    """The response body and extra headers (binary outputs put the JSON size in a header)."""
    if request.classification:
        strings = classification_strings(probs, request.classification, entry.labels)
        shape, datatype = [len(probs), request.classification], "BYTES"
        data: list = [s for row in strings for s in row]
        raw = b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in data)
    else:
        shape, datatype = list(probs.shape), "FP32"
        data = [float(x) for x in probs.reshape(-1)]
        raw = np.ascontiguousarray(probs, dtype="<f4").tobytes()
    output: dict = {"name": request.output_name, "datatype": datatype, "shape": shape}
    doc: dict = {"model_name": entry.name, "model_version": entry.version, "outputs": [output]}
    if request.request_id is not None:
        doc["id"] = request.request_id
    if request.binary_output:
        output["parameters"] = {"binary_data_size": len(raw)}
        header = json.dumps(doc, separators=(",", ":")).encode()
        return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                              "Content-Type": "application/octet-stream"}
    output["data"] = data
    return json.dumps(doc, separators=(",", ":")).encode(), {"Content-Type": "application/json"}


def classification_strings(probs: np.ndarray, k: int, labels: list[str]) -> list[list[str]]:
    """Triton's classification extension: "score:index:label", best first."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[f"{row[i]:f}:{i}:{labels[i]}" for i in idx] for row, idx in zip(probs, order)]


# ------------------------------------------------------------------ helpers
def _object(value: object, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where!r} must be an object; received {_kind(value)}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_int(value: object, where: str, minimum: int) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < minimum or value > 2**53:
        raise BadRequest(f"{where!r} must be an integer >= {minimum}; received {_show(value)}")
    return value


def _optional_bool(value: object, where: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{where!r} must be true or false; received {_show(value)}")
    return value


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
