"""Tensor helpers shared by the codecs and the Open Inference Protocol: the dtype tables,
outputs as arrays, and JSON writing. A leaf module: it imports nothing of Berth's."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

# ONNX Runtime type strings -> numpy dtypes.
ORT_DTYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(string)": np.dtype(object),
}
STRING = np.dtype(object)

# Open Inference Protocol datatype names -> numpy dtypes (BYTES: strings, as numpy objects).
V2_DATATYPES: dict[str, np.dtype[Any]] = {
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
    "BYTES": STRING,
}
_V2_NAMES = {dtype: name for name, dtype in V2_DATATYPES.items()}


def v2_datatype(dtype: np.dtype[Any] | None) -> str:
    """The Open Inference Protocol name of a dtype; strings (numpy str or object) are BYTES."""
    if dtype is None:
        return "FP32"  # ZipMap probabilities are answered as an FP32 matrix
    if dtype.kind in "OUS":
        return "BYTES"
    return _V2_NAMES.get(dtype, "BYTES")


def dtype_name(dtype: np.dtype[Any]) -> str:
    """`float32`, `int64`, `string`: as error messages spell a dtype."""
    return "string" if dtype.kind in "OUS" else str(dtype)


def as_matrix(value: Any) -> np.ndarray:
    """An output as an array; ZipMap's list of {class: probability} becomes [rows, classes]."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, list) and value and isinstance(value[0], dict):
        classes = sorted(value[0])
        return np.asarray([[row[c] for c in classes] for row in value], dtype=np.float32)
    return np.asarray(value)


_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _json_default(value: Any) -> Any:
    # orjson hands over what it cannot write natively: non-contiguous, float16 or string
    # arrays, numpy scalars, bytes.
    if isinstance(value, np.ndarray):
        return value.astype(np.float32).tolist() if value.dtype == np.float16 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot serialize {type(value).__name__}")


def dumps(document: Any) -> bytes:
    """JSON with numpy arrays written natively; NaN and infinity become null, as JSON has neither."""
    return orjson.dumps(document, default=_json_default, option=_JSON_OPTIONS)
