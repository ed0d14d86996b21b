"""Open Inference Protocol v2 (KServe / Triton HTTP): tensors in and out, metadata, and the
binary tensor data extension that tritonclient uses by default (a JSON header of
`Inference-Header-Content-Length` bytes, then the raw tensors back to back; BYTES elements
each a 4-byte little-endian length and the bytes).

Every field is checked before use: a name that is not a string, `outputs` or `parameters` of
the wrong type, a `binary_data_size` that is not a non-negative integer, binary sizes that do
not add up to the bytes sent, data that does not fill its shape, or values the declared
datatype cannot hold (INT8 300) are 400s that say so."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from berth_serving.errors import bad_request
from berth_serving.signature import Signature, TensorSpec
from berth_serving.tensors import STRING, V2_DATATYPES, ValueMismatch, as_matrix, dumps, to_dtype, v2_datatype

HEADER_LENGTH = "inference-header-content-length"
_LENGTH = struct.Struct("<I")


def _shape(spec: TensorSpec) -> list[int]:
    if spec.shape is None:
        return [-1, -1] if spec.onnx_type.startswith("seq(") else [-1]
    return [-1 if dim is None else dim for dim in spec.shape]


def model_metadata(signature: Signature, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": s.name, "datatype": v2_datatype(s.dtype), "shape": _shape(s)} for s in signature.inputs
        ],
        "outputs": [
            {"name": s.name, "datatype": v2_datatype(s.dtype), "shape": _shape(s)} for s in signature.outputs
        ],
    }


def _parameters(owner: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    parameters = owner.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise bad_request(f'{where}: "parameters" must be an object')
    return parameters


def _flag(parameters: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise bad_request(f"{where}: {key} must be true or false")
    return value


class _Tensor:
    """One input's declared name, datatype and shape, checked."""

    __slots__ = ("binary_size", "dtype", "dtype_name", "name", "raw", "shape")

    def __init__(self, raw: Any, index: int) -> None:
        if not isinstance(raw, dict):
            raise bad_request(f'input {index} must be an object with "name", "shape", "datatype" and "data"')
        name = raw.get("name")
        if not isinstance(name, str):
            raise bad_request(f'input {index}: "name" must be a string')
        self.name = name
        dtype_name = raw.get("datatype")
        if not isinstance(dtype_name, str):
            raise bad_request(f'input {name!r}: "datatype" must be a string such as "FP32"')
        dtype = V2_DATATYPES.get(dtype_name)
        if dtype is None:
            raise bad_request(
                f"input {name!r}: datatype {dtype_name!r} is not supported; use one of {', '.join(V2_DATATYPES)}"
            )
        self.dtype, self.dtype_name = dtype, dtype_name
        shape = raw.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise bad_request(f"input {name!r}: shape must be a list of non-negative integers")
        self.shape = shape
        size = _parameters(raw, f"input {name!r}").get("binary_data_size")
        if size is not None and (type(size) is not int or size < 0):
            raise bad_request(f"input {name!r}: binary_data_size must be a non-negative integer")
        self.binary_size: int | None = size
        self.raw = raw

    def from_json(self) -> np.ndarray:
        data = self.raw.get("data")
        if not isinstance(data, list):
            raise bad_request(f'input {self.name!r}: "data" must be a list (or binary_data_size given)')
        try:
            array = to_dtype(data, self.dtype)
        except ValueMismatch as error:
            raise bad_request(f"input {self.name!r} ({self.dtype_name}): {error}") from None
        if array.size != math.prod(self.shape):
            raise bad_request(
                f"input {self.name!r}: {array.size} values do not fill shape {self.shape} of {self.dtype_name}"
            )
        return array.reshape(self.shape)

    def from_binary(self, chunk: bytes | memoryview) -> np.ndarray:
        if self.dtype == STRING:
            return self._strings(chunk)
        if len(chunk) != math.prod(self.shape) * self.dtype.itemsize:
            raise bad_request(
                f"input {self.name!r}: {len(chunk)} bytes do not fit shape {self.shape} of {self.dtype_name}"
            )
        return np.frombuffer(chunk, dtype=self.dtype).reshape(self.shape)

    def _strings(self, chunk: bytes | memoryview) -> np.ndarray:
        values: list[str] = []
        offset, end = 0, len(chunk)
        try:
            while offset < end:
                (length,) = _LENGTH.unpack_from(chunk, offset)
                offset += 4
                if offset + length > end:
                    raise ValueError("element runs past its tensor")
                values.append(bytes(chunk[offset : offset + length]).decode("utf-8"))
                offset += length
        except (struct.error, ValueError):
            raise bad_request(
                f"input {self.name!r}: BYTES data must be elements of a 4-byte little-endian length "
                "and that many bytes of UTF-8"
            ) from None
        if len(values) != math.prod(self.shape):
            raise bad_request(f"input {self.name!r}: {len(values)} strings do not fill shape {self.shape}")
        return np.array(values, dtype=object).reshape(self.shape)


