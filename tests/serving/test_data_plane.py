"""The data plane's promises, each against a real server: a client's mistake is a 4xx that
names what was expected (never a 500, never a silently different value), errors come in the
shape of the protocol asked (SageMaker or Open Inference Protocol), `Accept` is honoured or
refused, the answer headers, and v2 under an endpoint's names."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests.serving import models
from tests.serving.support import Response, ThreadedServer, request, serving
from tests.serving.test_server import error_of, npy, post

pytestmark = [
    pytest.mark.timeout(120),
    # The server silences numpy's overflow warnings (it checks overflow itself); pytest restores them.
    pytest.mark.filterwarnings("ignore::RuntimeWarning:berth_serving.tensors"),
]


def v2_error_of(response: Response) -> str:
    """The Open Inference Protocol's error shape: {"error": "message"}."""
    document = orjson.loads(response.body)
    assert set(document) == {"error"}, document
    assert isinstance(document["error"], str), document
    assert "Traceback" not in document["error"]
    return document["error"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def typed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.build_typed(tmp_path_factory.mktemp("typed") / "typed.onnx")


@pytest.fixture(scope="module")
def typed(typed_model: Path) -> Iterator[ThreadedServer]:
    with serving(typed_model) as server:
        yield server


VALID = {
    "i8": [[1]],
    "u8": [[2]],
    "i64": [[3]],
    "u64": [[4]],
    "f16": [[0.5]],
    "f32": [[1.5]],
    "flag": [[True]],
}
V2_TYPES = {
    "i8": "INT8",
    "u8": "UINT8",
    "i64": "INT64",
    "u64": "UINT64",
    "f16": "FP16",
    "f32": "FP32",
    "flag": "BOOL",
}


def invoke(server: ThreadedServer, **changes: Any) -> Response:
    # The standard library writes integers of any size (orjson stops at 64 bits).
    return post(server.url + "/invocations", json.dumps({"inputs": {**VALID, **changes}}).encode())


def v2_tensors(**changes: Any) -> list[dict[str, Any]]:
    """Every input of the typed model as v2 JSON tensors; `changes` replaces fields by name."""
    tensors = []
    for name, value in VALID.items():
        tensor = {"name": name, "shape": [1, 1], "datatype": V2_TYPES[name], "data": [value[0][0]]}
        tensor.update(changes.get(name, {}))
        tensors.append(tensor)
    return tensors


def v2_infer(server: ThreadedServer, document: Any, model: str = "typed", **headers: str) -> Response:
    return post(server.url + f"/v2/models/{model}/infer", json.dumps(document).encode(), **headers)


# --- values the model's dtype cannot hold --------------------------------------------------------


def test_valid_values_of_every_dtype_come_back_exactly(typed: ThreadedServer) -> None:
    edges = {
        "i8": [[-128], [127]],
        "u8": [[0], [255]],
        "i64": [[-(2**63)], [2**63 - 1]],
        "u64": [[0], [2**64 - 1]],
    }
    edges |= {"f16": [[65504.0], [-0.25]], "f32": [[3.4e38], [-1e-30]], "flag": [[True], [False]]}
    answer = post(typed.url + "/invocations", orjson.dumps({"inputs": edges}))
    assert answer.status == 200, answer.body
    outputs = orjson.loads(answer.body)["outputs"]
    for name, value in edges.items():
        expected = np.asarray(value, dtype=np.float32) if name == "f32" else np.asarray(value)
        np.testing.assert_array_equal(np.asarray(outputs[f"{name}_out"], dtype=expected.dtype), expected)
    assert outputs["u64_out"] == [[0], [2**64 - 1]]
    # Booleans beside integers numpy can only hold as floats (found by the property suite).
    three_rows = {name: [value[0]] * 3 for name, value in edges.items()}
    mixed = post(
        typed.url + "/invocations", orjson.dumps({"inputs": {**three_rows, "u64": [[False], [0], [2**63]]}})
    )
    assert mixed.status == 200, mixed.body
    assert orjson.loads(mixed.body)["outputs"]["u64_out"] == [[0], [0], [2**63]]
    # A float beside an integer float64 would round (2**53 + 1): kept exact, not off by one.
    beside = post(
        typed.url + "/invocations", orjson.dumps({"inputs": {**three_rows, "i64": [[0.0], [1], [2**53 + 1]]}})
    )
    assert beside.status == 200, beside.body
    assert orjson.loads(beside.body)["outputs"]["i64_out"] == [[0], [1], [2**53 + 1]]
    assert outputs["i64_out"] == [[-(2**63)], [2**63 - 1]]


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("i8", 300, "300 is out of range for int8 (-128..127)"),
        ("u8", -1, "-1 is out of range for uint8 (0..255)"),
        ("i64", 2**63, "9223372036854775808 is out of range for int64"),
        ("u64", 2**64, "not an exact integer"),  # JSON parsers read 2**64 as a float
        ("u64", -1, "-1 is out of range for uint64"),
        ("i64", 0.1, "whole numbers only, got 0.1"),
        ("f32", 1e39, "1e+39 is out of range for float32"),
        ("f16", 70000, "70000 is out of range for float16"),
        ("flag", 1, "true/false only"),
        ("f32", "x", "not a regular numeric array"),
    ],
)
def test_out_of_range_json_values_are_400s_naming_the_signature(
    typed: ThreadedServer, name: str, value: Any, says: str
) -> None:
    answer = invoke(typed, **{name: [[value]]})
    assert answer.status == 400, answer.body
    message = error_of(answer)["message"]
    assert says in message
    assert f"input {name!r}: " in message
    assert "expected inputs 'i8' int8[N,1], 'u8' uint8[N,1]" in message


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("i8", 300, "300 is out of range for int8"),
        ("u8", -1, "-1 is out of range for uint8"),
        ("i64", 2**63, "out of range for int64"),
        ("f32", 1e39, "out of range for float32"),
        ("i64", 0.5, "whole numbers only"),
    ],
)
def test_out_of_range_v2_values_are_400s(typed: ThreadedServer, name: str, value: Any, says: str) -> None:
    answer = v2_infer(typed, {"inputs": v2_tensors(**{name: {"data": [value]}})})
    assert answer.status == 400, answer.body
    assert says in v2_error_of(answer)


