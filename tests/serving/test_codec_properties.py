"""Property-based: whatever a client sends through any codec (JSON instances and inputs, CSV,
NPY, v2 JSON, v2 binary), a real server answers either exactly what raw ONNX Runtime answers
for those rows, or a 4xx; never a 5xx and never a different value. The oracle is independent
of the server: this file decides by itself, in plain Python, whether each generated value
fits the model's dtype, and then demands a 200 with ORT's answer, or a 400.

Examples are bounded (max_examples, no deadline: the machine is shared) to keep the whole
file at a few seconds per test."""

from __future__ import annotations

import http.client
import io
import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.serving import models
from tests.serving.support import ThreadedServer, serving

pytestmark = [
    pytest.mark.timeout(300),
    # The server silences numpy's overflow warnings (it checks overflow itself); pytest restores them.
    pytest.mark.filterwarnings("ignore::RuntimeWarning:berth_serving.tensors"),
]

PROPERTIES = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# The typed model's inputs: name -> numpy dtype.
DTYPES = {
    "i8": np.dtype(np.int8),
    "u8": np.dtype(np.uint8),
    "i64": np.dtype(np.int64),
    "u64": np.dtype(np.uint64),
    "f16": np.dtype(np.float16),
    "f32": np.dtype(np.float32),
    "flag": np.dtype(np.bool_),
}
V2_NAMES = {
    "i8": "INT8",
    "u8": "UINT8",
    "i64": "INT64",
    "u64": "UINT64",
    "f16": "FP16",
    "f32": "FP32",
    "flag": "BOOL",
}


class Client:
    """One keep-alive connection: a few hundred requests stay fast."""

    def __init__(self, server: ThreadedServer) -> None:
        self.server = server
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        try:
            self.connection.request("POST", path, body=body, headers=headers)
            answer = self.connection.getresponse()
        except (http.client.HTTPException, OSError):
            self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
            self.connection.request("POST", path, body=body, headers=headers)
            answer = self.connection.getresponse()
        data = answer.read()
        if answer.getheader("connection", "").lower() == "close":
            self.connection.close()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, data


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("property-models")
    return {
        "typed": models.build_typed(root / "typed.onnx"),
        "rows": models.build_anonymous_rows(root / "rows.onnx"),
    }


@pytest.fixture(scope="module")
def typed(built: dict[str, Path]) -> Iterator[tuple[Client, ort.InferenceSession]]:
    with serving(built["typed"], max_payload_bytes=256 * 1024) as server:
        yield Client(server), ort.InferenceSession(str(built["typed"]), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def rows_model(built: dict[str, Path]) -> Iterator[tuple[Client, ort.InferenceSession]]:
    with serving(built["rows"], max_payload_bytes=256 * 1024) as server:
        yield Client(server), ort.InferenceSession(str(built["rows"]), providers=["CPUExecutionProvider"])


# --- the oracle: does a value fit a dtype, and as what ----------------------------------------------

JSON_INT_RANGE = (-(2**63), 2**64 - 1)  # what a JSON parser keeps as an integer; beyond, a float


def fits(value: Any, dtype: np.dtype[Any]) -> bool:
    """Whether a JSON value fits `dtype` exactly, decided without numpy's casting rules."""
    if isinstance(value, bool):
        return True  # booleans are 0/1 in numbers, and feed booleans
    if dtype.kind == "b":
        return False
    if isinstance(value, int) and not (JSON_INT_RANGE[0] <= value <= JSON_INT_RANGE[1]):
        value = float(value)  # what the server's JSON parser makes of it
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if isinstance(value, float):
            return (
                math.isfinite(value)
                and value.is_integer()
                and abs(value) <= 2**53
                and info.min <= value <= info.max
            )
        return info.min <= value <= info.max
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.asarray(float(value), dtype=np.float64).astype(dtype)))


def exact(values: list[Any], dtype: np.dtype[Any]) -> np.ndarray:
    """The array the model must see for values that fit."""
    if dtype.kind in "iu":
        return np.array([int(v) for v in values], dtype=dtype)
    if dtype.kind == "b":
        return np.array(values, dtype=dtype)
    with np.errstate(over="ignore"):
        return np.array([float(v) for v in values], dtype=np.float64).astype(dtype)


