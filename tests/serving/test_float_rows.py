"""JSON rows into float inputs (tensors.to_dtype): the one-struct.pack path for lists of
numbers gives the very bits numpy's cast gives, refuses exactly the finite values that would
become infinite, and leaves everything else to the general path."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from berth_serving.tensors import ValueMismatch, to_dtype

# The server silences numpy's overflow warnings (it checks overflow itself); pytest restores them.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:berth_serving.tensors")
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
MAX32 = float(np.finfo(np.float32).max)
# The largest double that still rounds to float32's largest finite value, and the next one.
LAST_FINITE = float(np.nextafter(np.float64(MAX32) + 2.0**103, 0.0))
FIRST_INFINITE = MAX32 + 2.0**103


def numpy_oracle(value: Any, dtype: np.dtype[Any]) -> np.ndarray | None:
    """numpy's conversion, None when a finite value becomes infinite (what Berth refuses)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        converted = np.asarray(value, dtype=dtype)
    source = np.asarray(value, dtype=np.float64)
    if (np.isinf(converted) & np.isfinite(source)).any():
        return None
    return converted


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize(
    "value",
    [
        [[0.1257, -0.1321, 1e-46, -0.0, 3, True]],
        [[1.0, 2.0], [3.0, 4.5]],
        [0.5, -1.5, 2],
        [[float("inf"), float("nan"), -float("inf")]],
        [[LAST_FINITE, -LAST_FINITE]],
        [[1.0, FIRST_INFINITE]],
        [[-FIRST_INFINITE]],
        [[1e39, 0.0]],
        [[2**70, 1.5]],
        np.random.default_rng(0).normal(size=(32, 256)).tolist(),
    ],
)
def test_rows_of_numbers_convert_as_numpy_does(value: Any, dtype: np.dtype[Any]) -> None:
    expected = numpy_oracle(value, dtype)
    if expected is None:
        with pytest.raises(ValueMismatch, match="is out of range for float32"):
            to_dtype(value, dtype)
        return
    array = to_dtype(value, dtype)
    assert array.dtype == dtype
    assert array.shape == expected.shape
    assert array.tobytes() == expected.tobytes()


def test_the_boundary_of_float32_is_where_numpy_puts_it() -> None:
    assert to_dtype([LAST_FINITE], F32)[0] == np.float32(MAX32)
    with pytest.raises(ValueMismatch):
        to_dtype([FIRST_INFINITE], F32)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([[1.0, "2.5"]], [[1.0, 2.5]]),  # numpy reads numeric strings; so does Berth, as before
        ([[1.0, None]], [[1.0, np.nan]]),
        ([[[1.0, 2.0]]], [[[1.0, 2.0]]]),  # deeper than rows of numbers
    ],
)
def test_other_values_keep_the_general_path(value: Any, expected: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        np.testing.assert_array_equal(to_dtype(value, F32), np.asarray(expected, dtype=np.float32))


@pytest.mark.parametrize("value", [[[1.0], [1.0, 2.0]], [[1.0, [2.0]]], [[1.0, {}]]])
def test_ragged_or_mixed_rows_are_refused_as_before(value: Any) -> None:
    with pytest.raises(ValueMismatch, match="not a regular numeric array"):
        to_dtype(value, F32)