def test_nan_and_infinity(onnx_models) -> None:  # type: ignore[no-untyped-def]
    """JSON has no NaN: a NaN token is a 400. CSV and NPY carry NaN/inf to the model as sent,
    and a JSON answer writes them as null."""
    with serving(onnx_models.identity) as server:
        nan_json = post(server.url + "/invocations", b"[[NaN" + b",1" * 15 + b"]]")
        assert nan_json.status == 400 and "not valid JSON" in error_of(nan_json)["message"]
        csv = post(server.url + "/invocations", b"nan,inf,-inf" + b",1" * 13 + b"\n", "text/csv")
        assert csv.status == 200, csv.body
        assert orjson.loads(csv.body)["predictions"][0][:4] == [None, None, None, 1.0]
        as_npy = post(
            server.url + "/invocations",
            npy(np.array([[np.nan] * 16])),
            "application/x-npy",
            Accept="application/x-npy",
        )
        assert as_npy.status == 200
        assert np.isnan(np.load(io.BytesIO(as_npy.body))).all()
        overflow = post(server.url + "/invocations", npy(np.array([[1e300] * 16])), "application/x-npy")
        assert overflow.status == 400
        assert "out of range for float32" in error_of(overflow)["message"]


# --- malformed bodies ------------------------------------------------------------------------------