def json_values(dtype: np.dtype[Any]) -> st.SearchStrategy[Any]:
    """Values around and beyond the dtype's limits, and of the wrong kind."""
    near: list[st.SearchStrategy[Any]] = [st.booleans(), st.integers(-(2**70), 2**70)]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        near += [
            st.integers(int(info.min) - 3, int(info.min) + 3),
            st.integers(int(info.max) - 3, int(info.max) + 3),
            st.integers(int(info.min), int(info.max)),
            st.floats(-1e6, 1e6).map(lambda v: float(round(v))),
        ]
    if dtype.kind == "f":
        largest = float(np.finfo(dtype).max)
        near += [st.floats(-largest * 1.01, largest * 1.01), st.floats(-1e6, 1e6)]
    near += [st.floats(allow_nan=False, allow_infinity=False)]
    return st.one_of(near)


def answered(body: bytes) -> dict[str, Any]:
    document = orjson.loads(body)
    return document["outputs"] if "outputs" in document else {"y": document["predictions"]}


def assert_client_error(status: int, body: bytes) -> None:
    event(f"refused with {status}")
    assert 400 <= status < 500, (status, body)
    error = orjson.loads(body)["error"]
    message = error if isinstance(error, str) else error["message"]
    assert message and "Traceback" not in message


# --- JSON {"inputs": {...}} over every dtype ----------------------------------------------------------


def valid_values(dtype: np.dtype[Any]) -> st.SearchStrategy[Any]:
    if dtype.kind == "b":
        return st.booleans()
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return st.one_of(
            st.integers(int(info.min), int(info.max)), st.sampled_from([int(info.min), int(info.max)])
        )
    return st.floats(-1e4, 1e4)


@st.composite
def typed_columns(draw: st.DrawFn) -> dict[str, list[Any]]:
    """Valid columns for every input; half the time one cell replaced by anything at all."""
    count = draw(st.integers(1, 4))
    columns = {
        name: draw(st.lists(valid_values(dtype), min_size=count, max_size=count))
        for name, dtype in DTYPES.items()
    }
    if draw(st.booleans()):
        name = draw(st.sampled_from(list(DTYPES)))
        columns[name][draw(st.integers(0, count - 1))] = draw(json_values(DTYPES[name]))
    return columns


@st.composite
def grids(draw: st.DrawFn, valid: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> list[list[Any]]:
    """Rows of 4 valid cells; half the time one cell replaced by a wild one, and now and then
    a row one cell short or long."""
    rows = draw(st.lists(st.lists(valid, min_size=4, max_size=4), min_size=1, max_size=4))
    if draw(st.booleans()):
        rows[draw(st.integers(0, len(rows) - 1))][draw(st.integers(0, 3))] = draw(wild)
    if draw(st.integers(0, 5)) == 0:
        row = rows[draw(st.integers(0, len(rows) - 1))]
        if draw(st.booleans()):
            row.append(draw(valid))
        else:
            row.pop()
    return rows


@PROPERTIES
@given(columns=typed_columns())
def test_json_inputs_are_exact_or_refused(
    typed: tuple[Client, ort.InferenceSession], columns: dict[str, list[Any]]
) -> None:
    client, session = typed
    body = json.dumps({"inputs": {name: [[v] for v in values] for name, values in columns.items()}}).encode()
    status, _, answer = client.post("/invocations", body, {"Content-Type": "application/json"})
    if all(fits(v, DTYPES[name]) for name, values in columns.items() for v in values):
        assert status == 200, answer
        event("answered exactly")
        feed = {name: exact(values, DTYPES[name]).reshape(-1, 1) for name, values in columns.items()}
        got = answered(answer)
        for output, expected in zip(session.get_outputs(), session.run(None, feed), strict=True):
            np.testing.assert_array_equal(np.asarray(got[output.name], dtype=expected.dtype), expected)
    else:
        assert_client_error(status, answer)


# --- JSON instances and CSV on a float model ------------------------------------------------------------

CELLS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.floats(-10, 10),
    st.integers(-(2**40), 2**40),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)


