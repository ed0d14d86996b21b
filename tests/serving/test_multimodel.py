"""Multi-model endpoints, end to end on a real server: a prefix of generated models on disk
and on moto's S3 server, each answering its own numbers; loading on demand, once; LRU
eviction by measured memory and by count; in-flight models kept; 404, 507 and failed loads;
the repository API and the per-model metrics."""

from __future__ import annotations

import hashlib
import json
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.serving import models
from tests.serving.support import ThreadedServer, post_concurrently, request, serving

PREFIX_MODELS = 200
ROW = json.dumps([[1.0, 2.0, 3.0, 4.0]]).encode()
JSON = {"Content-Type": "application/json"}


def invoke(server: ThreadedServer, name: str, header: str = "X-Berth-Target-Model") -> tuple[int, dict, str]:
    answer = request(server.url + "/invocations", "POST", ROW, {**JSON, header: name})
    return answer.status, answer.headers, answer.body.decode()


def offset_of(body: str) -> float:
    """The model's offset, from its answer for the row [1, 2, 3, 4]."""
    predictions = json.loads(body)["predictions"]
    return round(predictions[0][0] - 1.0, 3)


def loaded(server: ThreadedServer) -> dict[str, dict]:
    document = json.loads(request(server.url + "/models").body)
    return {model["key"]: model for model in document["models"]}


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 models: m000.onnx .. m199.onnx, model i adding i to its input; some in a sub-folder."""
    root = tmp_path_factory.mktemp("prefix")
    for i in range(PREFIX_MODELS):
        folder = root / "eu" if i % 50 == 7 else root
        models.build_offset(folder / f"m{i:03d}.onnx", float(i))
    return root


def test_each_model_answers_its_own_predictions(prefix: Path) -> None:
    with serving(prefix, multi_model=True, max_loaded_models=300) as server:
        for i in range(PREFIX_MODELS):
            name = f"eu/m{i:03d}.onnx" if i % 50 == 7 else f"m{i:03d}.onnx"
            status, headers, body = invoke(server, name)
            assert status == 200, body
            assert offset_of(body) == i, (name, body)
            assert headers["x-berth-model-cache"] == "miss"
        # A second round is all hits, still each model its own answer; SageMaker's header works too.
        for i in (0, 99, 199):
            status, headers, body = invoke(server, f"m{i:03d}.onnx", "X-Amzn-SageMaker-Target-Model")
            assert (status, headers["x-berth-model-cache"], offset_of(body)) == (200, "hit", i)
        assert len(loaded(server)) == PREFIX_MODELS


def test_v2_names_a_model_by_its_key(prefix: Path) -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]})
    with serving(prefix, multi_model=True) as server:
        answer = request(server.url + "/v2/models/m042/infer", "POST", body.encode(), JSON)
        assert answer.status == 200, answer.body
        document = json.loads(answer.body)
        assert document["model_name"] == "m042"
        assert document["outputs"][0]["data"] == [42.0] * 4
        nested = request(server.url + "/v2/models/eu/m057/infer", "POST", body.encode(), JSON)
        assert json.loads(nested.body)["outputs"][0]["data"] == [57.0] * 4
        metadata = json.loads(request(server.url + "/v2/models/m042").body)
        assert metadata["inputs"][0]["name"] == "x"
        unknown = request(server.url + "/v2/models/m999/infer", "POST", body.encode(), JSON)
        assert unknown.status == 404
        assert json.loads(unknown.body)["error"] == f"no model 'm999' (.onnx or .tar.gz) under {prefix}/"


def test_concurrent_first_requests_load_the_model_once(prefix: Path) -> None:
    with serving(prefix, multi_model=True) as server:
        answers = post_concurrently(
            server.url,
            "/invocations",
            [ROW] * 40,
            concurrency=20,
            headers={"X-Berth-Target-Model": "m123.onnx"},
        )
        assert {status for status, _ in answers} == {200}
        assert {offset_of(body.decode()) for _, body in answers} == {123}
        assert loaded(server)["m123"]["loads"] == 1
        assert loaded(server)["m123"]["requests"] == 40


def test_least_recently_used_is_evicted_by_count(prefix: Path) -> None:
    with serving(prefix, multi_model=True, max_loaded_models=3) as server:
        for name in ("m001", "m002", "m003", "m001", "m004"):  # m001 used again: m002 is the LRU
            assert invoke(server, name)[0] == 200
        assert set(loaded(server)) == {"m001", "m003", "m004"}
        status, headers, body = invoke(server, "m002")
        assert (status, headers["x-berth-model-cache"], offset_of(body)) == (200, "miss", 2)
        assert set(loaded(server)) == {"m001", "m002", "m004"}


def test_least_recently_used_is_evicted_by_measured_memory(tmp_path: Path) -> None:
    # Four models of ~1 MiB of weights each, a cache of 3.5 MiB: three fit, a fourth evicts one.
    for i in range(4):
        models.build_offset(tmp_path / f"w{i}.onnx", float(i), padding_bytes=1 << 20)
    with serving(tmp_path, multi_model=True, cache_bytes=int(3.5 * (1 << 20))) as server:
        for i in range(3):
            assert invoke(server, f"w{i}.onnx")[0] == 200
        sizes = {key: model["bytes"] for key, model in loaded(server).items()}
        assert set(sizes) == {"w0", "w1", "w2"}
        assert all(size >= 1 << 20 for size in sizes.values()), sizes  # at least the weights
        assert invoke(server, "w3.onnx")[0] == 200
        assert set(loaded(server)) == {"w1", "w2", "w3"}
        document = json.loads(request(server.url + "/models").body)
        assert document["usedBytes"] <= document["cacheBytes"]


def test_a_model_with_requests_in_flight_is_never_evicted(
    tmp_path: Path, slow_model: tuple[Path, float]
) -> None:
    path, seconds = slow_model
    (tmp_path / "slow.onnx").write_bytes(path.read_bytes())
    models.build_offset(tmp_path / "quick.onnx", 5.0)
    slow_row = json.dumps([[0.1] * 64]).encode()
    with serving(tmp_path, multi_model=True, max_loaded_models=1) as server:
        assert request(server.url + "/v2/repository/models/slow/load", "POST").status == 200
        results: list[int] = []

        def call_slow() -> None:
            answer = request(
                server.url + "/invocations", "POST", slow_row, {**JSON, "X-Berth-Target-Model": "slow"}
            )
            results.append(answer.status)

        thread = threading.Thread(target=call_slow)
        thread.start()
        time.sleep(min(0.3, seconds / 3))
        # The only slot is busy: the quick model waits for it, then gets a 503 (or, when the slow
        # call ended meanwhile, its load) -- the slow model is never dropped mid-request.
        status, headers, body = invoke(server, "quick")
        thread.join(30)
        assert results == [200]
        assert status in (200, 503), body
        if status == 503:
            assert "requests in flight" in json.loads(body)["error"]["message"]
            assert headers["retry-after"] == "1"
        assert loaded(server)["slow" if status == 503 else "quick"]["state"] == "loaded"


def test_unknown_too_large_and_broken_models_are_clear_answers(tmp_path: Path) -> None:
    models.build_offset(tmp_path / "big.onnx", 1.0, padding_bytes=4 << 20)
    (tmp_path / "broken.onnx").write_bytes(b"this is not an ONNX model")
    models.build_offset(tmp_path / "tampered.onnx", 1.0)
    (tmp_path / "tampered.onnx.sha256").write_text("0" * 64 + "  tampered.onnx\n")
    with serving(tmp_path, multi_model=True, cache_bytes=1 << 20) as server:
        status, _, body = invoke(server, "nothing-here.onnx")
        assert status == 404
        assert (
            json.loads(body)["error"]["message"]
            == f"no model 'nothing-here' (.onnx or .tar.gz) under {tmp_path}/"
        )

        status, _, body = invoke(server, "big.onnx")
        assert status == 507
        message = json.loads(body)["error"]["message"]
        assert "'big' needs" in message and "more than the whole model cache of 1048576 bytes" in message

        status, _, body = invoke(server, "broken.onnx")
        assert status == 424
        assert json.loads(body)["error"]["message"].startswith("model 'broken' failed to load: ")

        status, _, body = invoke(server, "tampered.onnx")
        assert status == 424
        assert "sha256" in json.loads(body)["error"]["message"].lower()

        # A failed load is remembered a short while: fixing the file shows only after it.
        models.build_offset(tmp_path / "broken.onnx", 3.0)
        assert invoke(server, "broken.onnx")[0] == 424

        for bad in ("../secret.onnx", "/etc/passwd", "a//b.onnx", "x\\y.onnx"):
            status, _, body = invoke(server, bad)
            assert status == 400, (bad, body)
        nameless = request(server.url + "/invocations", "POST", ROW, JSON)
        assert nameless.status == 400
        assert "X-Berth-Target-Model" in json.loads(nameless.body)["error"]["message"]
        assert request(server.url + "/models").status == 200  # still serving


def test_failed_load_is_retried_after_its_window(tmp_path: Path) -> None:
    from berth_serving.multimodel import cache

    (tmp_path / "late.onnx").write_bytes(b"not yet")
    with serving(tmp_path, multi_model=True) as server:
        assert invoke(server, "late.onnx")[0] == 424
        models.build_offset(tmp_path / "late.onnx", 8.0)
        deadline = time.monotonic() + cache.FAILED_SECONDS + 5
        while time.monotonic() < deadline:
            status, _, body = invoke(server, "late.onnx")
            if status == 200:
                assert offset_of(body) == 8
                break
            time.sleep(0.5)
        else:
            pytest.fail("the fixed model never loaded")


def test_archives_with_digests_beside_them(tmp_path: Path) -> None:
    source = models.build_offset(tmp_path / "src" / "model.onnx", 17.0)
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    archive = prefix / "customer-17.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="model.onnx")
    (prefix / "customer-17.tar.gz.sha256").write_text(hashlib.sha256(archive.read_bytes()).hexdigest())
    with serving(prefix, multi_model=True) as server:
        status, _, body = invoke(server, "customer-17.tar.gz")
        assert (status, offset_of(body)) == (200, 17)
        status, headers, _ = invoke(server, "customer-17")  # the key names the same model
        assert (status, headers["x-berth-model-cache"]) == (200, "hit")


def test_repository_api(prefix: Path) -> None:
    with serving(prefix, multi_model=True) as server:
        assert request(server.url + "/v2/repository/models/m010/load", "POST").status == 200
        index = json.loads(request(server.url + "/v2/repository/index", "POST").body)
        assert len(index) == PREFIX_MODELS
        states = {entry["name"]: entry["state"] for entry in index}
        assert states["m010"] == "READY" and states["m011"] == "UNAVAILABLE"
        assert states["eu/m007"] == "UNAVAILABLE"
        assert request(server.url + "/v2/repository/models/m999/load", "POST").status == 404
        unloaded = request(server.url + "/v2/repository/models/m010/unload", "POST")
        assert json.loads(unloaded.body) == {"name": "m010", "unloaded": True}
        assert "m010" not in loaded(server)
        status, headers, _ = invoke(server, "m010")
        assert (status, headers["x-berth-model-cache"]) == (200, "miss")
        described = loaded(server)["m010"]
        assert described["loads"] == 2 and described["unloads"] == 1 and described["bytes"] > 0


def test_metrics_per_model(prefix: Path) -> None:
    with serving(prefix, multi_model=True, variant="blue") as server:
        for name in ("m001", "m001", "m002"):
            invoke(server, name)
        invoke(server, "m998")
        text = request(server.url + "/metrics").body.decode()
    lines = set(text.splitlines())
    assert 'berth_invocations_total{code="200",model="m001",variant="blue"} 2.0' in lines
    assert 'berth_invocations_total{code="200",model="m002",variant="blue"} 1.0' in lines
    assert 'berth_invocations_total{code="404",model="",variant="blue"} 1.0' in lines
    assert 'berth_model_cache_hits_total{model="m001",variant="blue"} 1.0' in lines
    assert 'berth_model_cache_misses_total{model="m001",variant="blue"} 1.0' in lines
    assert 'berth_model_loads_total{model="m002",variant="blue"} 1.0' in lines
    assert any(line.startswith('berth_model_loaded_bytes{model="m001",variant="blue"}') for line in lines)
    assert 'berth_loaded_models{variant="blue"} 2.0' in lines
    # One family per name: a valid exposition.
    assert text.count("# TYPE berth_invocations_total counter") == 1


def test_models_on_s3(prefix: Path, s3) -> None:  # type: ignore[no-untyped-def]
    names = sorted(path.relative_to(prefix).as_posix() for path in prefix.rglob("*.onnx"))
    assert len(names) == PREFIX_MODELS
    for name in names:
        s3.upload_file(str(prefix / name), "models", f"tenants/{name}")
    digest = hashlib.sha256((prefix / "m020.onnx").read_bytes()).hexdigest()
    s3.put_object(Bucket="models", Key="tenants/m020.onnx.sha256", Body=digest.encode())
    s3.put_object(Bucket="models", Key="tenants/m040.onnx.sha256", Body=b"f" * 64)
    with serving("s3://models/tenants/", multi_model=True, max_loaded_models=300) as server:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda name: invoke(server, name), names))
        for name, (status, _, body) in zip(names, answers, strict=True):
            offset = int(name.rsplit("m", 1)[1].split(".")[0])
            if name == "m040.onnx":  # its .sha256 beside it does not match
                assert status == 424 and "sha256" in body.lower(), body
            else:
                assert (status, offset_of(body)) == (200, offset), (name, body)
        status, _, body = invoke(server, "m999.onnx")
        assert status == 404 and "s3://models/tenants/" in body
        assert len(loaded(server)) == PREFIX_MODELS - 1


def test_a_new_fleet_warms_the_old_ones_most_used_models(prefix: Path) -> None:
    with serving(prefix, multi_model=True) as old:
        for name, times in (("m005", 5), ("m006", 3), ("m009", 1), ("m008", 4)):
            for _ in range(times):
                assert invoke(old, name)[0] == 200
        with serving(prefix, multi_model=True, warm_from=old.url + "/models", warm_models=3) as new:
            # Ready only after the warm-up: the three most requested are loaded before any request.
            assert set(loaded(new)) == {"m005", "m008", "m006"}
            assert invoke(new, "m005")[1]["x-berth-model-cache"] == "hit"


def test_an_unreachable_old_fleet_does_not_hold_the_new_one_back(prefix: Path) -> None:
    from tests.serving.support import free_port

    gone = f"http://127.0.0.1:{free_port()}/models"
    with serving(prefix, multi_model=True, warm_from=gone, warm_models=10) as new:
        assert loaded(new) == {}
        assert invoke(new, "m001")[0] == 200


def test_fetch_model_checks_the_digest_beside_a_model_under_a_prefix(tmp_path: Path) -> None:
    """What a TransformJob's init container runs for its targetModel under a MultiModel prefix."""
    from berth_serving.cli import main
    from click.testing import CliRunner

    prefix = tmp_path / "prefix"
    good = models.build_offset(prefix / "good.onnx", 1.0)
    (prefix / "good.onnx.sha256").write_text(hashlib.sha256(good.read_bytes()).hexdigest() + "  good.onnx\n")
    models.build_offset(prefix / "bad.onnx", 2.0)
    (prefix / "bad.onnx.sha256").write_text("0" * 64)
    models.build_offset(prefix / "plain.onnx", 3.0)

    def fetch(name: str) -> tuple[int, str]:
        args = ["fetch-model", f"file://{prefix}/{name}", str(tmp_path / name), "--sha256-beside"]
        result = CliRunner().invoke(main, args)
        return result.exit_code, result.output

    assert fetch("good.onnx") == (0, f"{tmp_path / 'good.onnx' / 'good.onnx'}\n")
    code, output = fetch("bad.onnx")
    assert code == 1 and "sha256" in output.lower(), output
    assert fetch("plain.onnx")[0] == 0  # no digest beside it: nothing to check


def test_hostile_model_names_are_refused_and_cost_nothing(prefix: Path) -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]})
    with serving(prefix, multi_model=True) as server:
        for name in ("m" * 2000, "a\x01b.onnx", "./m001.onnx", "eu/../m001.onnx"):
            status, _, message = invoke(server, name)
            assert status == 400, (name[:20], message)
        # Escapes through the v2 path, plain and percent-encoded, are names like any other.
        for path in (
            "/v2/models/../../etc/infer",
            "/v2/models/%2e%2e/%2e%2e/etc/infer",
            "/v2/models/eu%2f..%2fm1/infer",
        ):
            answer = request(server.url + path, "POST", body.encode(), JSON)
            assert answer.status in (400, 404), (path, answer.body)
        # A flood of names that name nothing leaves no trace: no counters, no entries.
        answers = post_concurrently(
            server.url,
            "/invocations",
            [ROW] * 300,
            concurrency=16,
            headers={"X-Berth-Target-Model": "flood"},
        )
        assert {status for status, _ in answers} == {404}
        for i in range(200):
            assert invoke(server, f"nothing-{i}.onnx")[0] == 404
        text = request(server.url + "/metrics").body.decode()
        assert "nothing-" not in text and "flood" not in text
        assert loaded(server) == {}
