"""`berth serve` end to end: a real uvicorn server on 127.0.0.1 with real ONNX Runtime
sessions on the models from tests/serving/models.py."""

from __future__ import annotations

import io
import logging
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.support import Response, ThreadedServer, request, serving

pytestmark = pytest.mark.timeout(120)


def post(url: str, body: bytes, content_type: str = "application/json", **headers: str) -> Response:
    return request(url, "POST", body, {"Content-Type": content_type, **headers})


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def from_npy(body: bytes) -> np.ndarray:
    return np.load(io.BytesIO(body), allow_pickle=False)


def error_of(response: Response) -> dict[str, object]:
    document = orjson.loads(response.body)
    assert set(document) == {"error"}
    error = document["error"]
    assert error["code"] == response.status
    assert "Traceback" not in error["message"]
    return error  # type: ignore[no-any-return]


def metric_samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = request(url + "/metrics").body.decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for (sample, sample_labels), value in metric_samples(url).items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


ROWS = np.random.default_rng(7).normal(size=(5, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def logreg(onnx_models) -> Iterator[ThreadedServer]:  # type: ignore[no-untyped-def]
    with serving(onnx_models.logreg, variant="blue", max_payload_bytes=64 * 1024) as server:
        yield server


@pytest.fixture(scope="module")
def logreg_session(onnx_models) -> ort.InferenceSession:  # type: ignore[no-untyped-def]
    return ort.InferenceSession(str(onnx_models.logreg), providers=["CPUExecutionProvider"])


# --- content types in and out ----------------------------------------------------------------


def test_ping_and_variant_header(logreg: ThreadedServer) -> None:
    answer = request(logreg.url + "/ping")
    assert answer.status == 200
    assert answer.headers["x-berth-variant"] == "blue"
    assert request(logreg.url + "/v2/health/live").headers["x-berth-variant"] == "blue"
    assert request(logreg.url + "/metrics").headers["x-berth-variant"] == "blue"
    assert request(logreg.url + "/nowhere").headers["x-berth-variant"] == "blue"


def test_json_instances_with_zipmap_outputs(
    logreg: ThreadedServer, logreg_session: ort.InferenceSession
) -> None:
    answer = post(logreg.url + "/invocations", orjson.dumps({"instances": ROWS.tolist()}))
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-berth-variant"] == "blue"
    outputs = orjson.loads(answer.body)["outputs"]
    labels, probabilities = logreg_session.run(None, {"x": ROWS})
    assert outputs["output_label"] == labels.tolist()
    assert len(outputs["output_probability"]) == 5
    for row, expected in zip(outputs["output_probability"], probabilities, strict=True):
        assert set(row) == {"0", "1", "2"}
        assert [row[str(k)] for k in range(3)] == pytest.approx([expected[k] for k in range(3)], rel=1e-6)


def test_bare_list_and_single_instance(logreg: ThreadedServer, logreg_session: ort.InferenceSession) -> None:
    labels = logreg_session.run(None, {"x": ROWS})[0].tolist()
    bare = orjson.loads(post(logreg.url + "/invocations", orjson.dumps(ROWS.tolist())).body)
    assert bare["outputs"]["output_label"] == labels
    one = orjson.loads(post(logreg.url + "/invocations", orjson.dumps(ROWS[0].tolist())).body)
    assert one["outputs"]["output_label"] == labels[:1]
    named = orjson.loads(
        post(logreg.url + "/invocations", orjson.dumps({"inputs": {"x": ROWS.tolist()}})).body
    )
    assert named["outputs"]["output_label"] == labels


def test_integers_in_json_are_converted_to_float32(logreg: ThreadedServer) -> None:
    answer = post(logreg.url + "/invocations", orjson.dumps([list(range(16))]))
    assert answer.status == 200
    assert orjson.loads(answer.body)["outputs"]["output_label"] == [2]


def test_csv_in_csv_out(logreg: ThreadedServer, logreg_session: ort.InferenceSession) -> None:
    body = "\n".join(",".join(f"{v:.9g}" for v in row) for row in ROWS).encode()
    # Two outputs: a CSV answer carries the one X-Berth-Output names (without it, a 406).
    assert post(logreg.url + "/invocations", body, "text/csv", Accept="text/csv").status == 406
    answer = post(
        logreg.url + "/invocations", body, "text/csv", Accept="text/csv", **{"X-Berth-Output": "output_label"}
    )
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/csv"
    labels, probabilities = logreg_session.run(None, {"x": ROWS})
    assert answer.body.decode().split() == [str(v) for v in labels]
    chosen = post(
        logreg.url + "/invocations",
        body,
        "text/csv",
        Accept="text/csv",
        **{"X-Berth-Output": "output_probability"},
    )
    matrix = np.loadtxt(io.StringIO(chosen.body.decode()), delimiter=",")
    assert matrix.shape == (5, 3)
    assert matrix == pytest.approx(np.array([[p[k] for k in range(3)] for p in probabilities]), rel=1e-6)


def test_npy_in_npy_out(logreg: ThreadedServer, logreg_session: ort.InferenceSession) -> None:
    answer = post(
        logreg.url + "/invocations",
        npy(ROWS.astype(np.float64)),
        "application/x-npy",
        Accept="application/x-npy",
        **{"X-Berth-Output": "output_label"},
    )
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/x-npy"
    labels = from_npy(answer.body)
    assert labels.dtype == np.int64
    assert labels.tolist() == logreg_session.run(None, {"x": ROWS})[0].tolist()
    probabilities = from_npy(
        post(
            logreg.url + "/invocations",
            npy(ROWS),
            "application/x-npy",
            Accept="application/x-npy",
            **{"X-Berth-Output": "output_probability"},
        ).body
    )
    assert probabilities.shape == (5, 3) and probabilities.dtype == np.float32
    assert probabilities.sum(axis=1) == pytest.approx(np.ones(5), rel=1e-5)


def test_json_in_npy_out_and_csv_in_json_out(logreg: ThreadedServer) -> None:
    as_npy = post(
        logreg.url + "/invocations",
        orjson.dumps(ROWS.tolist()),
        Accept="application/x-npy",
        **{"X-Berth-Output": "output_label"},
    )
    assert from_npy(as_npy.body).shape == (5,)
    as_json = post(logreg.url + "/invocations", b"1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16\n", "text/csv")
    assert orjson.loads(as_json.body)["outputs"]["output_label"] == [2]


def test_skl2onnx_without_zipmap(onnx_models) -> None:  # type: ignore[no-untyped-def]
    with serving(onnx_models.logreg_plain) as server:
        outputs = orjson.loads(post(server.url + "/invocations", orjson.dumps(ROWS.tolist())).body)["outputs"]
        assert set(outputs) == {"label", "probabilities"}
        assert np.asarray(outputs["probabilities"]).shape == (5, 3)
        meta = orjson.loads(request(server.url + "/v2/models/logreg_plain").body)
        assert meta["outputs"][1] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}


def test_two_inputs_and_single_output_shapes(onnx_models) -> None:  # type: ignore[no-untyped-def]
    a = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    b = [[1], [2]]
    with serving(onnx_models.two_input) as server:
        answer = post(server.url + "/invocations", orjson.dumps({"inputs": {"a": a, "b": b}}))
        assert answer.status == 200, answer.body
        outputs = orjson.loads(answer.body)["outputs"]
        assert outputs["sum"] == [[2.0, 3.0, 4.0, 5.0], [7.0, 8.0, 9.0, 10.0]]
        assert outputs["scaled"] == [[10.0, 20.0, 30.0, 40.0], [50.0, 60.0, 70.0, 80.0]]
        rows = post(server.url + "/invocations", orjson.dumps({"instances": [{"a": a[0], "b": b[0]}]}))
        assert orjson.loads(rows.body)["outputs"]["sum"] == [[2.0, 3.0, 4.0, 5.0]]
        missing = post(server.url + "/invocations", orjson.dumps({"inputs": {"a": a}}))
        assert missing.status == 400
        assert error_of(missing)["message"] == (
            "missing input 'b'; expected inputs 'a' float32[N,4], 'b' int64[N,1]"
        )
        wrong_dtype = post(
            server.url + "/invocations", orjson.dumps({"inputs": {"a": a, "b": [[1.5], [2.0]]}})
        )
        assert wrong_dtype.status == 400
        assert "expected inputs 'a' float32[N,4], 'b' int64[N,1]" in error_of(wrong_dtype)["message"]
        csv = post(server.url + "/invocations", b"1,2,3,4", "text/csv")
        assert csv.status == 400
        assert "single-input" in error_of(csv)["message"]
    with serving(onnx_models.identity) as server:
        answer = post(server.url + "/invocations", orjson.dumps([[0.5] * 16]))
        assert orjson.loads(answer.body) == {"predictions": [[0.5] * 16]}


# --- errors -------------------------------------------------------------------------------


def test_400_wrong_shape_names_the_signature(logreg: ThreadedServer) -> None:
    answer = post(logreg.url + "/invocations", orjson.dumps([[1, 2, 3]]))
    assert answer.status == 400
    assert error_of(answer)["message"] == "expected input 'x' float32[N,16], got float32[1,3] for 'x'"


def test_400_wrong_dtype_and_bad_bodies(logreg: ThreadedServer) -> None:
    strings = post(logreg.url + "/invocations", orjson.dumps([["a"] * 16]))
    assert strings.status == 400
    assert "expected input 'x' float32[N,16]" in error_of(strings)["message"]
    ragged = post(logreg.url + "/invocations", orjson.dumps([[1.0] * 16, [1.0]]))
    assert ragged.status == 400
    assert "expected input 'x' float32[N,16]" in error_of(ragged)["message"]
    for body, content_type in [
        (b"{not json", "application/json"),
        (b'{"something": 1}', "application/json"),
        (b"1,2,x", "text/csv"),
        (b"not an npy file", "application/x-npy"),
        (npy(np.array([[1.0] * 16], dtype=np.complex64)), "application/x-npy"),
    ]:
        answer = post(logreg.url + "/invocations", body, content_type)
        assert answer.status == 400, (body, answer.body)
        error_of(answer)
    unknown_output = post(
        logreg.url + "/invocations",
        orjson.dumps(ROWS.tolist()),
        Accept="text/csv",
        **{"X-Berth-Output": "nope"},
    )
    assert unknown_output.status == 400


def test_415_unsupported_content_type(logreg: ThreadedServer) -> None:
    answer = post(logreg.url + "/invocations", b"<x/>", "application/xml")
    assert answer.status == 415
    assert "application/xml" in error_of(answer)["message"]
    assert answer.headers["x-berth-variant"] == "blue"
    assert error_of(request(logreg.url + "/invocations"))["code"] == 405


def test_413_declared_content_length(logreg: ThreadedServer) -> None:
    answer = post(logreg.url + "/invocations", b"[" + b"1.0," * 20000 + b"1.0]")
    assert answer.status == 413
    assert "65536" in error_of(answer)["message"]


def test_413_streamed_body_is_refused_before_it_ends(logreg: ThreadedServer) -> None:
    """A chunked body with no Content-Length: the server counts bytes as they arrive and
    answers 413 while the client is still sending (the body never ends)."""
    with socket.create_connection(("127.0.0.1", logreg.port), timeout=10) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"1.0," * 4096  # 16 KiB
        for _ in range(6):  # 96 KiB > the 64 KiB limit; the terminating chunk is never sent
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b'"code":413' in head


def test_404_and_metadata(logreg: ThreadedServer) -> None:
    meta = request(logreg.url + "/v2/models/logreg")
    assert meta.status == 200
    assert orjson.loads(meta.body) == {
        "name": "logreg",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [
            {"name": "output_label", "datatype": "INT64", "shape": [-1]},
            {"name": "output_probability", "datatype": "FP32", "shape": [-1, -1]},
        ],
    }
    assert request(logreg.url + "/v2/models/other").status == 404
    # v2 paths answer errors in the Open Inference Protocol's shape, {"error": "message"}.
    assert orjson.loads(request(logreg.url + "/v2/models/other").body)["error"].startswith(
        "unknown model 'other'"
    )
    assert post(logreg.url + "/v2/models/other/infer", b"{}").status == 404
    assert request(logreg.url + "/v2/health/ready").status == 200
    assert request(logreg.url + "/v2/models/logreg/ready").status == 200


def test_v2_json_infer_with_zipmap(logreg: ThreadedServer, logreg_session: ort.InferenceSession) -> None:
    body = {
        "id": "r1",
        "inputs": [{"name": "x", "shape": [5, 16], "datatype": "FP32", "data": ROWS.ravel().tolist()}],
    }
    answer = post(logreg.url + "/v2/models/logreg/infer", orjson.dumps(body))
    assert answer.status == 200, answer.body
    document = orjson.loads(answer.body)
    assert document["id"] == "r1" and document["model_name"] == "logreg"
    label, probability = document["outputs"]
    assert label == {
        "name": "output_label",
        "datatype": "INT64",
        "shape": [5],
        "data": logreg_session.run(None, {"x": ROWS})[0].tolist(),
    }
    assert probability["shape"] == [5, 3] and probability["datatype"] == "FP32"
    bad = post(
        logreg.url + "/v2/models/logreg/infer",
        orjson.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}),
    )
    assert bad.status == 400
    assert "expected input 'x' float32[N,16]" in orjson.loads(bad.body)["error"]


