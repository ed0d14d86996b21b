"""The C reader of JSON rows (numbers.json_rows), which codecs tries before orjson: wherever it
answers, orjson and tensors.to_dtype must answer the very same bits; whatever it refuses goes
to orjson, so a refusal is never an error of its own, and an answer is never given for a body
orjson would refuse. Adversarial bodies (huge, unclosed, NUL bytes, deep nesting) are refused
in time linear in their size."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from berth_serving import codecs, numbers
from berth_serving.errors import HTTPError
from berth_serving.signature import Signature
from berth_serving.tensors import ValueMismatch, to_dtype
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving.models import build_mlp

needs_parser = pytest.mark.skipif(not numbers.AVAILABLE, reason="_numbers not built (no C compiler)")
pytestmark = needs_parser
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
PROPERTIES = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(body: bytes, dtype: np.dtype[Any]) -> np.ndarray | None:
    """What orjson and to_dtype make of the body's rows, or None where either refuses."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    rows = document.get("instances") if isinstance(document, dict) else document
    if not isinstance(rows, list):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return to_dtype(rows, dtype)
    except ValueMismatch:
        return None


# Numbers as clients spell them, JSON's grammar or not: signs, leading zeros, bare dots,
# exponents, many digits, and words.
digits = st.text("0123456789", max_size=22)
numbers_text = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda x: f"{x:.6g}"),
    st.integers(-(2**70), 2**70).map(str),
    st.builds(
        lambda sign, whole, fraction, exponent: sign + whole + fraction + exponent,
        st.sampled_from(["", "-", "+"]),
        digits,
        st.one_of(st.just(""), digits.map(lambda d: "." + d)),
        st.one_of(
            st.just(""),
            st.builds("{}{}{}".format, st.sampled_from("eE"), st.sampled_from(["", "+", "-"]), digits),
        ),
    ),
    st.sampled_from(["NaN", "Infinity", "-0", "0", "-0.0", "true", "null", '"1"', "1e400", "1e-400"]),
)
space = st.sampled_from(["", " ", "\n", "\t", "\r\n", "  "])


@st.composite
def bodies(draw: Any) -> bytes:
    width = draw(st.integers(1, 5))
    ragged = draw(st.booleans()) and draw(st.booleans())
    rows = []
    for _ in range(draw(st.integers(1, 4))):
        count = draw(st.integers(0, 6)) if ragged else width
        cells = [draw(space) + draw(numbers_text) + draw(space) for _ in range(count)]
        rows.append(draw(space) + "[" + ",".join(cells) + "]" + draw(space))
    matrix = "[" + ",".join(rows) + "]"
    shape = draw(st.sampled_from(["object", "list", "object+key", "flat"]))
    if shape == "object":
        text = (
            "{" + draw(space) + '"instances"' + draw(space) + ":" + draw(space) + matrix + draw(space) + "}"
        )
    elif shape == "object+key":
        text = '{"instances": ' + matrix + ', "other": 1}'
    elif shape == "flat":
        text = '{"instances": [' + ",".join(draw(numbers_text) for _ in range(width)) + "]}"
    else:
        text = matrix
    return (draw(space) + text + draw(space)).encode()


