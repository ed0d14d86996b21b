"""Blocks of plain numeric lines parsed by Berth's own C parser (_numbers.c), before Arrow.

Measured on the 2-core machine, a 1 MiB block of 256 columns written with 4 decimals: 190,000-
220,000 rows per CPU-second (about 420 MB/s), against 37,000 for Arrow's CSV reader and 56,000
for Polars'. Arrow's reader cost about half the model's CPU per row, so on 2 cores the parser, not the model, set
the transform's pace. The C parser takes the plain case only (decimal numbers a convert can
round exactly, commas, "\\n" or "\\r\\n") and answers None for anything else: the caller then
parses the block with Arrow, with every rule it had. Where it answers, the values are the
ones Arrow gives, bit for bit (tests/transform/test_numbers.py compares them).

The extension is built by `pip install` where a C compiler is found (setup.py); without it
AVAILABLE is False and every block goes to Arrow, as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    from berth_serving.transform import _numbers  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: Arrow parses every block
    _numbers = None

AVAILABLE = _numbers is not None
_NARROW = np.dtype(np.float32)


def newlines(data: bytes) -> int:
    """The number of b"\\n" in data: by memchr where the extension is built (0.014 ms a MiB,
    against 0.3 ms for bytes.count, which the reader paid twice per block)."""
    return _numbers.newlines(data) if _numbers is not None else data.count(b"\n")


def parse_matrix(
    data: bytes, columns: int, dtype: np.dtype[Any], *, bracketed: bool = False
) -> np.ndarray | None:
    """The block's rows (blank lines are none) as a [rows, columns] matrix of `dtype`, or None
    when the C parser refuses the block or is not built. `bracketed`: each line is a JSON
    array of numbers, `[1.5,-2,3e-2]`."""
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
