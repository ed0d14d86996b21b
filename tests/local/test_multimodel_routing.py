"""A MultiModel variant in `berth up`, with real processes: three `berth serve --multi-model`
replicas over a directory of small models that each answer differently. Every model's
requests land on one replica (each replica's own GET /models says which it holds), killing a
replica moves only the models it held, and its models come back to it once it is back."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from berth_serving.multimodel import rendezvous

from tests.serving.models import build_offset

from .support import BerthUp, config, endpoint, model, variant, write_yaml

pytestmark = pytest.mark.timeout(180)
ENDPOINT = "mm"
N_MODELS = 18
ROW = [1.0, 2.0, 3.0, 4.0]
NAMES = [f"customer-{i}.onnx" for i in range(N_MODELS)]


def key(name: str) -> str:
    return name.removesuffix(".onnx")


def offset(name: str) -> float:
    return float(key(name).split("-")[1]) * 10


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BerthUp]:
    tmp = tmp_path_factory.mktemp("multimodel-up")
    prefix = tmp / "models"
    for name in NAMES:
        build_offset(prefix / name, offset(name))
    manifests = tmp / "manifests"
    manifests.mkdir()
    multi = model("customers", f"file://{prefix}/")
    multi["spec"]["mode"] = "MultiModel"
    write_yaml(
        manifests / "all.yaml",
        [
            multi,
            config("mm-v1", [variant("all", "customers", count=3)]),
            endpoint(ENDPOINT, "mm-v1"),
        ],
    )
    served = BerthUp(manifests, tmp, "--no-watch")
    try:
        served.wait_in_service(ENDPOINT, timeout=90)
        yield served
    finally:
        assert served.stop() == 0, served.log()[-3000:]


def invoke(up: BerthUp, name: str) -> httpx.Response:
    response = up.invoke(ENDPOINT, [ROW], {"X-Berth-Target-Model": name})
    assert response.status_code == 200, (name, response.status_code, response.text)
    assert response.json()["predictions"] == [[x + offset(name) for x in ROW]], name  # that model answered
    return response


def replicas(up: BerthUp) -> list[dict[str, Any]]:
    return [r for r in up.endpoint(ENDPOINT)["replicas"] if r.get("port")]


def loaded(replica: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The replica's own account: model key -> its GET /models entry."""
    answer = httpx.get(f"http://127.0.0.1:{replica['port']}/models", timeout=10)
    answer.raise_for_status()
    return {entry["key"]: entry for entry in answer.json()["models"]}


def identity(replica: dict[str, Any]) -> str:
    return f"127.0.0.1:{replica['port']}"