@PROPERTIES
@given(body=bodies(), dtype=st.sampled_from([F32, F64]))
def test_where_it_answers_orjson_answers_the_same_bits(body: bytes, dtype: np.dtype[Any]) -> None:
    fast = numbers.json_rows(body, dtype)
    if fast is None:
        return
    expected = reference(body, dtype)
    assert expected is not None, f"answered a body orjson or to_dtype refuses: {body!r}"
    assert fast.dtype == expected.dtype and fast.shape == expected.shape
    assert fast.tobytes() == expected.tobytes(), body


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[0.1257, -0.1321, 0.6404]]}',
        b'{"instances":[[1,2],[3,4]]}',
        b"[[1e5, -2.5E-3, 0, -0.0, -0e0]]",
        b'\r\n { "instances" :\t[ [ 1 ] , [ 2 ] ] }\n',
        b"[[" + b",".join(b"0.%04d" % i for i in range(256)) + b"]]",
    ],
)
def test_it_answers_the_usual_bodies(body: bytes, dtype: np.dtype[Any]) -> None:
    fast = numbers.json_rows(body, dtype)
    expected = reference(body, dtype)
    assert fast is not None and expected is not None
    assert fast.tobytes() == expected.tobytes() and fast.shape == expected.shape


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[1, 2], [3]]}',  # ragged
        b'{"instances": [1, 2, 3]}',  # one row without its batch dimension: orjson's path shapes it
        b"[[[1]]]",  # deeper
        b"[]",
        b"[[]]",
        b"[[1,]]",
        b"[[1 2]]",
        b"[[+1]]",
        b"[[01]]",
        b"[[1.]]",
        b"[[.5]]",
        b"[[-]]",
        b"[[1.e5]]",
        b"[[-0]]",  # orjson reads the integer 0, not -0.0
        b"[[NaN]]",
        b"[[Infinity]]",
        b'[["1"]]',
        b"[[true]]",
        b"[[null]]",
        b"[[1e23]]",  # past the exact powers of ten: orjson rounds it
        b"[[12345678901234567890]]",  # 20 digits
        b"[[9007199254740993]]",  # above 2**53
        b"[[1]] x",
        b"[[1]]\x00",
        b"[[1\x00]]",
        b'{"instances": [[1]], "other": 1}',
        b'{"other": 1, "instances": [[1]]}',
        b'{"instances": [[1]]',
        b'{"inputs": [[1]]}',
        b'{"instances" [[1]]}',
        b'{"instan\\u0063es": [[1]]}',
        b"\xef\xbb\xbf[[1]]",  # a byte-order mark
        b"",
    ],
)
def test_anything_else_is_refused_for_orjson(body: bytes) -> None:
    assert numbers.json_rows(body, F32) is None
    assert numbers.json_rows(body, F64) is None


def test_other_dtypes_and_buffers_are_refused() -> None:
    assert numbers.json_rows(b"[[1]]", np.dtype(np.int64)) is None
    assert numbers.json_rows(b"[[1]]", np.dtype(np.float16)) is None
    assert numbers.json_rows(bytearray(b"[[1]]"), F32) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body",
    [
        b"[[" + b"1," * 3_000_000 + b"1]]",  # 6 MB, one row: answered
        b"[[" + b"1," * 3_000_000,  # unclosed: refused at the end
        b"[" * 3_000_000,  # deep nesting: refused at the third byte
        b"[[1]" + b",[1]" * 1_500_000 + b"]",  # 1.5 million rows
    ],
    ids=["wide", "unclosed", "nested", "tall"],
)
def test_huge_bodies_take_linear_time_and_bounded_memory(body: bytes) -> None:
    started = time.process_time()
    result = numbers.json_rows(body, F32)
    seconds = time.process_time() - started
    assert seconds < 1.0, f"{seconds:.2f} CPU-s for {len(body):,} bytes"
    if result is not None:
        assert result.nbytes <= 2 * len(body) + 4  # the buffer it fills holds len/2 + 1 floats
        assert result.shape in ((1, 3_000_001), (1_500_001, 1))


def test_the_server_decoder_takes_it_and_still_names_a_bad_body(tmp_path: Path) -> None:
    """codecs.decode: the fast answer for the usual body, orjson's checks for everything else."""
    import onnxruntime as ort

    model = build_mlp(tmp_path / "mlp.onnx", sizes=(4, 8, 2))
    signature = Signature.from_session(ort.InferenceSession(str(model)), model)
    values = codecs.decode(codecs.JSON, b'{"instances": [[1, 2, 3, 4.5]]}', signature)
    (name,) = values
    assert isinstance(values[name], np.ndarray) and values[name].tolist() == [[1.0, 2.0, 3.0, 4.5]]
    arrays, rows = signature.prepare(values)
    assert rows == 1 and arrays[name].dtype == F32
    with pytest.raises(HTTPError) as refused:
        codecs.decode(codecs.JSON, b'{"instances": [[1, 2, 3, 4.5]]', signature)
    assert refused.value.code == 400 and "not valid JSON" in refused.value.message
    three = codecs.decode(codecs.JSON, b'{"instances": [[1, 2, 3]]}', signature)
    with pytest.raises(Exception, match=r"expected input .*\[N,4\]"):
        signature.prepare(three)
