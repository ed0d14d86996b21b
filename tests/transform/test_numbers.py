"""Berth's C parser of plain numeric lines (transform/numbers.py, _numbers.c) against Arrow's
CSV reader, which it runs before: wherever it answers, Arrow must answer the same values, bit
for bit; whatever it refuses goes to Arrow and the line by line path, so a refusal must never
be a wrong answer. And it must answer the common case, or the fast path is a dead one."""

from __future__ import annotations

import shutil
import threading
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
from berth_serving import numbers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

needs_parser = pytest.mark.skipif(not numbers.AVAILABLE, reason="_numbers not built (no C compiler)")
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
PROPERTIES = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def arrow_matrix(data: bytes, columns: int, dtype: np.dtype) -> np.ndarray | None:
    """Arrow's reading of the block, as arrow.CsvMatrix reads it (float64, cast), or None."""
    names = [f"c{index}" for index in range(columns)]
    try:
        table = pcsv.read_csv(
            pa.py_buffer(data),
            read_options=pcsv.ReadOptions(column_names=names, use_threads=False),
            parse_options=pcsv.ParseOptions(
                quote_char=False, double_quote=False, escape_char=False, ignore_empty_lines=True
            ),
            convert_options=pcsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.float64()), null_values=[], strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid:
        return None
    if table.num_rows == 0:
        return None
    return np.column_stack([table.column(name).to_numpy() for name in names]).astype(dtype)


def same_bits(left: np.ndarray, right: np.ndarray) -> bool:
    return left.shape == right.shape and left.dtype == right.dtype and left.tobytes() == right.tobytes()


def test_the_parser_is_built_where_a_compiler_is() -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here: the install leaves the parser out and Arrow parses every block")
    assert numbers.AVAILABLE, "a C compiler is here but berth_serving._numbers was not built"


spellings = st.builds(
    lambda sign, whole, fraction, exponent: sign + whole + fraction + exponent,
    st.sampled_from(["", "-", "+"]),
    st.text("0123456789", max_size=21),
    st.one_of(st.just(""), st.text("0123456789", max_size=21).map(lambda digits: "." + digits)),
    st.one_of(
        st.just(""),
        st.builds(
            lambda e, sign, digits: e + sign + digits,
            st.sampled_from(["e", "E"]),
            st.sampled_from(["", "-", "+"]),
            st.text("0123456789", min_size=1, max_size=4),
        ),
    ),
).filter(lambda text: any(c.isdigit() for c in text.split("e")[0].split("E")[0]))


@needs_parser
@PROPERTIES
@given(
    rows=st.lists(st.lists(spellings, min_size=3, max_size=3), min_size=1, max_size=6),
    dtype=st.sampled_from([F32, F64]),
    line_end=st.sampled_from(["\n", "\r\n"]),
)
def test_where_it_answers_arrow_answers_the_same_bits(
    rows: list[list[str]], dtype: np.dtype, line_end: str
) -> None:
    data = line_end.join(",".join(row) for row in rows).encode() + line_end.encode()
    fast = numbers.parse_matrix(data, 3, dtype)
    if fast is None:
        return  # refused: Arrow decides, as before the C parser existed
    reference = arrow_matrix(data, 3, dtype)
    assert reference is not None, f"the C parser took what Arrow refuses: {data!r}"
    assert same_bits(fast, reference), (data, fast, reference)


@needs_parser
@PROPERTIES
@given(
    values=st.lists(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False).filter(
            lambda value: value == 0 or abs(value) >= 1e-6  # features, not 3e-257
        ),
        min_size=8,
        max_size=64,
    ),
    decimals=st.integers(0, 9),
    scientific=st.booleans(),
)
def test_it_answers_what_writers_write(values: list[float], decimals: int, scientific: bool) -> None:
    """numpy's savetxt, pandas' to_csv, csv.writer: fixed or exponent notation, up to 17
    significant digits (repr) — the plain case, which must not fall through to Arrow."""
    spelled = [f"{v:.{decimals}e}" if scientific else f"{v:.{decimals}f}" for v in values]
    spelled[0] = repr(values[0])  # shortest round-trip spelling
    data = ("\n".join(",".join(spelled[i : i + 4]) for i in range(0, len(spelled) - 3, 4)) + "\n").encode()
    fast = numbers.parse_matrix(data, 4, F32)
    reference = arrow_matrix(data, 4, F32)
    assert reference is not None
    if fast is None:
        # Only a number beyond the exact fast path may refuse it: over 19 significant digits, or
        # a mantissa over 2**53, or a power of ten over 22 either way.
        digits = [s.lstrip("+-").split("e")[0].replace(".", "").lstrip("0") for s in spelled]
        assert any(len(d) > 15 for d in digits), f"refused a plain block: {data!r}"
        return
    assert same_bits(fast, reference)


