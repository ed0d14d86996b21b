"""Plain numeric text parsed by Berth's own C parser (_numbers.c): the batch transform's
blocks of CSV or JSON-array lines (before Arrow), and the serving runtime's JSON rows (before
orjson).

A 1 MiB block of 256 columns written with 4 decimals parses at 190,000-220,000 rows per
CPU-second on one 2-core machine (Arrow's CSV reader 37,000, Polars' 56,000) and 380,000 on
a faster one; Arrow's reader cost about half the model's CPU per row, so on 2 cores the
parser, not the model, set the transform's pace. Where the CPU has AVX2 (`_numbers.AVX2`) a
vector path takes the blocks: 1.38x the byte-at-a-time parser on one machine (372,000
against 270,000 rows per CPU-second), the same answers to the bit. The parser takes the
plain case only (decimal numbers it can round exactly, commas, "\\n" or "\\r\\n"; for JSON,
that one shape of document) and answers None for anything else: the caller then parses the
text as it did before, with every rule it had. Where it answers, the values are the ones Arrow (or orjson)
gives, bit for bit (tests/transform/test_numbers.py, tests/serving/test_json_rows.py).

The extension is built by `pip install` where a C compiler is found (setup.py); without it
AVAILABLE is False and every block goes to Arrow, every body to orjson.
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    from berth_serving import _numbers  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: Arrow parses every block
    _numbers = None

AVAILABLE = _numbers is not None
_NARROW = np.dtype(np.float32)
_WIDE = np.dtype(np.float64)


def newlines(data: bytes) -> int:
    """The number of b"\\n" in data: by memchr where the extension is built (0.014 ms a MiB,
    against 0.3 ms for bytes.count, which the reader paid twice per block)."""
    return _numbers.newlines(data) if _numbers is not None else data.count(b"\n")


def line_end(data: bytes, start: int, count: int) -> int:
    """The offset just after the `count`-th b"\\n" from `start`, or -1 where fewer lines end."""
    if _numbers is not None:
        return int(_numbers.line_end(data, start, count))
    position = start
    for _ in range(count):
        newline = data.find(b"\n", position)
        if newline < 0:
            return -1
        position = newline + 1
    return position if count > 0 else -1


def parse_matrix(
    data: bytes, columns: int, dtype: np.dtype[Any], *, bracketed: bool = False
) -> np.ndarray | None:
    """The block's rows (blank lines are none) as a [rows, columns] matrix of `dtype`, or None
    when the C parser refuses the block or is not built. `bracketed`: each line is a JSON
    array of numbers, `[1.5,-2,3e-2]`. The GIL is free meanwhile: the transform's workers
    parse their blocks side by side."""
    if _numbers is None or columns < 1:
        return None
    if not isinstance(data, bytes):  # the C scan ends at the terminator a bytes object has
        data = bytes(data)
    narrow = dtype == _NARROW
    out = np.empty((_numbers.newlines(data) + 1, columns), _NARROW if narrow else np.float64)
    rows = _numbers.parse(data, columns, bracketed, not narrow, out)
    if rows <= 0:
        return None
    matrix = out[:rows]
    return matrix if matrix.dtype == dtype else matrix.astype(dtype)


def json_rows(body: bytes, dtype: np.dtype[Any]) -> np.ndarray | None:
    """A JSON body `{"instances": [[numbers...], ...]}` or `[[numbers...], ...]` (rows of equal
    length, whitespace anywhere JSON allows it) as a [rows, columns] float32 or float64 matrix,
    bit for bit what orjson and tensors.to_dtype make of it; None for any other body (or dtype,
    or where the extension is not built): the caller's JSON decoder then reads it. One row of
    256 numbers: 2.8 us, against 7.3 for orjson and the conversion of its floats."""
    if _numbers is None or type(body) is not bytes or (dtype != _NARROW and dtype != _WIDE):
        return None
    # A number and its separator take two bytes at least: room enough, filled without a count.
    out = np.empty(len(body) // 2 + 1, dtype)
    shape = _numbers.json_rows(body, dtype == _WIDE, out)
    if shape is None:
        return None
    rows, columns = shape
    return out[: rows * columns].reshape(rows, columns)