def instance_number(value: Any) -> float | None:
    """What a JSON cell is for a float input: a number, null as NaN (a missing value), a
    string holding a number as that number; None when it is none of these."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return float(value)


@PROPERTIES
@given(rows=grids(st.one_of(st.floats(-1e6, 1e6), st.integers(-(2**31), 2**31)), CELLS))
@example(rows=[[1.13e38, 0, 0, 0]])  # fits float32, but the model's answer overflows to inf
def test_json_instances_are_exact_or_refused(
    rows_model: tuple[Client, ort.InferenceSession], rows: list[list[Any]]
) -> None:
    client, session = rows_model
    status, _, answer = client.post(
        "/invocations", json.dumps({"instances": rows}).encode(), {"Content-Type": "application/json"}
    )
    numbers = [[instance_number(v) for v in row] for row in rows]
    valid = all(len(row) == 4 and None not in row for row in numbers)
    if valid:
        source = np.array(numbers, dtype=np.float64)
        with np.errstate(over="ignore"):
            converted = source.astype(np.float32)
        valid = not (np.isinf(converted) & np.isfinite(source)).any()  # overflow is refused
    if valid:
        assert status == 200, answer
        event("answered exactly")
        expected = session.run(None, {"x": converted})[0]
        # JSON has no inf or nan: a non-finite answer (the model overflowing, e.g. 1.13e38 * 4)
        # is written null, whichever it was.
        expected = np.where(np.isfinite(expected), expected, np.float32(np.nan))
        got = [[math.nan if v is None else v for v in row] for row in answered(answer)["y"]]
        np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), expected)
    else:
        assert_client_error(status, answer)


CSV_CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(-100, 100).map(lambda v: f"{v:.4f}"),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e39", "-1e39", "", " ", "x", "0x10", "1,5"]),
)


def csv_number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


@PROPERTIES
@given(rows=grids(st.floats(-1e6, 1e6).map(repr), CSV_CELLS))
def test_csv_is_exact_or_refused(
    rows_model: tuple[Client, ort.InferenceSession], rows: list[list[str]]
) -> None:
    client, session = rows_model
    text = "\n".join(",".join(row) for row in rows) + "\n"
    status, headers, answer = client.post(
        "/invocations", text.encode(), {"Content-Type": "text/csv", "Accept": "text/csv"}
    )
    lines = [line for line in text.splitlines() if line.strip()]
    cells = [line.split(",") for line in lines]
    numbers = [[csv_number(cell) for cell in line] for line in cells]
    valid = bool(lines) and all(len(line) == 4 and None not in line for line in numbers)
    if valid:
        source = np.array(numbers, dtype=np.float64)
        with np.errstate(over="ignore"):
            converted = source.astype(np.float32)
        valid = not (np.isinf(converted) & np.isfinite(source)).any()  # overflow is refused
    if valid:
        assert status == 200, answer
        event("answered exactly")
        assert headers["content-type"] == "text/csv"
        expected = session.run(None, {"x": converted})[0]
        got = np.array(
            [[float(v) for v in line.split(",")] for line in answer.decode().splitlines()], dtype=np.float32
        )
        np.testing.assert_array_equal(got, expected)
    else:
        assert_client_error(status, answer)


# --- NPY ---------------------------------------------------------------------------------------------

NPY_DTYPES = st.sampled_from(
    [np.float16, np.float32, np.float64, np.int8, np.uint8, np.int32, np.int64, np.uint64, np.bool_]
)


@st.composite
def npy_arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(NPY_DTYPES))
    shape = draw(st.sampled_from([(1, 4), (3, 4), (4,), (2, 3), (2, 4, 1), (0, 4)]))
    return draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(dtype, allow_nan=True, allow_infinity=True)))


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@PROPERTIES
@given(array=npy_arrays(), cut=st.one_of(st.none(), st.integers(1, 40)))
def test_npy_is_exact_or_refused(
    rows_model: tuple[Client, ort.InferenceSession], array: np.ndarray, cut: int | None
) -> None:
    client, session = rows_model
    body = npy_bytes(array)
    if cut is not None:
        body = body[:-cut]  # a truncated body: the header no longer matches
    status, _, answer = client.post(
        "/invocations", body, {"Content-Type": "application/x-npy", "Accept": "application/x-npy"}
    )
    feed = array.reshape(1, 4) if array.shape == (4,) else array
    with np.errstate(over="ignore", invalid="ignore"):
        converted = feed.astype(np.float32)
    overflow = feed.dtype.kind == "f" and bool((np.isinf(converted) & np.isfinite(feed)).any())
    valid = cut is None and feed.ndim == 2 and feed.shape[1] == 4 and feed.shape[0] > 0 and not overflow
    if valid:
        assert status == 200, answer
        event("answered exactly")
        np.testing.assert_array_equal(np.load(io.BytesIO(answer)), session.run(None, {"x": converted})[0])
    else:
        assert_client_error(status, answer)


# --- v2 JSON and v2 binary ------------------------------------------------------------------------------


@PROPERTIES
@given(columns=typed_columns(), extra_value=st.booleans())
def test_v2_json_is_exact_or_refused(
    typed: tuple[Client, ort.InferenceSession], columns: dict[str, list[Any]], extra_value: bool
) -> None:
    client, session = typed
    tensors = [
        {"name": name, "datatype": V2_NAMES[name], "shape": [len(values), 1], "data": values}
        for name, values in columns.items()
    ]
    if extra_value:
        tensors[0]["data"] = [*tensors[0]["data"], 1]  # more data than the shape holds
    status, _, answer = client.post(
        "/v2/models/typed/infer",
        json.dumps({"inputs": tensors}).encode(),
        {"Content-Type": "application/json"},
    )
    valid = not extra_value and all(fits(v, DTYPES[name]) for name, values in columns.items() for v in values)
    if valid:
        assert status == 200, answer
        event("answered exactly")
        feed = {name: exact(values, DTYPES[name]).reshape(-1, 1) for name, values in columns.items()}
        got = {output["name"]: output for output in orjson.loads(answer)["outputs"]}
        for output, expected in zip(session.get_outputs(), session.run(None, feed), strict=True):
            assert got[output.name]["shape"] == list(expected.shape)
            np.testing.assert_array_equal(
                np.asarray(got[output.name]["data"], dtype=expected.dtype).reshape(expected.shape), expected
            )
    else:
        assert_client_error(status, answer)


@st.composite
def typed_arrays(draw: st.DrawFn) -> dict[str, np.ndarray]:
    count = draw(st.integers(1, 4))
    return {
        name: draw(
            hnp.arrays(dtype, (count, 1), elements=hnp.from_dtype(dtype, allow_nan=True, allow_infinity=True))
        )
        for name, dtype in DTYPES.items()
    }


@PROPERTIES
@given(arrays=typed_arrays(), skew=st.sampled_from([0, 0, 0, -1, 1, 7]), binary_out=st.booleans())
def test_v2_binary_is_exact_or_refused(
    typed: tuple[Client, ort.InferenceSession], arrays: dict[str, np.ndarray], skew: int, binary_out: bool
) -> None:
    client, session = typed
    blobs = [np.ascontiguousarray(array).tobytes() for array in arrays.values()]
    tensors = [
        {
            "name": name,
            "datatype": V2_NAMES[name],
            "shape": list(array.shape),
            "parameters": {"binary_data_size": len(blob)},
        }
        for (name, array), blob in zip(arrays.items(), blobs, strict=True)
    ]
    tensors[-1]["parameters"]["binary_data_size"] = max(0, len(blobs[-1]) + skew)  # sizes that do not add up
    header = orjson.dumps({"inputs": tensors, "parameters": {"binary_data_output": binary_out}})
    status, headers, answer = client.post(
        "/v2/models/typed/infer",
        header + b"".join(blobs),
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
    )
    if skew == 0:
        assert status == 200, answer
        event("answered exactly")
        json_length = int(headers.get("inference-header-content-length", len(answer)))
        document = orjson.loads(answer[:json_length])
        offset = json_length
        expected_outputs = dict(
            zip([o.name for o in session.get_outputs()], session.run(None, arrays), strict=True)
        )
        for output in document["outputs"]:
            expected = expected_outputs[output["name"]]
            if binary_out:
                size = output["parameters"]["binary_data_size"]
                got = np.frombuffer(answer[offset : offset + size], dtype=expected.dtype).reshape(
                    output["shape"]
                )
                offset += size
                np.testing.assert_array_equal(got, expected)
            else:
                values = [math.nan if v is None else v for v in output["data"]]  # JSON writes NaN/inf as null
                finite = (
                    np.isfinite(expected)
                    if expected.dtype.kind == "f"
                    else np.ones(expected.shape, dtype=bool)
                )
                np.testing.assert_array_equal(
                    np.asarray(values, dtype=expected.dtype).reshape(expected.shape)[finite], expected[finite]
                )
    else:
        assert_client_error(status, answer)


def test_the_oracle_agrees_with_itself() -> None:
    """The hand-written oracle on the cases the brief names."""
    assert not fits(300, DTYPES["i8"]) and not fits(-1, DTYPES["u8"])
    assert (
        not fits(2**63, DTYPES["i64"]) and fits(2**64 - 1, DTYPES["u64"]) and not fits(2**64, DTYPES["u64"])
    )
    assert not fits(1e39, DTYPES["f32"]) and not fits(0.1, DTYPES["i64"]) and fits(3.0, DTYPES["i64"])
    assert struct.calcsize("<I") == 4
