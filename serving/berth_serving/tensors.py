"""Tensor helpers shared by the codecs and the Open Inference Protocol: the dtype tables,
outputs as arrays, and JSON writing. A leaf module: it imports nothing of Berth's."""

from __future__ import annotations

import math
import struct
import warnings
from functools import lru_cache
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


def quiet_overflow_warnings() -> None:
    """For the process that serves or transforms: `to_dtype` checks float overflow itself and
    names the value, so numpy's warning would only be a stray line on stderr."""
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"berth_serving\.tensors")


# Floats are whole numbers exactly only up to this magnitude.
_EXACT_FLOAT_INTEGER = 2**53


class ValueMismatch(ValueError):
    """Values that a dtype cannot hold; the message says which and why."""


def to_dtype(value: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """Values (nested lists or an array) as an array of `dtype`, refusing (ValueMismatch) any
    value the dtype cannot hold instead of wrapping, rounding or overflowing it: 300 for int8,
    -1 for uint8, 0.1 for an integer, 1e39 for float32 (it would become inf). Floats become
    integers only when whole and within +-2**53 (JSON parsers read integers beyond 64 bits as
    floats, so a larger one may not be what the client wrote). NaN and infinity pass as they
    are into float dtypes; booleans become 0/1 in numbers, and only booleans feed booleans."""
    if isinstance(value, np.ndarray):
        array = value
    elif dtype.kind == "f":
        if type(value) is list:
            packed = _packed_floats(value, dtype)
            if packed is not None:
                return packed
        # Numbers from JSON or CSV convert straight to the float type (the fast path; no
        # errstate here, it costs more than the conversion of a row: quiet_overflow_warnings
        # silences numpy's warning instead, and overflow is checked below).
        try:
            array = np.asarray(value, dtype=dtype)
            source = None if _all_finite(array) else np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            raise ValueMismatch("not a regular numeric array") from None
        if source is not None:
            _check_overflow(source, array)
        return array
    else:
        try:
            array = np.asarray(value)
            if dtype.kind in "iu" and array.dtype.kind == "f":
                array = _exact_integers(value, array)
        except (ValueError, TypeError, OverflowError):
            raise ValueMismatch(f"not a regular {_what(dtype)} array") from None
    if array.dtype == dtype:
        return array
    kind = array.dtype.kind
    if dtype == STRING:
        if kind == "U" or (kind == "O" and all(isinstance(v, str) for v in array.flat)):
            return array.astype(object)
        raise ValueMismatch("strings only")
    if kind == "O" and array.size and all(type(v) in (int, bool, float) for v in array.flat):
        # Python numbers numpy could not put in one 64-bit type (see _exact_integers).
        if dtype.kind in "iu":
            return _to_integer(array, dtype)
        raise ValueMismatch(f"{max(array.flat, key=abs)} is out of range for {dtype}")
    if kind not in "biuf":
        raise ValueMismatch("not a regular numeric array")
    if dtype.kind == "b":
        if kind != "b":
            raise ValueMismatch("true/false only")
        return array
    if dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            converted = array.astype(dtype)
        if not np.isfinite(converted).all():
            _check_overflow(array, converted)
        return converted
    return _to_integer(array, dtype)


# struct's codes for the float dtypes it packs exactly as numpy casts them.
_STRUCT_CODES = {np.dtype(np.float32): "f", np.dtype(np.float64): "d"}
# Past this many values numpy's own conversion is used (struct would hold a pointer per value).
_PACK_AT_MOST = 1 << 16


@lru_cache(maxsize=64)
def _packer(code: str, count: int) -> struct.Struct:
    return struct.Struct(f"={count}{code}")


def _packed_floats(value: list[Any], dtype: np.dtype[Any]) -> np.ndarray | None:
    """A flat list of numbers, or a list of equally long flat lists (the usual JSON rows), as
    a float32/float64 array through struct.pack: about 2.5x faster than numpy's conversion of
    Python floats for a 256-wide row. A row at a time, each straight from its list: packing
    one chain over all rows cost 2.7x as much (9.9 vs 3.7 us for one 256-wide row here, 180
    vs 126 us for 32), and the array is made over the packed bytes without a reshape (1.0 vs
    1.9 us). struct casts each double to float as numpy does and raises OverflowError exactly
    when a finite value would become infinite, so no finite check is needed after it. None
    when the value is anything else (strings, None, deeper nesting, ragged rows, overflow):
    to_dtype's general path then converts it or says why not, as it always did."""
    code = _STRUCT_CODES.get(dtype)
    if code is None or not value:
        return None
    first = value[0]
    shape: tuple[int, ...]
    try:
        if type(first) is list:
            width = len(first)
            if not width or len(value) * width > _PACK_AT_MOST:
                return None
            row = _packer(code, width)
            if len(value) == 1:
                packed = row.pack(*first)
            else:
                for each in value:
                    if type(each) is not list or len(each) != width:
                        return None
                packed = b"".join([row.pack(*each) for each in value])
            shape = (len(value), width)
        else:
            if len(value) > _PACK_AT_MOST:
                return None
            packed = _packer(code, len(value)).pack(*value)
            shape = (len(value),)
    except (struct.error, OverflowError, TypeError):
        return None
    return np.ndarray(shape, dtype, packed)


def _all_finite(array: np.ndarray) -> bool:
    """No NaN or infinity in a float array: its sum is finite only when every value is (a sum
    that overflows is a false alarm the exact check after it settles). A row of a few values
    is summed in Python: a numpy reduction costs more than the conversion itself there. Not a
    BLAS dot either: it releases the GIL, which hands the ORT worker a batch before the
    requests queued behind this one could join it."""
    if array.size <= _SMALL:
        return math.isfinite(sum(array.ravel().tolist()))
    return math.isfinite(array.sum())


_SMALL = 64


def _exact_integers(value: Any, floats: np.ndarray) -> np.ndarray:
    """Values numpy read as float64 for an integer input. When some are Python integers
    beyond 2**53 (2**64-1 beside 0, or 2**53+1 beside 0.0), float64 would round them: keep
    the Python numbers instead (an object array), with any float beside them whole and
    exact. Otherwise the floats are exact and _to_integer checks them."""
    exact = np.asarray(value, dtype=object)
    if not any(type(v) is int and abs(v) > _EXACT_FLOAT_INTEGER for v in exact.flat):
        return floats
    for v in exact.flat:
        if type(v) is float and not (math.isfinite(v) and v.is_integer() and abs(v) <= _EXACT_FLOAT_INTEGER):
            raise ValueMismatch(f"whole numbers within 2**53 only beside large integers, got {_number(v)}")
    return exact


def _what(dtype: np.dtype[Any]) -> str:
    return "string" if dtype == STRING else "numeric"


def _to_integer(array: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    if (
        array.size == 0
        or array.dtype.kind == "b"
        or (array.dtype.kind != "O" and np.can_cast(array.dtype, dtype, casting="safe"))
    ):
        return array.astype(dtype)
    info = np.iinfo(dtype)
    if array.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(array) & (np.mod(array, 1) == 0)
        if not whole.all():
            raise ValueMismatch(f"whole numbers only, got {_number(array[~whole].flat[0])}")
        big = np.abs(array) > _EXACT_FLOAT_INTEGER
        if big.any():
            raise ValueMismatch(
                f"{array[big].flat[0]:.17g} is not an exact integer "
                "(send integers beyond 2**53 as JSON integers, NPY or v2 binary)"
            )
    low, high = array.min(), array.max()
    if low < info.min or high > info.max:
        bad = low if low < info.min else high
        raise ValueMismatch(f"{_number(bad)} is out of range for {dtype} ({info.min}..{info.max})")
    return array.astype(dtype)


def _check_overflow(source: np.ndarray, converted: np.ndarray) -> None:
    """A finite value that became infinite in the float dtype does not fit it."""
    overflowed = ~np.isfinite(converted) & np.isfinite(source)
    if overflowed.any():
        largest = np.finfo(converted.dtype).max
        raise ValueMismatch(
            f"{_number(source[overflowed].flat[0])} is out of range for {converted.dtype} "
            f"(largest magnitude {largest:.8g})"
        )


def _number(value: Any) -> str:
    value = value.item() if isinstance(value, np.generic) else value
    return f"{value:.9g}" if isinstance(value, float) else str(value)


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