def test_metrics_count_by_code(onnx_models) -> None:  # type: ignore[no-untyped-def]
    with serving(onnx_models.identity, variant="green", model_name="noop") as server:
        for _ in range(3):
            assert post(server.url + "/invocations", orjson.dumps([[1.0] * 16])).status == 200
        assert post(server.url + "/invocations", orjson.dumps([[1.0]])).status == 400
        assert post(server.url + "/invocations", b"x", "text/plain").status == 415
        labels = {"variant": "green", "model": "noop"}
        assert metric(server.url, "berth_invocations_total", code="200", **labels) == 3
        assert metric(server.url, "berth_invocations_total", code="400", **labels) == 1
        assert metric(server.url, "berth_invocations_total", code="415", **labels) == 1
        assert metric(server.url, "berth_model_latency_seconds_count", **labels) == 3
        assert metric(server.url, "berth_overhead_latency_seconds_count", **labels) == 3
        assert metric(server.url, "berth_batch_size_sum", **labels) == 3
        assert metric(server.url, "berth_inflight_requests", **labels) == 0
        assert metric(server.url, "berth_model_load_seconds", model="noop") > 0
        assert metric(server.url, "berth_model_latency_seconds_bucket", le="0.0001", **labels) >= 0
        assert request(server.url + "/v2/models/noop").status == 200
        assert request(server.url + "/v2/models/identity").status == 404