def test_npy_header_claiming_more_than_the_body_is_a_400_without_allocating(onnx_models) -> None:  # type: ignore[no-untyped-def]
    with serving(onnx_models.identity) as server:
        huge = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            huge, {"descr": "<f4", "fortran_order": False, "shape": (99999999999, 4)}
        )
        answer = post(server.url + "/invocations", huge.getvalue() + b"\0" * 64, "application/x-npy")
        assert answer.status == 400
        message = error_of(answer)["message"]
        assert "(99999999999, 4)" in message and "64 bytes" in message
        short = npy(np.ones((2, 16), dtype=np.float32))[:-4]
        assert post(server.url + "/invocations", short, "application/x-npy").status == 400
        objects = io.BytesIO()
        np.lib.format.write_array_header_1_0(objects, {"descr": "|O", "fortran_order": False, "shape": (1,)})
        answer = post(server.url + "/invocations", objects.getvalue() + b"\0" * 8, "application/x-npy")
        assert answer.status == 400
        fortran = np.asfortranarray(np.arange(32, dtype=np.float32).reshape(2, 16))
        answer = post(
            server.url + "/invocations", npy(fortran), "application/x-npy", Accept="application/x-npy"
        )
        assert answer.status == 200
        np.testing.assert_array_equal(np.load(io.BytesIO(answer.body)), fortran)


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ({"inputs": [{"name": 7, "shape": [1], "datatype": "INT8", "data": [1]}]}, '"name"'),
        ({"inputs": [{"name": "i8", "shape": [True], "datatype": "INT8", "data": [1]}]}, "shape"),
        ({"inputs": [{"name": "i8", "shape": [1], "datatype": 8, "data": [1]}]}, "datatype"),
        ({"inputs": [{"name": "i8", "shape": [1], "datatype": "INT9", "data": [1]}]}, "INT9"),
        ({"inputs": v2_tensors(), "outputs": "i8_out"}, '"outputs"'),
        ({"inputs": v2_tensors(), "outputs": ["i8_out"]}, '"outputs"'),
        ({"inputs": v2_tensors(), "outputs": [{"name": 3}]}, '"name"'),
        ({"inputs": v2_tensors(), "outputs": [{"name": "i8_out", "parameters": [1]}]}, '"parameters"'),
        ({"inputs": v2_tensors(), "parameters": "binary"}, '"parameters"'),
        ({"inputs": v2_tensors(), "id": 5}, '"id"'),
        ({"inputs": v2_tensors(i8={"parameters": {"binary_data_size": "1"}})}, "binary_data_size"),
        ({"inputs": v2_tensors(i8={"parameters": {"binary_data_size": [1]}})}, "binary_data_size"),
        ({"inputs": v2_tensors(i8={"parameters": {"binary_data_size": -1}})}, "binary_data_size"),
        ({"inputs": v2_tensors(i8={"parameters": {"binary_data_size": True}})}, "binary_data_size"),
        ({"inputs": v2_tensors(i8={"parameters": 1})}, '"parameters"'),
        ({"inputs": v2_tensors(i8={"data": [1, 2]})}, "shape [1, 1]"),
        ({"inputs": [*v2_tensors(), v2_tensors()[0]]}, "twice"),
        ({"inputs": v2_tensors(), "outputs": [{"name": "nope"}]}, "unknown output 'nope'"),
    ],
)
def test_malformed_v2_requests_are_400s_saying_what_is_wrong(
    typed: ThreadedServer, document: Any, says: str
) -> None:
    answer = v2_infer(typed, document)
    assert answer.status == 400, answer.body
    assert says in v2_error_of(answer)


def binary_request(tensors: list[dict[str, Any]], blobs: bytes) -> tuple[bytes, dict[str, str]]:
    header = orjson.dumps({"inputs": tensors})
    return header + blobs, {"Inference-Header-Content-Length": str(len(header))}


def test_v2_binary_sizes_must_match_the_bytes_sent(typed: ThreadedServer) -> None:
    tensors = v2_tensors(i8={"parameters": {"binary_data_size": 2}, "shape": [2, 1]})
    del tensors[0]["data"]
    for v2_fields in tensors[1:]:
        v2_fields["shape"] = [2, 1]
        v2_fields["data"] = v2_fields["data"] * 2
    url = typed.url + "/v2/models/typed/infer"
    body, headers = binary_request(tensors, struct.pack("bb", -5, 7))
    good = post(url, body, **headers)
    assert good.status == 200, good.body
    outputs = {output["name"]: output for output in orjson.loads(good.body)["outputs"]}
    assert outputs["i8_out"]["data"] == [-5, 7]
    for blobs, says in [
        (b"\x01\x02\x03", "1 byte more than the binary_data_size"),
        (b"\x01", "declare 2 bytes of binary data"),
        (b"", "declare 2 bytes of binary data"),
    ]:
        body, headers = binary_request(tensors, blobs)
        answer = post(url, body, **headers)
        assert answer.status == 400, answer.body
        assert says in v2_error_of(answer)
    tensors[0]["parameters"]["binary_data_size"] = 3
    body, headers = binary_request(tensors, b"\x01\x02\x03")
    answer = post(url, body, **headers)
    assert answer.status == 400 and "3 bytes do not fit shape [2, 1] of INT8" in v2_error_of(answer)
    for length in ("99", "abc", "-1"):
        answer = post(url, b"{}", **{"Inference-Header-Content-Length": length})
        assert answer.status == 400 and "Inference-Header-Content-Length" in v2_error_of(answer), length


# --- strings ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    with serving(models.build_label_encoder(tmp_path_factory.mktemp("strings") / "labels.onnx")) as server:
        yield server