def holders(up: BerthUp, among: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Model key -> names of the replicas (of `among`) that hold it."""
    found: dict[str, list[str]] = {}
    for replica in among:
        for model_key in loaded(replica):
            found.setdefault(model_key, []).append(replica["name"])
    return found


def test_each_models_requests_land_on_exactly_one_replica(up: BerthUp) -> None:
    fleet = replicas(up)
    assert len(fleet) == 3 and all(r["ready"] for r in fleet)
    for name in NAMES:
        caches = [invoke(up, name).headers["x-berth-model-cache"] for _ in range(3)]
        assert caches == ["miss", "hit", "hit"], (name, caches)  # loaded once, then found there
        v2 = up.client.post(
            f"/endpoints/default/{ENDPOINT}/v2/models/{key(name)}/infer",
            json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW}]},
        )
        assert v2.status_code == 200 and v2.headers["x-berth-model-cache"] == "hit", v2.text
    found = holders(up, fleet)
    assert sorted(found) == sorted(key(n) for n in NAMES)
    assert all(len(names) == 1 for names in found.values()), found
    by_id = {identity(r): r["name"] for r in fleet}
    for name in NAMES:
        owner = rendezvous.rank(key(name), list(by_id))[0]
        assert found[key(name)] == [by_id[owner]]  # the shared hash's owner, over host:port
        entry = loaded(next(r for r in fleet if r["name"] == by_id[owner]))[key(name)]
        assert (entry["requests"], entry["loads"]) == (4, 1)
    assert len({names[0] for names in found.values()}) >= 2  # spread over the replicas

    def shown() -> dict[str, str]:  # what /_berth/status (and so the table) says each one holds
        return {m["key"]: r["name"] for r in replicas(up) for m in r.get("models", [])}

    up.wait(lambda: shown() == {k: names[0] for k, names in found.items()}, 10, "the status to show them")
    endpoint_view = up.endpoint(ENDPOINT)
    assert [m["variant"] for m in endpoint_view["multiModel"]] == ["all"]


def test_invocations_without_a_target_model_is_a_400_naming_both_headers(up: BerthUp) -> None:
    response = up.invoke(ENDPOINT, [ROW])
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "X-Berth-Target-Model" in message and "X-Amzn-SageMaker-Target-Model" in message
    sagemaker = up.invoke(ENDPOINT, [ROW], {"X-Amzn-SageMaker-Target-Model": NAMES[0]})
    assert sagemaker.status_code == 200 and sagemaker.headers["x-berth-model-cache"] == "hit"
    unknown = up.invoke(ENDPOINT, [ROW], {"X-Berth-Target-Model": "nobody.onnx"})
    assert unknown.status_code == 404 and "nobody" in unknown.text


def test_killing_a_replica_moves_only_its_models_and_they_come_back(up: BerthUp) -> None:
    for name in NAMES:  # every model loaded at its owner (this test may run alone)
        invoke(up, name)
    fleet = replicas(up)
    before = {model_key: names[0] for model_key, names in holders(up, fleet).items()}
    victim = next(r for r in fleet if list(before.values()).count(r["name"]) >= 1)
    living = [r for r in fleet if r["name"] != victim["name"]]
    restarts = victim["restarts"]
    os.kill(victim["pid"], signal.SIGKILL)
    up.wait(
        lambda: not next(r for r in replicas(up) if r["name"] == victim["name"])["ready"],
        10,
        f"{victim['name']} off the route",
    )
    started = time.monotonic()
    caches = {name: invoke(up, name).headers["x-berth-model-cache"] for name in NAMES}
    elapsed = time.monotonic() - started
    still_down = not next(r for r in replicas(up) if r["name"] == victim["name"])["ready"]
    assert still_down, f"{victim['name']} came back within {elapsed:.2f} s: the test cannot tell"
    moved = {key(n) for n in NAMES if before[key(n)] == victim["name"]}
    assert moved
    living_ids = {identity(r): r["name"] for r in living}
    now = holders(up, living)
    for name in NAMES:
        model_key = key(name)
        if model_key in moved:  # to its owner among the two left, loaded there now
            assert caches[name] == "miss", name
            assert now[model_key] == [living_ids[rendezvous.rank(model_key, list(living_ids))[0]]]
        else:  # still where it was, never loaded anywhere else
            assert caches[name] == "hit", name
            assert now[model_key] == [before[model_key]], (name, now[model_key])
    # Restarted on its port (its name in the hash): its models come back to it, nobody else's.
    up.wait(
        lambda: any(
            r["name"] == victim["name"] and r["ready"] and r["restarts"] > restarts for r in replicas(up)
        ),
        60,
        f"{victim['name']} back",
    )
    back = next(r for r in replicas(up) if r["name"] == victim["name"])
    assert back["port"] == victim["port"]
    for name in NAMES:
        invoke(up, name)
    assert set(loaded(back)) == moved  # a new process: only what was sent to it since


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "multimodel"


@pytest.mark.timeout(150)
def test_the_multimodel_example_serves_every_model_it_builds(tmp_path: Path) -> None:
    project = tmp_path / "multimodel"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("models", "__pycache__"))
    subprocess.run([sys.executable, str(project / "build_models.py")], check=True, capture_output=True)
    names = sorted(
        p.relative_to(project / "models").as_posix()
        for p in (project / "models").rglob("*")
        if p.name.endswith((".onnx", ".tar.gz"))
    )
    assert len(names) == 8 and "customer-7.tar.gz" in names and "eu/merchant-risk.onnx" in names
    served = BerthUp(project, tmp_path)  # file://models/ resolves against the manifests' directory
    try:
        served.wait_in_service("multimodel", timeout=90)
        assert len(replicas_of(served, "multimodel")) == 3
        answers = {}
        for name in names:
            response = served.invoke("multimodel", [[1.5, 0.9, 3.0, 0.7]], {"X-Berth-Target-Model": name})
            assert response.status_code == 200, (name, response.text)
            answers[name] = response.json()["predictions"][0][0]
        assert len(set(answers.values())) == len(names)  # each model answers for itself
    finally:
        assert served.stop() == 0, served.log()[-3000:]


def replicas_of(up: BerthUp, name: str) -> list[dict[str, Any]]:
    return [r for r in up.endpoint(name)["replicas"] if r.get("ready")]


@pytest.mark.timeout(180)
def test_a_rollouts_new_fleet_warms_the_old_fleets_most_used_models(tmp_path: Path) -> None:
    prefix = tmp_path / "models"
    names = [f"customer-{i}.onnx" for i in range(8)]
    for name in names:
        build_offset(prefix / name, offset(name))
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    multi = model("customers", f"file://{prefix}/")
    multi["spec"].update({"mode": "MultiModel", "multiModel": {"warmModels": 3}})
    write_yaml(
        manifests / "models.yaml",
        [
            multi,
            config("warm-v1", [variant("all", "customers", count=2)]),
            config("warm-v2", [variant("all", "customers", count=2)]),
        ],
    )
    endpoint_file = write_yaml(manifests / "endpoint.yaml", [endpoint("warm", "warm-v1")])
    served = BerthUp(manifests, tmp_path)
    try:
        served.wait_in_service("warm", timeout=90)
        # Requests spread over both old replicas by affinity: the top three are 3, 5 and 0.
        counts = {"customer-3.onnx": 6, "customer-5.onnx": 5, "customer-0.onnx": 4, "customer-1.onnx": 1}
        for name, count in counts.items():
            for _ in range(count):
                response = served.invoke("warm", [ROW], {"X-Berth-Target-Model": name})
                assert response.status_code == 200, response.text
        write_yaml(endpoint_file, [endpoint("warm", "warm-v2")])

        def new_fleet() -> list[dict[str, Any]]:
            found = [r for r in served.endpoint("warm")["replicas"] if r["config"] == "warm-v2"]
            return found if len(found) == 2 and all(r["ready"] for r in found) else []

        served.wait(lambda: bool(new_fleet()), 90, "the new fleet ready")
        top = {key(name) for name in ("customer-3.onnx", "customer-5.onnx", "customer-0.onnx")}
        for replica in new_fleet():  # ready means warmed: these were loaded before /ping said so
            assert set(loaded(replica)) == top, (replica["name"], loaded(replica))
        log = "\n".join((tmp_path / "run" / "logs" / f"{r['name']}.log").read_text() for r in new_fleet())
        assert "warmed models" in log
    finally:
        assert served.stop() == 0, served.log()[-3000:]