# --- batching -------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "threads"), [("mlp", 1), ("mlp", 2), ("logreg", 2)])
def test_concurrent_requests_are_batched_and_split_back(  # type: ignore[no-untyped-def]
    onnx_models, model: str, threads: int, caplog: pytest.LogCaptureFixture
) -> None:
    """With two threads the batches of small requests run on the one-thread twin (session.py)."""
    path = getattr(onnx_models, model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    width = session.get_inputs()[0].shape[1]
    inputs = np.random.default_rng(3).normal(size=(96, width)).astype(np.float32)
    expected = session.run(None, {"x": inputs})[0]
    with (
        caplog.at_level(logging.INFO, logger="berth.serving"),
        serving(path, max_batch_size=16, max_batch_delay_ms=20, intra_op_threads=threads) as server,
    ):
        [loaded] = [record for record in caplog.records if record.getMessage() == "model loaded"]
        assert loaded.fields["one_thread_twin"] is (threads > 1)  # type: ignore[attr-defined]

        def one(index: int) -> list[object]:
            answer = post(server.url + "/invocations", orjson.dumps([inputs[index].tolist()]))
            assert answer.status == 200, answer.body
            document = orjson.loads(answer.body)
            return (
                document["predictions"] if "predictions" in document else document["outputs"]["output_label"]
            )

        with ThreadPoolExecutor(max_workers=24) as pool:
            results = list(pool.map(one, range(len(inputs))))
        for index, result in enumerate(results):
            assert np.asarray(result)[0] == pytest.approx(expected[index], rel=1e-5, abs=1e-6)
        batches = metric(server.url, "berth_batch_size_count")
        assert metric(server.url, "berth_batch_size_sum") == len(inputs)
        assert metric(server.url, "berth_invocations_total", code="200") == len(inputs)
        assert batches < len(inputs), "no two requests were ever merged"
        assert metric(server.url, "berth_batch_size_bucket", le="1.0") < len(inputs)


def test_fixed_batch_model_is_served_one_request_at_a_time(onnx_models) -> None:  # type: ignore[no-untyped-def]
    with serving(onnx_models.fixed_batch, max_batch_delay_ms=20) as server:
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(
                pool.map(
                    lambda i: post(server.url + "/invocations", orjson.dumps([[float(i)] * 16])), range(24)
                )
            )
        for index, answer in enumerate(answers):
            assert orjson.loads(answer.body) == {"predictions": [[2.0 * index] * 16]}
        one_instance = post(server.url + "/invocations", orjson.dumps([1.5] * 16))  # no batch dimension
        assert orjson.loads(one_instance.body) == {"predictions": [[3.0] * 16]}
        assert metric(server.url, "berth_batch_size_count") == 25
        assert metric(server.url, "berth_batch_size_sum") == 25
        two_rows = post(server.url + "/invocations", orjson.dumps([[1.0] * 16] * 2))
        assert two_rows.status == 400
        assert error_of(two_rows)["message"] == "expected input 'x' float32[1,16], got float32[2,16] for 'x'"


# --- Open Inference Protocol with tritonclient ------------------------------------------------


def test_tritonclient_round_trip(onnx_models) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.http as triton

    with serving(onnx_models.two_input) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            assert client.is_server_live()
            assert client.is_server_ready()
            assert client.is_model_ready("two_input")
            meta = client.get_model_metadata("two_input")
            assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
                ("a", "FP32", [-1, 4]),
                ("b", "INT64", [-1, 1]),
            ]
            a = np.arange(8, dtype=np.float32).reshape(2, 4)
            b = np.array([[1], [2]], dtype=np.int64)
            for binary in (True, False):
                inputs = [triton.InferInput("a", [2, 4], "FP32"), triton.InferInput("b", [2, 1], "INT64")]
                inputs[0].set_data_from_numpy(a, binary_data=binary)
                inputs[1].set_data_from_numpy(b, binary_data=binary)
                outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("sum", "scaled")]
                result = client.infer("two_input", inputs, outputs=outputs, request_id="42")
                np.testing.assert_array_equal(result.as_numpy("sum"), a + b)
                np.testing.assert_array_equal(result.as_numpy("scaled"), a * 10)
                assert result.get_response()["id"] == "42"
            # No outputs named: tritonclient asks for all of them in binary.
            inputs = [triton.InferInput("a", [2, 4], "FP32"), triton.InferInput("b", [2, 1], "INT64")]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(b)
            result = client.infer("two_input", inputs)
            np.testing.assert_array_equal(result.as_numpy("sum"), a + b)
            with pytest.raises(triton.InferenceServerException):
                bad = triton.InferInput("a", [2, 3], "FP32")
                bad.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32))
                client.infer("two_input", [bad, inputs[1]])
        finally:
            client.close()