@needs_parser
def test_plain_blocks_shapes_and_line_ends() -> None:
    data = b"1.5,-2,3e2\r\n\n\r\n-0,+4.,.25\n7,8,9"  # CRLF, blank lines, no final newline
    fast = numbers.parse_matrix(data, 3, F64)
    assert fast is not None
    assert fast.tolist() == [[1.5, -2.0, 300.0], [-0.0, 4.0, 0.25], [7.0, 8.0, 9.0]]
    assert np.signbit(fast[1, 0])
    assert same_bits(fast, arrow_matrix(data, 3, F64))
    float16 = numbers.parse_matrix(b"1.5,2\n", 2, np.dtype(np.float16))
    assert float16 is not None and float16.dtype == np.float16 and float16.tolist() == [[1.5, 2.0]]


@needs_parser
@pytest.mark.parametrize(
    "data",
    [
        b"nan,1,2\n",  # Arrow's rules for nan and inf
        b"inf,1,2\n",
        b" 1,2,3\n",  # spaces
        b"1,2 ,3\n",
        b'"1",2,3\n',  # quotes
        b"1,,3\n",  # an empty field
        b"1,2\n",  # too few columns
        b"1,2,3,4\n",  # too many
        b"1,2,3,\n",  # a trailing comma
        b"1,2,3\n4,5\n",  # a short row after a good one
        b"1,2,3x\n",
        b"1,2,-\n",
        b"1,2,.\n",
        b"1,2,1e\n",
        b"1,2,1e+\n",
        b"1,2,3\r4,5,6\n",  # a lone CR: Arrow's line break, not ours
        b"12345678901234567890,1,2\n",  # 20 significant digits: beyond the exact path
        b"9007199254740993,1,2\n",  # over 2**53
        b"1e23,1,2\n",  # a power of ten over 22
        b"1e-23,1,2\n",
        b"1e99999999999999999999,1,2\n",  # an exponent of 20 digits: bounded, refused
        b"",
        b"\n\n",
    ],
)
def test_anything_else_is_refused_for_arrow(data: bytes) -> None:
    assert numbers.parse_matrix(data, 3, F32) is None


@needs_parser
@pytest.mark.parametrize(
    "data",
    [b"[1,2,3\n", b"1,2,3]\n", b"[[1,2,3]]\n", b"[]\n", b"[1,2,3] \n", b"[1, 2, 3]\n", b'["1",2,3]\n'],
)
def test_json_arrays_that_are_not_flat_numbers_are_refused(data: bytes) -> None:
    assert numbers.parse_matrix(data, 3, F64, bracketed=True) is None


@needs_parser
def test_json_arrays() -> None:
    data = b"[1.5,-2,3e-2]\n\n[0,0.5,1]\r\n"
    fast = numbers.parse_matrix(data, 3, F64, bracketed=True)
    assert fast is not None and fast.tolist() == [[1.5, -2.0, 0.03], [0.0, 0.5, 1.0]]
    assert numbers.parse_matrix(b"[7]\n", 1, F64, bracketed=True).tolist() == [[7.0]]


