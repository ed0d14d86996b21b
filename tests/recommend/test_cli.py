"""`berth recommend` for real: the runtime under Locust on the tests' small model, short budgets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.crds.test_crds_admission import CRDS
from tests.local.support import BerthUp, descendants, endpoint
from tests.serving.models import build_logreg
from tests.support.crdcheck import admit
from tests.support.foreground import foreground

BERTH = str(Path(sys.executable).with_name("berth"))
PAYLOAD = '{"instances": [[0.5, -1.0, 0.25, 2.0]]}'
CATALOG = {
    "instanceTypes": {
        "one-core": {"resources": {"limits": {"cpu": "1", "memory": "2Gi"}}, "pricePerHour": 0.05},
        "two-core": {"resources": {"limits": {"cpu": "2", "memory": "4Gi"}}, "pricePerHour": 0.20},
    }
}

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("recommend")
    build_logreg(directory / "logreg.onnx", n_features=4, zipmap=False)
    (directory / "settings.yaml").write_text(yaml.safe_dump(CATALOG))
    return directory


def recommend(workdir: Path, *extra: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            BERTH,
            "recommend",
            "--model",
            str(workdir / "logreg.onnx"),
            "--payload",
            PAYLOAD,
            "--settings",
            str(workdir / "settings.yaml"),
            "--instance-types",
            "one-core,two-core",
            "--batch-sizes",
            "32",
            "--step-seconds",
            "0.5",
            "--max-minutes",
            "1",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_table_row_per_candidate_and_an_endpoint_config_that_serves(workdir: Path, tmp_path: Path) -> None:
    output, page = tmp_path / "recommended.yaml", tmp_path / "report.html"
    done = recommend(workdir, "--p99-ms", "500", "--rps", "100", "-o", str(output), "--html", str(page))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("candidate"))
    rows = [line.split("  ")[0] for line in lines[header + 1 : header + 4]]
    assert rows == [
        "one-core threads=1 batch=32",
        "two-core threads=1 batch=32",
        "two-core threads=2 batch=32",
    ]
    assert "emulated" in lines[header + 1]
    assert "recommended: " in done.stderr
    model, config = yaml.safe_load_all(output.read_text())
    for doc in (model, config):
        assert (
            admit(CRDS[doc["kind"]], {**doc, "metadata": {**doc["metadata"], "namespace": "default"}}) == []
        )
    assert config["spec"]["productionVariants"][0]["instanceType"] in ("one-core", "two-core")
    assert model["spec"]["runtime"]["maxBatchSize"] == 32
    assert "<svg" in page.read_text() and "one-core threads=1 batch=32" in page.read_text()

    # What it wrote serves in local mode, with the catalog it was priced from.
    endpoint_file = tmp_path / "endpoint.yaml"
    endpoint_file.write_text(yaml.safe_dump(endpoint("recommended", "recommended-config")))
    up = BerthUp([output, endpoint_file], tmp_path, "--settings", str(workdir / "settings.yaml"))
    try:
        up.wait_in_service("recommended")
        assert up.invoke("recommended", {"instances": [[0.5, -1.0, 0.25, 2.0]]}).status_code == 200
    finally:
        assert up.stop() == 0, up.log()


def test_a_target_no_candidate_meets_recommends_nothing(workdir: Path, tmp_path: Path) -> None:
    output = tmp_path / "none.yaml"
    done = recommend(workdir, "--p99-ms", "0.001", "--rps", "100", "-o", str(output))
    assert done.returncode == 1
    assert "no candidate keeps p99 within 0.001 ms: nothing to recommend" in done.stderr
    assert "no load level kept p99 within 0.001 ms" in done.stderr
    assert not output.exists()


def test_an_advanced_job_runs_the_traffic_pattern(workdir: Path, tmp_path: Path) -> None:
    pattern = tmp_path / "pattern.yaml"
    pattern.write_text(
        yaml.safe_dump(
            {
                "phases": [
                    {"initialNumberOfUsers": 1, "spawnRate": 0, "durationInSeconds": 1},
                    {"initialNumberOfUsers": 2, "spawnRate": 120, "durationInSeconds": 1.5},
                ],
                "stoppingConditions": {
                    "modelLatencyThresholds": [{"percentile": "P99", "valueInMilliseconds": 500}]
                },
            }
        )
    )
    done = recommend(
        workdir, "--p99-ms", "500", "--rps", "50", "--job-type", "Advanced", "--traffic-pattern", str(pattern)
    )
    assert done.returncode == 0, done.stderr
    progress = [
        line for line in done.stderr.splitlines() if "concurrency" in line and line.startswith("  one-core")
    ]
    users = [int(line.split("concurrency")[1].split()[0]) for line in progress]
    # One line per phase: 1 user, then 2 growing at 120 a minute for 1.5 s (at most 5 at its end).
    assert len(users) == 2 and users[0] == 1 and 2 < users[1] <= 5, users
    unknown = recommend(workdir, "--p99-ms", "5", "--rps", "5", "--job-type", "Advanced")
    assert unknown.returncode == 2 and "--job-type Advanced needs --traffic-pattern FILE" in unknown.stderr


def test_bad_input_is_refused_before_any_load(workdir: Path) -> None:
    done = recommend(workdir, "--p99-ms", "50", "--rps", "100", "--batch-sizes", "a,b")
    assert done.returncode == 2 and "--batch-sizes: not integers" in done.stderr
    wrong = subprocess.run(
        [BERTH, "recommend", "--model", str(workdir / "logreg.onnx"), "--p99-ms", "50", "--rps", "10",
         "--payload", '{"instances": [[1.0]]}', "--instance-types", "cpu-small", "--step-seconds", "0.5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert wrong.returncode == 1
    assert "the payload is refused by the model: 400" in wrong.stderr


def test_interrupting_leaves_no_process_behind(workdir: Path) -> None:
    process = subprocess.Popen(
        foreground([BERTH, "recommend", "--model", str(workdir / "logreg.onnx"), "--payload", PAYLOAD,
         "--p99-ms", "500", "--rps", "100", "--instance-types", "cpu-small", "--step-seconds", "5"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    children: set[int] = set()
    while time.monotonic() < deadline and len(children) < 2:  # the server and the load generator
        children |= descendants(process.pid)
        time.sleep(0.1)
    assert len(children) >= 2, "the measurement never started"
    os.kill(process.pid, signal.SIGINT)
    process.wait(timeout=60)
    time.sleep(0.5)
    left = [pid for pid in children if Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)]
    assert left == []


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"