# --- not ready, queue full, timeout -----------------------------------------------------------


def test_503_until_the_model_is_loaded(onnx_models) -> None:  # type: ignore[no-untyped-def]
    """The model comes from an HTTP server that holds the download back: meanwhile the
    server is up, live, and answers 503 with Retry-After everywhere readiness matters."""
    import http.server

    release = threading.Event()
    payload = onnx_models.identity.read_bytes()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            release.wait(30)
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass

    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    thread = threading.Thread(target=origin.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{origin.server_address[1]}/models/identity.onnx"
        with serving(url, wait_ready=False) as server:
            for path in ("/ping", "/v2/health/ready"):
                answer = request(server.url + path)
                assert answer.status == 503
                assert answer.headers["retry-after"] == "1"
            infer = post(server.url + "/invocations", orjson.dumps([[1.0] * 16]))
            assert infer.status == 503 and infer.headers["retry-after"] == "1"
            assert error_of(infer)["message"] == "model is not ready"
            assert request(server.url + "/v2/health/live").status == 200
            release.set()
            from tests.serving.support import wait_until

            wait_until(lambda: request(server.url + "/ping").status == 200)
            assert post(server.url + "/invocations", orjson.dumps([[1.0] * 16])).status == 200
            assert request(server.url + "/v2/models/identity").status == 200
    finally:
        release.set()
        origin.shutdown()
        origin.server_close()


def test_load_failure_exits_1_with_termination_message(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from berth_serving.config import ServeConfig

    from tests.serving.support import wait_until

    termination_log = tmp_path / "termination-log"
    monkeypatch.setenv("BERTH_TERMINATION_LOG", str(termination_log))
    server = ThreadedServer(ServeConfig(model_uri=str(tmp_path / "missing.onnx")))
    server.start(wait_ready=False)
    wait_until(lambda: server.exit_code is not None)
    server.stop()
    assert server.exit_code == 1
    assert termination_log.read_text() == f"model not found: {tmp_path / 'missing.onnx'}"


def test_504_on_timeout_and_503_when_the_queue_is_full(slow_model) -> None:  # type: ignore[no-untyped-def]
    path, seconds = slow_model
    timeout = min(0.2, seconds / 3)
    with serving(path, timeout_seconds=timeout, max_queue_size=1) as server:
        slow = post(server.url + "/invocations", orjson.dumps([[0.1] * 64]))
        assert slow.status == 504
        assert error_of(slow)["message"] == f"inference took longer than the {timeout:g} s timeout"
        # The timed-out call still occupies ONNX Runtime: the queue (size 1) is full.
        full = post(server.url + "/invocations", orjson.dumps([[0.1] * 64]))
        assert full.status == 503
        assert full.headers["retry-after"] == "1"
        assert "queue is full" in error_of(full)["message"]
        assert metric(server.url, "berth_invocations_total", code="504") == 1
        assert metric(server.url, "berth_invocations_total", code="503") == 1


# --- where the model comes from ----------------------------------------------------------------


def test_serve_from_s3_with_sha256(onnx_models, s3) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    s3.upload_file(str(onnx_models.identity), "models", "served/v1/noop.onnx")
    digest = hashlib.sha256(onnx_models.identity.read_bytes()).hexdigest()
    server_config = {"model_uri": "s3://models/served/v1/noop.onnx"}
    from berth_serving.config import ServeConfig

    server = ThreadedServer(ServeConfig(**server_config), sha256=digest).start()
    try:
        assert request(server.url + "/v2/models/noop").status == 200
        assert orjson.loads(post(server.url + "/invocations", orjson.dumps([[3.0] * 16])).body) == {
            "predictions": [[3.0] * 16]
        }
    finally:
        server.stop()


def test_serve_a_directory_like_the_pod_mount(onnx_models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    models_dir = tmp_path / "mnt-models"
    models_dir.mkdir()
    (models_dir / "fraud.onnx").write_bytes(onnx_models.logreg.read_bytes())
    with serving(models_dir) as server:
        assert request(server.url + "/v2/models/fraud").status == 200
        assert post(server.url + "/invocations", orjson.dumps(ROWS.tolist())).status == 200


def test_model_runtime_failure_is_a_json_500_logged_once(tmp_path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    import logging

    from tests.serving.models import build_failing

    path = build_failing(tmp_path / "failing.onnx")
    with serving(path) as server, caplog.at_level(logging.INFO, logger="berth.serving"):
        failed = post(server.url + "/invocations", orjson.dumps([[1.0] * 4]))
        assert failed.status == 500
        message = error_of(failed)["message"]
        assert message.startswith("internal error (") and message.endswith("); see the server log")
        assert "Reshape" not in message  # model internals stay in the log
        assert post(server.url + "/invocations", orjson.dumps([[1.0] * 4] * 3)).status == 200
        assert metric(server.url, "berth_invocations_total", code="500") == 1
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
