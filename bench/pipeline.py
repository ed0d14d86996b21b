"""Inference-pipeline benchmark (not a test): a three-stage `berth serve --pipeline` against
the same three models merged into one ONNX graph (onnx.compose) and served with plain
`berth serve`, in one run on the same machine.

    .venv/bin/python bench/pipeline.py [--rounds 3] [--requests 2000] [--seconds 4]
                                       [--classifiers logreg,mlp] [--mlp-sizes 4,512,512,3]

The stages (tests/serving/models.py, no downloads):
- scale: scikit-learn StandardScaler through skl2onnx, `x` float32[N, 4] -> `variable`;
- classify: `logreg`, LogisticRegression (3 classes, zipmap=False) through skl2onnx, the
  issue's three models; its `probabilities` are kept; or `mlp`, a ReLU MLP of --mlp-sizes
  (4 in, 3 out: a classifier with real compute, where the per-stage costs weigh less);
- postprocess: ReduceMax and Mul, `probabilities` -> `confidence`, `percent`.

Baseline: the same three graphs merged with onnx.compose.merge_models (the classifier's
names prefixed `classify/`, io_map scale.variable -> classify/x, classify/probabilities (or
classify/y) -> postprocess.probabilities, the merged graph's outputs confidence and percent:
what the pipeline answers) in one session, one plain `berth serve` of that .onnx. Floors for
reference, in this process with the server's session options: raw ONNX Runtime of the merged
graph, the three raw sessions chained by hand, and Berth's PipelineSession.run (the
pipeline's own code, no HTTP).

Before measuring, both servers must answer the same numbers (and the raw merged session's)
for a few rows. Then --rounds interleaved rounds, both servers up for the whole run:
- concurrency 1: one keep-alive http.client connection to each server, one-row JSON
  requests alternating between the two (who goes first alternates), --requests each;
  p50 and p99. Per-stage time from the pipeline's /metrics (berth_stage_latency_seconds,
  mean over the round), and berth_model_latency_seconds / berth_overhead_latency_seconds
  of both servers, to say where the time goes.
- concurrency 16: throughput, one-row JSON requests, wrk when installed (else a small
  asyncio client; the script says which), the two servers taking turns in one-second slices
  for --seconds each; the mean batch size the batcher formed, from /metrics.
Medians over the rounds, and the target: the pipeline within 1.2x of the merged graph
(c1 p50 pipeline / merged <= 1.2; c16 merged / pipeline req/s <= 1.2).

A default run takes about three and a half minutes. The machine is shared and drifts:
compare figures only within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import compose

sys.path.insert(0, str(Path(__file__).resolve().parent))

from berth_serving.cgroup import available_cpus
from berth_serving.config import PipelineStage, ServeConfig, pipeline_to_json
from berth_serving.pipeline import PipelineSession, load_pipeline
from berth_serving.session import load_session

from serving import REPO, Load, LoadGenerator, free_port, wait_http
from tests.serving.models import build_logreg, build_mlp, build_postprocess, build_scaler
from tests.serving.support import serve_command

ROW = [1.0, 2.0, 3.0, 4.0]
BODY = json.dumps({"instances": [ROW]}).encode()
CHECK_ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, 5.0, -1.0, 2.5], [3.0, 3.0, 3.0, 3.0], [-2.0, 7.5, 0.0, 1.25]]
JSON = {"Content-Type": "application/json"}
STAGES = ("scale", "classify", "postprocess")
TARGET = 1.2


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1000


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# --- the models --------------------------------------------------------------------------------


@dataclass
class Models:
    label: str
    description: str
    stages: tuple[PipelineStage, ...]
    paths: tuple[Path, Path, Path]
    merged: Path


def build(work: Path, classifier: str, mlp_sizes: Sequence[int]) -> Models:
    """The three stage models, the pipeline's stages, and the three merged into one graph."""
    work.mkdir(parents=True, exist_ok=True)
    scaler = build_scaler(work / "scale.onnx", n_features=4)
    if classifier == "logreg":
        classify = build_logreg(work / "classify.onnx", n_features=4, zipmap=False)
        kept, description = "probabilities", "LogisticRegression 4 -> 3 classes (skl2onnx)"
    else:
        classify = build_mlp(work / "classify.onnx", sizes=mlp_sizes)
        kept, description = "y", f"ReLU MLP {'-'.join(map(str, mlp_sizes))}"
    post = build_postprocess(work / "postprocess.onnx", n_classes=3)
    stages = (
        PipelineStage("scale", model_uri=str(scaler)),
        PipelineStage("classify", model_uri=str(classify), outputs=(kept,)),
        PipelineStage("postprocess", model_uri=str(post)),
    )

    first, second, third = (onnx.load(str(path)) for path in (scaler, classify, post))
    second = compose.add_prefix(second, "classify/")
    front = compose.merge_models(
        first, second, io_map=[("variable", "classify/x")], outputs=[f"classify/{kept}"]
    )
    merged = compose.merge_models(front, third, io_map=[(f"classify/{kept}", "probabilities")])
    # merge_models concatenates the opset imports: one per domain, the highest.
    versions: dict[str, int] = {}
    for opset in merged.opset_import:
        versions[opset.domain] = max(versions.get(opset.domain, 0), opset.version)
    del merged.opset_import[:]
    merged.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in versions.items())
    onnx.checker.check_model(merged, full_check=True)
    merged_path = work / "merged.onnx"
    onnx.save(merged, str(merged_path))
    return Models(classifier, description, stages, (scaler, classify, post), merged_path)