def decode_json_tensors(tensors: Sequence[Any]) -> dict[str, np.ndarray]:
    """`[{"name", "shape", "datatype", "data"}, ...]` -> arrays by name."""
    arrays: dict[str, np.ndarray] = {}
    for index, raw in enumerate(tensors):
        tensor = _Tensor(raw, index)
        if tensor.name in arrays:
            raise bad_request(f"input {tensor.name!r} is given twice")
        arrays[tensor.name] = tensor.from_json()
    return arrays


class InferRequest:
    """A parsed v2 infer request: its inputs (`take_inputs` hands them over once), and what
    the answer should hold."""

    __slots__ = ("_inputs", "binary_default", "id", "requested")

    def __init__(self, body: bytes, header_length: int | None) -> None:
        if header_length is not None and not 0 <= header_length <= len(body):
            raise bad_request(
                f"Inference-Header-Content-Length must be the byte length of the JSON header, "
                f"a whole number from 0 to the {len(body)} bytes sent"
            )
        json_part = body if header_length is None else body[:header_length]
        try:
            document = orjson.loads(json_part)
        except orjson.JSONDecodeError as error:
            raise bad_request(f"body is not valid JSON: {error}") from None
        if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
            raise bad_request('expected {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
        request_id = document.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise bad_request('"id" must be a string')
        self.id: str | None = request_id
        parameters = _parameters(document, "request")
        self.binary_default = _flag(parameters, "binary_data_output", False, "request")
        self.requested = self._outputs(document.get("outputs"))
        binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
        self._inputs: dict[str, np.ndarray] | None = self._read_inputs(document["inputs"], binary)

    def _outputs(self, outputs: Any) -> list[tuple[str, bool]] | None:
        if outputs is None:
            return None
        if not isinstance(outputs, list):
            raise bad_request('"outputs" must be a list of {"name": ...} objects')
        requested = []
        for index, output in enumerate(outputs):
            if not isinstance(output, dict):
                raise bad_request(f'"outputs" entry {index} must be an object with a "name"')
            name = output.get("name")
            if not isinstance(name, str):
                raise bad_request(f'"outputs" entry {index}: "name" must be a string')
            where = f"output {name!r}"
            requested.append(
                (name, _flag(_parameters(output, where), "binary_data", self.binary_default, where))
            )
        return requested

    @staticmethod
    def _read_inputs(raw_tensors: list[Any], binary: memoryview) -> dict[str, np.ndarray]:
        tensors = [_Tensor(raw, index) for index, raw in enumerate(raw_tensors)]
        declared = sum(tensor.binary_size or 0 for tensor in tensors)
        if declared < len(binary):
            extra = len(binary) - declared
            raise bad_request(
                f"the body has {extra} byte{'s' if extra != 1 else ''} more than the binary_data_size "
                f"parameters declare ({declared} bytes)"
            )
        if declared > len(binary):
            raise bad_request(
                f"the inputs declare {declared} bytes of binary data and the body has {len(binary)} after the JSON header"
            )
        arrays: dict[str, np.ndarray] = {}
        offset = 0
        for tensor in tensors:
            if tensor.name in arrays:
                raise bad_request(f"input {tensor.name!r} is given twice")
            if tensor.binary_size is None:
                arrays[tensor.name] = tensor.from_json()
            else:
                arrays[tensor.name] = tensor.from_binary(binary[offset : offset + tensor.binary_size])
                offset += tensor.binary_size
        return arrays

    def take_inputs(self) -> dict[str, np.ndarray]:
        """The input arrays; the request keeps no reference to them afterwards."""
        inputs, self._inputs = self._inputs, None
        if inputs is None:
            raise RuntimeError("inputs already taken")
        return inputs

    def check_outputs(self, output_names: Sequence[str]) -> None:
        """A requested output the model does not have is a 400 before the model runs."""
        for name, _ in self.requested or ():
            if name not in output_names:
                raise bad_request(
                    f"unknown output {name!r}; the model has {', '.join(map(repr, output_names))}"
                )

    def encode(self, model_name: str, outputs: Mapping[str, Any]) -> tuple[bytes, int | None]:
        """The response body, and the JSON header length when binary tensors follow it."""
        wanted = self.requested or [(name, self.binary_default) for name in outputs]
        described: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for name, binary in wanted:
            array = np.ascontiguousarray(as_matrix(outputs[name]))
            strings = array.dtype.kind in "OUS"
            entry: dict[str, Any] = {
                "name": name,
                "datatype": v2_datatype(array.dtype),
                "shape": list(array.shape),
            }
            if binary:
                blob = _string_blob(array) if strings else array.tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = [_text(v) for v in array.flat] if strings else array.reshape(-1)
            described.append(entry)
        header: dict[str, Any] = {"model_name": model_name, "model_version": "1", "outputs": described}
        if self.id is not None:
            header["id"] = self.id
        head = dumps(header)
        if not blobs:
            return head, None
        return head + b"".join(blobs), len(head)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _string_blob(array: np.ndarray) -> bytes:
    parts = []
    for value in array.flat:
        data = value if isinstance(value, bytes) else str(value).encode("utf-8")
        parts.append(_LENGTH.pack(len(data)) + data)
    return b"".join(parts)
