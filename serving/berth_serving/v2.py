"""Open Inference Protocol v2 (KServe / Triton HTTP): tensors in and out, metadata, and the
binary tensor data extension that tritonclient uses by default (a JSON header of
`Inference-Header-Content-Length` bytes, then the raw tensors back to back)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from berth_serving.codecs import as_matrix, dumps
from berth_serving.errors import bad_request
from berth_serving.signature import Signature, TensorSpec

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_NAMES = {dtype: name for name, dtype in DATATYPES.items()}
HEADER_LENGTH = "inference-header-content-length"


def datatype(dtype: np.dtype[Any] | None) -> str:
    if dtype is None:
        return "FP32"  # ZipMap probabilities are answered as an FP32 matrix
    return _NAMES.get(dtype, "BYTES")


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
            {"name": s.name, "datatype": datatype(s.dtype), "shape": _shape(s)} for s in signature.inputs
        ],
        "outputs": [
            {"name": s.name, "datatype": datatype(s.dtype), "shape": _shape(s)} for s in signature.outputs
        ],
    }


def _tensor(name: str, dtype_name: str, shape: Any, data: Any) -> np.ndarray:
    dtype = DATATYPES.get(dtype_name)
    if dtype is None:
        raise bad_request(f"input {name!r}: datatype {dtype_name!r} is not supported")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise bad_request(f"input {name!r}: shape must be a list of non-negative integers")
    try:
        array = np.asarray(data, dtype=dtype)
        return array.reshape(shape)
    except (ValueError, TypeError):
        raise bad_request(
            f"input {name!r}: data does not fit shape {shape} and datatype {dtype_name}"
        ) from None


def decode_json_tensors(tensors: Sequence[Any]) -> dict[str, np.ndarray]:
    """`[{"name", "shape", "datatype", "data"}, ...]` -> arrays by name."""
    arrays: dict[str, np.ndarray] = {}
    for tensor in tensors:
        if not isinstance(tensor, dict) or "name" not in tensor:
            raise bad_request('each input needs "name", "shape", "datatype" and "data"')
        arrays[tensor["name"]] = _tensor(
            tensor["name"], tensor.get("datatype", ""), tensor.get("shape"), tensor.get("data")
        )
    return arrays


class InferRequest:
    """A parsed v2 infer request."""

    def __init__(self, body: bytes, header_length: int | None) -> None:
        json_part = body if header_length is None else body[:header_length]
        try:
            document = orjson.loads(json_part)
        except orjson.JSONDecodeError as error:
            raise bad_request(f"body is not valid JSON: {error}") from None
        if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
            raise bad_request('expected {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
        self.id: str | None = document.get("id")
        parameters = document.get("parameters") or {}
        self.binary_default = bool(parameters.get("binary_data_output", False))
        self.requested: list[tuple[str, bool]] | None = None
        if isinstance(document.get("outputs"), list):
            self.requested = [
                (
                    out.get("name", ""),
                    bool((out.get("parameters") or {}).get("binary_data", self.binary_default)),
                )
                for out in document["outputs"]
            ]
        self.inputs = self._inputs(
            document["inputs"], body[header_length:] if header_length is not None else b""
        )

    @staticmethod
    def _inputs(tensors: list[Any], binary: bytes) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        offset = 0
        json_tensors = []
        for tensor in tensors:
            size = ((tensor.get("parameters") or {}) if isinstance(tensor, dict) else {}).get(
                "binary_data_size"
            )
            if size is None:
                json_tensors.append(tensor)
                continue
            name, dtype_name, shape = tensor.get("name"), tensor.get("datatype", ""), tensor.get("shape")
            dtype = DATATYPES.get(dtype_name)
            if dtype is None:
                raise bad_request(f"input {name!r}: datatype {dtype_name!r} is not supported")
            chunk = binary[offset : offset + int(size)]
            offset += int(size)
            try:
                arrays[str(name)] = np.frombuffer(chunk, dtype=dtype).reshape(shape)
            except (ValueError, TypeError):
                raise bad_request(f"input {name!r}: {size} binary bytes do not fit shape {shape}") from None
        arrays.update(decode_json_tensors(json_tensors))
        return arrays

    def encode(self, model_name: str, outputs: Mapping[str, Any]) -> tuple[bytes, int | None]:
        """The response body, and the JSON header length when binary tensors follow it."""
        wanted = self.requested or [(name, self.binary_default) for name in outputs]
        described: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for name, binary in wanted:
            if name not in outputs:
                raise bad_request(f"unknown output {name!r}; the model has {', '.join(map(repr, outputs))}")
            array = np.ascontiguousarray(as_matrix(outputs[name]))
            entry: dict[str, Any] = {
                "name": name,
                "datatype": datatype(array.dtype),
                "shape": list(array.shape),
            }
            if binary:
                blob = array.tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = array.reshape(-1)
            described.append(entry)
        header: dict[str, Any] = {"model_name": model_name, "model_version": "1", "outputs": described}
        if self.id is not None:
            header["id"] = self.id
        head = dumps(header)
        if not blobs:
            return head, None
        return head + b"".join(blobs), len(head)