# --- floors, in this process -------------------------------------------------------------------


def interleaved_ms(runs: dict[str, Callable[[], object]], seconds: float) -> dict[str, float]:
    """Median milliseconds of each callable, run in turns (the order rotating) for about
    `seconds` in all, so the machine's other tenants weigh on each about equally."""
    for run in runs.values():
        for _ in range(50):
            run()
    times: dict[str, list[float]] = {label: [] for label in runs}
    order = list(runs.items())
    deadline, turn = time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline:
        turn += 1
        for label, run in order[turn % len(order) :] + order[: turn % len(order)]:
            started = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - started)
    return {label: statistics.median(values) * 1000 for label, values in times.items()}


FLOORS = ("merged graph, one session", "three sessions chained by hand", "PipelineSession.run")


def floors(models: Models, work: Path, seconds: float = 3.0) -> tuple[dict[str, float], dict[str, float]]:
    """In this process, with the server's session options: the raw merged session, the three
    raw sessions chained by hand, and Berth's PipelineSession; median ms at one row and at 16."""
    merged = load_session(models.merged)
    chain = [load_session(path) for path in models.paths]
    kept = models.stages[1].outputs[0]
    pipeline: PipelineSession = load_pipeline(
        ServeConfig(model_uri="", pipeline=models.stages), work / "in-process"
    )
    outputs = ["confidence", "percent"]

    def by_hand(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        (scaled,) = chain[0].run(["variable"], feed)
        (probabilities,) = chain[1].run([kept], {"x": scaled})
        return chain[2].run(outputs, {"probabilities": probabilities})

    def runs(feed: dict[str, np.ndarray]) -> dict[str, Callable[[], object]]:
        return dict(
            zip(
                FLOORS,
                (
                    lambda: merged.run(outputs, feed),
                    lambda: by_hand(feed),
                    lambda: pipeline.run(outputs, feed),
                ),
                strict=True,
            )
        )

    one = {"x": np.asarray([ROW], np.float32)}
    sixteen = {"x": np.repeat(np.asarray([ROW], np.float32), 16, axis=0)}
    expected = merged.run(outputs, one)
    for got in (by_hand(one), pipeline.run(outputs, one)):
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    return interleaved_ms(runs(one), seconds), interleaved_ms(runs(sixteen), seconds)


# --- servers -----------------------------------------------------------------------------------


@contextmanager
def berth_serve(log: Path, model_uri: str | Path, *args: str) -> Iterator[int]:
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            serve_command(model_uri, port, *args), stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", timeout=120)
        except TimeoutError:
            print(log.read_text()[-3000:])
            raise
        yield port
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def post(connection: http.client.HTTPConnection, body: bytes) -> tuple[float, bytes]:
    started = time.perf_counter()
    connection.request("POST", "/invocations", body, JSON)
    answer = connection.getresponse()
    text = answer.read()
    seconds = time.perf_counter() - started
    if answer.status != 200:
        raise RuntimeError(f"answered {answer.status}: {text[:300]!r}")
    return seconds, text


def metrics(port: int) -> dict[str, float]:
    """The sums and counts of /metrics, by series (labels without variant)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"(berth_\w+)_(sum|count)\{([^}]*)\} (\S+)$", line)
        if match:
            stage = re.search(r'stage="([^"]+)"', match.group(3))
            key = match.group(1) + (f"[{stage.group(1)}]" if stage else "") + "_" + match.group(2)
            found[key] = float(match.group(4))
    return found


def mean_between(before: dict[str, float], after: dict[str, float], name: str) -> float:
    """The mean of what a histogram observed between two scrapes."""
    count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    total = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
    return total / count if count else float("nan")


def mean_ms(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return mean_between(before, after, name) * 1000


def same_numbers(ports: dict[str, int], merged_model: Path) -> None:
    """Both servers answer what the raw merged session answers, or the run stops here."""
    session = ort.InferenceSession(str(merged_model), providers=["CPUExecutionProvider"])
    names = ["confidence", "percent"]
    values = session.run(names, {"x": np.asarray(CHECK_ROWS, np.float32)})
    body = json.dumps({"instances": CHECK_ROWS}).encode()
    for label, port in ports.items():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        outputs = json.loads(post(connection, body)[1])["outputs"]
        connection.close()
        for name, value in zip(names, values, strict=True):
            np.testing.assert_allclose(
                np.asarray(outputs[name], np.float32), value, rtol=1e-6, err_msg=f"{label} {name}"
            )


# --- a round -----------------------------------------------------------------------------------

SERVERS = ("merged", "pipeline")


@dataclass
class Round:
    c1: dict[str, list[float]]  # seconds per request, by server
    c16: dict[str, Load]
    model_ms: dict[str, float]  # berth_model_latency_seconds, mean over the c1 requests
    overhead_ms: dict[str, float]  # berth_overhead_latency_seconds, same
    stage_ms: dict[str, float]  # the pipeline's berth_stage_latency_seconds, same
    batch: dict[str, float]  # mean batch size the batcher formed at c16

    def p(self, label: str, q: float) -> float:
        return percentile(self.c1[label], q)

    @property
    def latency_ratio(self) -> float:
        return self.p("pipeline", 50) / self.p("merged", 50)

    @property
    def throughput_ratio(self) -> float:
        return self.c16["merged"].requests_per_second / self.c16["pipeline"].requests_per_second


def one_round(ports: dict[str, int], requests: int, load: LoadGenerator, seconds: float) -> Round:
    connections = {
        label: http.client.HTTPConnection("127.0.0.1", port, timeout=60) for label, port in ports.items()
    }
    for connection in connections.values():  # open the connections, warm the path
        for _ in range(50):
            post(connection, BODY)
    before = {label: metrics(port) for label, port in ports.items()}
    c1: dict[str, list[float]] = {label: [] for label in SERVERS}
    for index in range(requests):
        for label in SERVERS if index % 2 == 0 else SERVERS[::-1]:
            c1[label].append(post(connections[label], BODY)[0])
    after = {label: metrics(port) for label, port in ports.items()}
    for connection in connections.values():
        connection.close()
    model_ms = {
        label: mean_ms(before[label], after[label], "berth_model_latency_seconds") for label in SERVERS
    }
    overhead_ms = {
        label: mean_ms(before[label], after[label], "berth_overhead_latency_seconds") for label in SERVERS
    }
    stage_ms = {
        stage: mean_ms(before["pipeline"], after["pipeline"], f"berth_stage_latency_seconds[{stage}]")
        for stage in STAGES
    }

    slices = max(1, round(seconds))
    parts: dict[str, list[Load]] = {label: [] for label in SERVERS}
    before = {label: metrics(port) for label, port in ports.items()}
    for index in range(slices):
        for label in SERVERS if index % 2 == 0 else SERVERS[::-1]:
            url = f"http://127.0.0.1:{ports[label]}"
            parts[label].append(
                load(url, "/invocations", BODY, "application/json", 16, seconds / slices, False)
            )
    after = {label: metrics(port) for label, port in ports.items()}
    c16 = {
        label: Load(
            statistics.mean(part.requests_per_second for part in loads),
            statistics.median(part.p50_ms for part in loads),
        )
        for label, loads in parts.items()
    }
    batch = {label: mean_between(before[label], after[label], "berth_batch_size") for label in SERVERS}
    return Round(c1, c16, model_ms, overhead_ms, stage_ms, batch)


# --- the run -----------------------------------------------------------------------------------


def run_models(models: Models, options: argparse.Namespace, work: Path, load: LoadGenerator) -> None:
    print(f"\n=== classifier: {models.description} ===")
    one, sixteen = floors(models, work)
    print("in-process floors, no HTTP (the server's session options; the three run in turns):")
    for label in FLOORS:
        print(
            f"  {label:31s} p50 {one[label]:7.3f} ms at 1 row (x{one[label] / one[FLOORS[0]]:.2f}), "
            f"{sixteen[label]:7.3f} ms at 16 rows ({16 / sixteen[label] * 1000:9,.0f} rows/s)"
        )

    with contextlib.ExitStack() as servers:
        ports = {
            "merged": servers.enter_context(berth_serve(work / "merged.log", models.merged)),
            "pipeline": servers.enter_context(
                berth_serve(work / "pipeline.log", "", "--pipeline", pipeline_to_json(models.stages))
            ),
        }
        same_numbers(ports, models.merged)
        print(f"both servers answer the raw merged graph's numbers for {len(CHECK_ROWS)} rows (rtol 1e-6)")
        for port in ports.values():  # warm each server up once under load
            load(f"http://127.0.0.1:{port}", "/invocations", BODY, "application/json", 16, 1, False)

        slices = max(1, round(options.seconds))
        print(
            f"rounds: c1 {options.requests} one-row JSON requests to each, alternating; then c16 "
            f"{options.seconds:g} s each in turns of {options.seconds / slices:g} s"
        )
        rounds: list[Round] = []
        for number in range(1, options.rounds + 1):
            r = one_round(ports, options.requests, load, options.seconds)
            rounds.append(r)
            print(
                f"  round {number}: c1 p50 merged {r.p('merged', 50):.3f}, pipeline {r.p('pipeline', 50):.3f} ms "
                f"(x{r.latency_ratio:.3f}), p99 {r.p('merged', 99):.3f} / {r.p('pipeline', 99):.3f} ms; "
                f"c16 merged {r.c16['merged'].requests_per_second:,.0f}, pipeline "
                f"{r.c16['pipeline'].requests_per_second:,.0f} req/s (x{r.throughput_ratio:.3f}), "
                f"mean batch {r.batch['merged']:.1f} / {r.batch['pipeline']:.1f}"
            )

    def med(value: Callable[[Round], float]) -> float:
        return statistics.median(value(r) for r in rounds)

    print("medians of the rounds:")
    for label in SERVERS:
        print(
            f"  {label:8s} c1 p50 {med(lambda r, x=label: r.p(x, 50)):7.3f} ms, "
            f"p99 {med(lambda r, x=label: r.p(x, 99)):7.3f} ms; "
            f"c16 {med(lambda r, x=label: r.c16[x].requests_per_second):7,.0f} req/s "
            f"(p50 {med(lambda r, x=label: r.c16[x].p50_ms):.2f} ms); server-side at c1: model "
            f"{med(lambda r, x=label: r.model_ms[x]):.3f} ms, overhead {med(lambda r, x=label: r.overhead_ms[x]):.3f} ms"
        )
    stages = ", ".join(f"{stage} {med(lambda r, x=stage: r.stage_ms[x]):.3f}" for stage in STAGES)
    print(f"  pipeline stages at c1 (berth_stage_latency_seconds means): {stages} ms")
    p50_ratio = med(lambda r: r.latency_ratio)
    throughput = med(lambda r: r.throughput_ratio)
    print("against the target (baseline: the merged graph in this run):")
    print(
        f"  c1 p50 pipeline / merged: {', '.join(f'x{r.latency_ratio:.3f}' for r in rounds)} "
        f"(median x{p50_ratio:.3f}, {med(lambda r: r.p('pipeline', 50) - r.p('merged', 50)):+.3f} ms; "
        f"target <= x{TARGET}) {verdict(p50_ratio <= TARGET)}; "
        f"p99 x{med(lambda r: r.p('pipeline', 99) / r.p('merged', 99)):.3f}"
    )
    print(
        f"  c16 req/s merged / pipeline: {', '.join(f'x{r.throughput_ratio:.3f}' for r in rounds)} "
        f"(median x{throughput:.3f}; target <= x{TARGET}) {verdict(throughput <= TARGET)}"
    )
    print(
        f"  for reference: merged server c1 p50 {med(lambda r: r.p('merged', 50)):.3f} ms against the raw merged "
        f"session's {one[FLOORS[0]]:.3f} ms (HTTP, JSON and the batcher are the rest)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--requests", type=int, default=2000, help="c1 requests to each server per round")
    parser.add_argument("--seconds", type=float, default=4.0, help="c16 load per server per round")
    parser.add_argument(
        "--classifiers", default="logreg,mlp", help="comma-separated: logreg (the issue's), mlp"
    )
    parser.add_argument("--mlp-sizes", default="4,512,512,3", help="layer widths of the mlp classifier")
    options = parser.parse_args()
    classifiers = [name.strip() for name in options.classifiers.split(",") if name.strip()]
    if not classifiers or any(name not in ("logreg", "mlp") for name in classifiers):
        parser.error("--classifiers takes logreg and/or mlp")
    mlp_sizes = [int(size) for size in options.mlp_sizes.split(",")]
    if len(mlp_sizes) < 2 or mlp_sizes[0] != 4 or mlp_sizes[-1] != 3:
        parser.error("--mlp-sizes must start at 4 (the scaler's width) and end at 3 (postprocess's)")

    work = Path(tempfile.mkdtemp(prefix="berth-bench-pipeline-"))
    load = LoadGenerator(options.seconds, work)
    print(
        f"berth pipeline benchmark: 3 stages (scale -> classify -> postprocess) as `berth serve "
        f"--pipeline` against the three merged into one graph (onnx.compose) under plain `berth serve`; "
        f"{available_cpus()} CPUs allowed, 2 shared cores with other agents' tests running beside it; "
        f"onnxruntime {ort.__version__}, onnx {onnx.__version__}; load generator: {load.name}",
        flush=True,
    )
    try:
        for classifier in classifiers:
            run_models(build(work / classifier, classifier, mlp_sizes), options, work / classifier, load)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