@needs_parser
def test_a_huge_line_is_linear_and_the_gil_is_free_meanwhile() -> None:
    """16 MiB of one number's digits: refused (over 19 significant digits) at the 20th digit;
    16 MiB of plain rows parsed while another thread keeps running."""
    assert numbers.parse_matrix(b"1" * (16 << 20) + b",1,2\n", 3, F32) is None
    row = b",".join([b"-12.3456"] * 256) + b"\n"
    data = row * ((16 << 20) // len(row))
    ticks = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.0005)

    ticker = threading.Thread(target=count)
    ticker.start()
    try:
        started = time.perf_counter()
        matrix = numbers.parse_matrix(data, 256, F32)
        seconds = time.perf_counter() - started
    finally:
        stop.set()
        ticker.join()
    assert matrix is not None and matrix.shape == (len(data) // len(row), 256)
    assert float(matrix[-1, -1]) == np.float32(-12.3456)
    if seconds > 0.05:  # long enough for the other thread to have run, if the GIL was let go
        assert ticks > 10, (seconds, ticks)


@PROPERTIES
@given(data=st.binary(max_size=300) | st.lists(st.sampled_from([b"\n", b"1,2", b"\r\n", b""])).map(b"".join))
def test_newlines_counts_what_bytes_count_counts(data: bytes) -> None:
    """The reader's line count (memchr in C where built, bytes.count otherwise), also of views."""
    assert numbers.newlines(data) == data.count(b"\n")
    if numbers.AVAILABLE:
        assert numbers.newlines(memoryview(data)[1:]) == data[1:].count(b"\n")  # type: ignore[arg-type]


def both_parsers(data: bytes, columns: int, bracketed: bool, wide: bool) -> tuple[Any, Any]:
    """The block through the chosen (AVX2) parser and the scalar one: (rows, matrix) each."""
    from berth_serving import _numbers  # type: ignore[attr-defined]

    answers = []
    for scalar in (False, True):
        out = np.full((data.count(b"\n") + 1, columns), 7.0, np.float64 if wide else np.float32)
        rows = _numbers.parse(data, columns, bracketed, wide, out, scalar)
        answers.append((rows, out[: max(rows, 0)].tobytes()))
    return answers[0], answers[1]


fields = st.one_of(
    spellings,
    # around the 16 bytes the vector path takes a field in, and what it must hand on
    st.builds(
        lambda sign, digits, cut: sign + digits[:cut] + "." + digits[cut:],
        st.sampled_from(["", "-", "+"]),
        st.text("0123456789", min_size=1, max_size=19),
        st.integers(0, 19),
    ),
    st.sampled_from(
        ["", ".", "-", "+", "1.2.3", "1-2", "--1", " 1", "1 ", "nan", "0x1", "\u0661", "1e", "9" * 16]
    ),
)


@needs_parser
@PROPERTIES
@given(
    rows=st.lists(st.lists(fields, min_size=1, max_size=6), min_size=1, max_size=5),
    columns=st.integers(1, 6),
    line_end=st.sampled_from(["\n", "\r\n"]),
    bracketed=st.booleans(),
    wide=st.booleans(),
    trailing_newline=st.booleans(),
)
def test_the_vector_parser_is_the_scalar_one_bit_for_bit(
    rows: list[list[str]], columns: int, line_end: str, bracketed: bool, wide: bool, trailing_newline: bool
) -> None:
    """Every answer and every refusal the same, wherever the block ends (the vector path reads
    32 bytes at a time and hands the block's last ones to a byte loop)."""
    from berth_serving import _numbers  # type: ignore[attr-defined]

    if not _numbers.AVX2:
        pytest.skip("this CPU has no AVX2: the scalar parser is the only one")
    lines = [",".join(row) for row in rows]
    if bracketed:
        lines = [f"[{line}]" for line in lines]
    data = line_end.join(lines).encode() + (line_end.encode() if trailing_newline else b"")
    chosen, scalar = both_parsers(data, columns, bracketed, wide)
    assert chosen == scalar, data
    padded = b"0," * 40 + data  # the same lines, now past the first 32-byte chunks too
    chosen, scalar = both_parsers(padded, columns, bracketed, wide)
    assert chosen == scalar, padded


@needs_parser
def test_the_vector_parser_takes_the_plain_case() -> None:
    """The benchmark's kind of block: the AVX2 path must answer it, not leave it to Arrow."""
    values = np.random.default_rng(5).normal(size=(300, 256)).round(4)
    data = ("\n".join(",".join(f"{value:.4f}" for value in row) for row in values) + "\n").encode()
    chosen, scalar = both_parsers(data, 256, False, False)
    assert chosen[0] == 300 and chosen == scalar
    assert same_bits(np.frombuffer(chosen[1], np.float32).reshape(300, 256), values.astype(np.float32))