def test_string_inputs_through_json_and_v2(strings: ThreadedServer) -> None:
    meta = orjson.loads(request(strings.url + "/v2/models/labels").body)
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]
    assert meta["outputs"][1] == {"name": "echo", "datatype": "BYTES", "shape": [-1, 1]}
    answer = post(strings.url + "/invocations", orjson.dumps([["dog"], ["cat"], ["émeu"]]))
    assert answer.status == 200, answer.body
    assert orjson.loads(answer.body)["outputs"] == {
        "code": [[1], [0], [-1]],
        "echo": [["dog"], ["cat"], ["émeu"]],
    }
    v2 = v2_infer(
        strings,
        {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": ["bird", "cat"]}]},
        "labels",
    )
    assert v2.status == 200, v2.body
    assert orjson.loads(v2.body)["outputs"] == [
        {"name": "code", "datatype": "INT64", "shape": [2, 1], "data": [2, 0]},
        {"name": "echo", "datatype": "BYTES", "shape": [2, 1], "data": ["bird", "cat"]},
    ]
    numbers = post(strings.url + "/invocations", orjson.dumps([[1.5]]))
    assert numbers.status == 400 and "strings only" in error_of(numbers)["message"]


def test_string_inputs_with_tritonclient_binary_and_json(strings: ThreadedServer) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{strings.port}")
    try:
        words = np.array([["dog"], ["bird"], ["ünïcode"]], dtype=object)
        for binary in (True, False):
            text = triton.InferInput("text", [3, 1], "BYTES")
            text.set_data_from_numpy(words, binary_data=binary)
            outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("code", "echo")]
            result = client.infer("labels", [text], outputs=outputs)
            assert result.as_numpy("code").tolist() == [[1], [2], [-1]]
            echoed = [
                [value.decode() if isinstance(value, bytes) else value for value in row]
                for row in result.as_numpy("echo")
            ]
            assert echoed == words.tolist()
    finally:
        client.close()


# --- the error shape per protocol ------------------------------------------------------------------


def test_v2_errors_are_open_inference_protocol_errors(typed: ThreadedServer) -> None:
    assert v2_error_of(request(typed.url + "/v2/models/other")).startswith("unknown model 'other'")
    assert request(typed.url + "/v2/models/other/ready").status == 404
    v2_error_of(request(typed.url + "/v2/models/other/ready"))
    unknown = v2_infer(typed, {"inputs": v2_tensors()}, model="other")
    assert unknown.status == 404 and v2_error_of(unknown).startswith("unknown model 'other'")
    bad_json = post(typed.url + "/v2/models/typed/infer", b"{nope")
    assert bad_json.status == 400 and "not valid JSON" in v2_error_of(bad_json)
    # The SageMaker routes keep {"error": {"code", "message"}}.
    assert error_of(post(typed.url + "/invocations", b"{nope"))["code"] == 400


def test_tritonclient_raises_the_servers_message(onnx_models) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    with serving(onnx_models.two_input) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            a = triton.InferInput("a", [2, 3], "FP32")
            a.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32))
            b = triton.InferInput("b", [2, 1], "INT64")
            b.set_data_from_numpy(np.array([[1], [2]], dtype=np.int64))
            with pytest.raises(InferenceServerException) as raised:
                client.infer("two_input", [a, b])
            assert raised.value.message() == (
                "expected inputs 'a' float32[N,4], 'b' int64[N,1], got float32[2,3] for 'a'"
            )
            with pytest.raises(InferenceServerException) as missing:
                client.get_model_metadata("nope")
            assert missing.value.message().startswith("unknown model 'nope'")
        finally:
            client.close()


# --- Accept ----------------------------------------------------------------------------------------


def test_accept_that_cannot_be_served_is_406(onnx_models) -> None:  # type: ignore[no-untyped-def]
    body = orjson.dumps([[1.0] * 16])
    with serving(onnx_models.identity) as server:
        url = server.url + "/invocations"
        refused = post(url, body, Accept="text/html")
        assert refused.status == 406
        assert error_of(refused)["message"] == (
            "cannot answer in text/html; this server answers application/json, text/csv or application/x-npy"
        )
        assert post(url, body, Accept="application/json;q=0, text/html").status == 406
        for accept in ("*/*", "application/*", "application/json; charset=utf-8", "text/html, */*;q=0.1"):
            answer = post(url, body, Accept=accept)
            assert answer.status == 200 and answer.headers["content-type"] == "application/json", accept
        assert post(url, body, Accept="text/*").headers["content-type"] == "text/csv"
        assert post(url, body, Accept="text/html;q=0.9, text/csv").headers["content-type"] == "text/csv"
        assert post(url, body).headers["content-type"] == "application/json"


