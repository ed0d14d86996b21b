"""`berth up` over its lifetime: live edits under load, clean shutdown, the quickstart, bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from berth_operator.api import MSG_VARIANT_NAMES_UNIQUE

from .conftest import ROW
from .support import BERTH, BerthUp, alive, config, endpoint, model, variant, write_yaml

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart"
BODY = {"instances": [ROW]}


class Load:
    """Constant load from a few threads; every non-200 answer or transport error is kept."""

    def __init__(self, url: str, threads: int = 2, pause: float = 0.003) -> None:
        self.url = url
        self.pause = pause
        self.variants: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(self.url, json=BODY)
                    outcome = (
                        response.headers.get("x-berth-variant", "?") if response.status_code == 200 else None
                    )
                    error = None if outcome else f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    outcome, error = None, f"{type(exc).__name__}: {exc}"
                with self._lock:
                    if outcome:
                        self.variants[outcome] += 1
                    else:
                        self.failures.append(str(error))
                time.sleep(self.pause)  # steady load, without starving the 2-core machine

    @property
    def total(self) -> int:
        return sum(self.variants.values()) + len(self.failures)


@pytest.mark.timeout(180)
def test_live_config_update_under_load_has_zero_failures(model_dir: Path, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(
        manifests / "models.yaml",
        [
            model("logreg", f"file://{model_dir / 'logreg.onnx'}"),
            model("garbage", f"file://{model_dir / 'garbage.onnx'}"),
        ],
    )
    configs = [
        config("live-v1", [variant("blue", "logreg")]),
        config("live-v2", [variant("green", "logreg")]),
        config("live-v3", [variant("red", "garbage")]),
    ]
    write_yaml(manifests / "configs.yaml", configs)
    endpoint_file = write_yaml(manifests / "endpoint.yaml", [endpoint("live", "live-v1")])
    up = BerthUp(manifests, tmp_path)
    try:
        up.wait_in_service("live")
        with Load(f"{up.base}/endpoints/default/live/invocations") as load:
            time.sleep(1)
            write_yaml(endpoint_file, [endpoint("live", "live-v2")])

            def rolled_out() -> bool:
                ep = up.endpoint("live")
                status = ep["status"]
                return (
                    status.get("endpointConfigName") == "live-v2"
                    and not status.get("pendingEndpointConfigName")
                    and status.get("phase") == "InService"
                    and {r["config"] for r in ep["replicas"]} == {"live-v2"}
                )

            up.wait(rolled_out, 60, "the rollout to live-v2 with the old fleet stopped")
            time.sleep(1)
        assert load.failures == [], load.failures[:5]
        assert load.variants["blue"] > 50 and load.variants["green"] > 50, load.variants
        assert "manifests changed: applying" in up.log()
        reasons = [e["reason"] for e in up.endpoint("live")["events"]]
        assert "RolloutStarted" in reasons and "RolloutCompleted" in reasons, reasons

        # A new config whose replicas crash-loop is rolled back by the planner, seen through
        # the synthesized pods; the endpoint keeps serving green without a failed request.
        with Load(f"{up.base}/endpoints/default/live/invocations") as load:
            write_yaml(endpoint_file, [endpoint("live", "live-v3")])

            def rolled_back() -> bool:
                ep = up.endpoint("live")
                degraded = [c for c in ep["status"].get("conditions", []) if c["type"] == "Degraded"]
                return bool(
                    ep["status"].get("endpointConfigName") == "live-v2"
                    and ep["status"].get("phase") == "InService"
                    and degraded
                    and degraded[0]["status"] == "True"
                    and {r["config"] for r in ep["replicas"]} == {"live-v2"}
                )

            up.wait(rolled_back, 60, "the rollback from live-v3")
        assert load.failures == [], load.failures[:5]
        assert set(load.variants) == {"green"}, load.variants
        # The reason is the crashed runtime's own error line (naming the file), with the state.
        reason = up.endpoint("live")["status"]["failureReason"]
        assert "CrashLoopBackOff" in reason and "garbage.onnx" in reason, reason

        # An edit the cluster would refuse (EndpointConfig specs are immutable) is reported,
        # and the endpoint keeps serving what it had.
        write_yaml(
            manifests / "configs.yaml",
            [config("live-v1", [variant("blue", "logreg", weight=2)]), *configs[1:]],
        )
        up.wait(lambda: "EndpointConfig spec is immutable" in up.log(), 15, "the refused edit in the log")
        assert up.invoke("live", BODY).headers["x-berth-variant"] == "green"
        write_yaml(manifests / "configs.yaml", configs)  # back to what the cluster would accept

        # variantOverrides scale in place: no new fleet, one more replica of green.
        overridden = endpoint("live", "live-v2")
        overridden["spec"]["variantOverrides"] = [{"variantName": "green", "desiredInstanceCount": 2}]
        write_yaml(endpoint_file, [overridden])

        def scaled() -> bool:
            ep = up.endpoint("live")
            ready = [r for r in ep["replicas"] if r["ready"]]
            return len(ready) == 2 and {r["deployment"] for r in ready} == {ep["replicas"][0]["deployment"]}

        up.wait(scaled, 30, "two ready replicas of green")
        children = up.children()
        assert children, "berth up has no child processes"

        # An Endpoint removed from the manifests goes, and its replicas with it.
        live_pids = {r["pid"] for r in up.endpoint("live")["replicas"]}
        assert len(live_pids) == 2 and live_pids <= children
        write_yaml(endpoint_file, [endpoint("other", "live-v2")])
        up.wait(lambda: [e["name"] for e in up.status()["endpoints"]] == ["other"], 15, "live removed")
        up.wait(lambda: not any(alive(pid) for pid in live_pids), 15, "live's replicas stopped")
        up.wait_in_service("other")
        children = up.children()
        assert up.invoke("live", BODY).status_code == 404
    finally:
        code = up.stop()
    assert code == 0, up.log()
    time.sleep(0.2)
    assert [pid for pid in children if alive(pid)] == []


@pytest.mark.timeout(120)
def test_canary_with_5xx_is_rolled_back_from_the_fleets_own_metrics(model_dir: Path, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(
        manifests / "base.yaml",
        [
            model("logreg", f"file://{model_dir / 'logreg.onnx'}"),
            model("failing", f"file://{model_dir / 'failing.onnx'}"),
            config("c1", [variant("blue", "logreg")]),
            config("c2", [variant("green", "failing")]),
        ],
    )
    canary = {
        "blueGreen": {
            "trafficRouting": {
                "type": "Canary",
                "canarySize": {"type": "Percent", "value": 50},
                "waitIntervalSeconds": 3,
            },
            "terminationWaitSeconds": 0,
        },
        "autoRollback": {"maxErrorRatePercent": 5},
    }
    endpoint_file = write_yaml(manifests / "endpoint.yaml", [endpoint("canary", "c1", canary)])
    up = BerthUp([manifests / "base.yaml", endpoint_file], tmp_path)  # files, not a directory
    try:
        up.wait_in_service("canary")
        with Load(f"{up.base}/endpoints/default/canary/invocations") as load:
            write_yaml(endpoint_file, [endpoint("canary", "c2", canary)])

            def rolled_back() -> bool:
                status = up.endpoint("canary")["status"]
                degraded = [c for c in status.get("conditions", []) if c["type"] == "Degraded"]
                return bool(
                    status.get("endpointConfigName") == "c1"
                    and not status.get("pendingEndpointConfigName")
                    and degraded
                    and degraded[0]["status"] == "True"
                    and {r["config"] for r in up.endpoint("canary")["replicas"]} == {"c1"}
                )

            up.wait(rolled_back, 60, "the rollback of c2")
        # The canary's own 500s are what triggered the rollback; blue answered the rest.
        assert load.failures and all(f.startswith("500") for f in load.failures), load.failures[:3]
        assert "5xx" in up.endpoint("canary")["status"]["failureReason"], up.endpoint("canary")["status"]
        assert all(up.invoke("canary", BODY).status_code == 200 for _ in range(20))
    finally:
        assert up.stop() == 0, up.log()


@pytest.mark.timeout(120)
def test_quickstart_serves_two_models_and_sigterm_leaves_no_children(tmp_path: Path) -> None:
    project = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, project, ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
    subprocess.run([sys.executable, str(project / "build_model.py")], check=True, capture_output=True)
    up = BerthUp(project, tmp_path)  # relative file:// URIs resolve against the manifests' directory
    try:
        up.wait_in_service("quickstart")
        answers = {}
        for name in ("champion", "challenger"):
            response = up.invoke(
                "quickstart", {"instances": [[5.9, 3.0, 4.2, 1.5]]}, {"X-Berth-Target-Variant": name}
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-berth-variant"] == name
            answers[name] = response.json()
        assert answers["champion"] != answers["challenger"]
        pids = up.children()
        replica_pids = {r["pid"] for r in up.endpoint("quickstart")["replicas"]}
        assert replica_pids <= pids and len(replica_pids) == 2
    finally:
        code = up.stop()
    assert code == 0, up.log()
    time.sleep(0.2)
    assert [pid for pid in pids if alive(pid)] == []
    assert "stopped" in up.log()


@pytest.mark.timeout(60)
def test_killed_berth_up_leaves_no_orphans(model_dir: Path, tmp_path: Path) -> None:
    """Even SIGKILL, which no handler sees: the kernel kills the replicas (PR_SET_PDEATHSIG)."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(
        manifests / "all.yaml",
        [
            model("logreg", f"file://{model_dir / 'logreg.onnx'}"),
            config("c", [variant("only", "logreg")]),
            endpoint("e", "c"),
        ],
    )
    up = BerthUp(manifests, tmp_path, "--logs")
    try:
        up.wait_in_service("e")
        # --logs streams each replica's log lines, prefixed with the replica's name.
        (replica,) = up.endpoint("e")["replicas"]
        assert f"[{replica['name']}] " in up.log()
        assert (tmp_path / "run" / "logs" / f"{replica['name']}.log").read_text()
        pids = up.children()
        assert pids
        up.process.kill()
        up.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in pids if alive(pid)] == []
    finally:
        up.stop()


@pytest.mark.timeout(60)
def test_bad_manifest_exits_with_a_clear_error(tmp_path: Path) -> None:
    bad = write_yaml(
        tmp_path / "bad.yaml",
        [
            model("m", "file://m.onnx"),
            config("c", [variant("same", "m"), variant("same", "m")]),
            endpoint("e", "c"),
        ],
    )
    result = subprocess.run(
        [BERTH, "up", "-f", str(bad), "--port", "0"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert str(bad) in result.stderr and "EndpointConfig/c" in result.stderr
    assert MSG_VARIANT_NAMES_UNIQUE in result.stderr
    missing = subprocess.run(
        [BERTH, "up", "-f", str(tmp_path / "nope.yaml")], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode != 0 and "nope.yaml" in missing.stderr