def test_csv_or_npy_answers_of_several_outputs_need_x_berth_output(onnx_models) -> None:  # type: ignore[no-untyped-def]
    rows = np.ones((2, 16), dtype=np.float32)
    with serving(onnx_models.logreg_plain) as server:
        url = server.url + "/invocations"
        for accept in ("text/csv", "application/x-npy"):
            refused = post(url, orjson.dumps(rows.tolist()), Accept=accept)
            assert refused.status == 406
            assert error_of(refused)["message"] == (
                f"{accept} carries one output and the model has 2 ('label', 'probabilities'): "
                "name one in the X-Berth-Output header"
            )
            chosen = post(
                url, orjson.dumps(rows.tolist()), Accept=accept, **{"X-Berth-Output": "probabilities"}
            )
            assert chosen.status == 200 and chosen.headers["content-type"] == accept
        unknown = post(url, orjson.dumps(rows.tolist()), **{"X-Berth-Output": "nope"})
        assert unknown.status == 400
        assert error_of(unknown)["message"] == "unknown output 'nope'; the model has 'label', 'probabilities'"


# --- answer headers ---------------------------------------------------------------------------------


def test_answer_headers_name_the_variant_config_and_inference_id(onnx_models) -> None:  # type: ignore[no-untyped-def]
    body = orjson.dumps([[1.0] * 16])
    with serving(
        onnx_models.identity, variant="blue", endpoint_config="fraud-v2", endpoint_variants=("blue", "green")
    ) as server:
        url = server.url + "/invocations"
        answer = post(url, body)
        assert answer.headers["x-berth-variant"] == "blue"
        assert answer.headers["x-berth-endpoint-config"] == "fraud-v2"
        generated = answer.headers["x-berth-inference-id"]
        assert len(generated) == 32 and int(generated, 16) >= 0
        assert post(url, body).headers["x-berth-inference-id"] != generated
        mine = post(url, body, **{"X-Berth-Inference-Id": "order-42/attempt-1"})
        assert mine.headers["x-berth-inference-id"] == "order-42/attempt-1"
        refused = post(url, b"[[1.0]]", **{"X-Berth-Inference-Id": "order-43"})
        assert refused.status == 400 and refused.headers["x-berth-inference-id"] == "order-43"
        assert request(server.url + "/ping").headers["x-berth-endpoint-config"] == "fraud-v2"
        for bad in ("x" * 257, "tab\there", "caf\u00e9"):
            answer = request(
                url, "POST", body, {"Content-Type": "application/json", "X-Berth-Inference-Id": bad}
            )
            assert answer.status == 400, bad
            assert "X-Berth-Inference-Id" in error_of(answer)["message"]
        for variant in ("blue", "green"):
            assert post(url, body, **{"X-Berth-Target-Variant": variant}).status == 200
        wrong = post(url, body, **{"X-Berth-Target-Variant": "red"})
        assert wrong.status == 400
        assert (
            error_of(wrong)["message"]
            == "no variant 'red' in endpoint config fraud-v2; its variants are blue, green"
        )
        v2_wrong = request(server.url + "/v2/models/identity", headers={"X-Berth-Target-Variant": "red"})
        assert v2_wrong.status == 400 and "its variants are blue, green" in v2_error_of(v2_wrong)
    with serving(onnx_models.identity) as server:
        answer = post(server.url + "/invocations", body, **{"X-Berth-Target-Variant": "anything"})
        assert answer.status == 200
        assert "x-berth-endpoint-config" not in answer.headers


# --- v2 under an endpoint ---------------------------------------------------------------------------


def test_v2_answers_for_the_model_and_every_alias(onnx_models) -> None:  # type: ignore[no-untyped-def]
    document = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
    with serving(onnx_models.identity, model_name="fraud-v1", model_aliases=("fraud",)) as server:
        for name in ("fraud-v1", "fraud"):
            answer = post(server.url + f"/v2/models/{name}/infer", orjson.dumps(document))
            assert answer.status == 200, answer.body
            assert orjson.loads(answer.body)["model_name"] == name
            meta = request(server.url + f"/v2/models/{name}")
            assert meta.status == 200 and orjson.loads(meta.body)["name"] == name
            assert request(server.url + f"/v2/models/{name}/ready").status == 200
            assert request(server.url + f"/v2/models/{name}/versions/1/ready").status == 200
        other = request(server.url + "/v2/models/identity")
        assert other.status == 404
        assert v2_error_of(other) == "unknown model 'identity'; this server serves 'fraud-v1', 'fraud'"
