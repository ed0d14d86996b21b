"""Multi-model benchmark (not a test): one replica serving 1,000 models with a cache of 100,
Zipf(1.1) popularity, against a single-model `berth serve` of one of the same models, in one run.

    .venv/bin/python bench/multimodel.py [--models 1000] [--max-loaded 100] [--requests 6000]
                                         [--seconds 12] [--concurrency 16]

Parts, all real and on loopback:
- 1,000 models the bench builds in a scratch directory (tests/serving/models.py build_offset:
  `y = x + i` for model i, so every answer names the model that gave it, plus an unused
  weight of --padding-kib, 256 KiB by default, so each is a small model's size on disk).
- `berth serve DIR --multi-model --max-loaded-models 100`, and as the baseline `berth serve`
  of the most popular model's .onnx, same options otherwise.
- Popularity: p_k proportional to k^-1.1 over ranks k = 1..1000 (explicit probabilities, not
  numpy's unbounded zipf), ranks shuffled onto models, fixed --seed. With a cache of 100 the
  best any policy can do is the top 100's share of requests (about 77%); LRU does a bit less.

Measured:
- Latency, one request at a time on one keep-alive connection each (http.client): first
  --warm-up requests fill the cache and are not counted; then three parties take turns,
  request by request (who goes first rotates), so a burst of load from the machine's other
  tenants falls on all about equally: the multi-model replica under Zipf, the same replica
  asked for its most popular model only (the cost of being multi-model with no change of
  model between requests) and the single-model baseline. Each
  multi-model answer is classed by its X-Berth-Model-Cache header (hit | miss) and checked
  to be its own model's. Reported: hit rate, p50/p99 of hits, of misses and of the baseline,
  and hit p50 / baseline p50. Target: hits within 10% of single-model latency.
  For misses, the baselines are the replica's own measured load time (GET /models,
  loadSeconds) and ONNX Runtime's session creation + first run (and destruction, for the
  eviction a full cache does first) in this process.
- Throughput, --concurrency keep-alive connections for --seconds each, in slices that take
  turns (multi-model under Zipf, multi-model all on its most popular model, single-model):
  wrk (a Lua script picks each request's model from a presampled Zipf sequence) when
  installed, else a small asyncio client. Requests/s and the ratios to the single-model
  endpoint; the hit rate under load from /metrics.

The machine is shared and drifts: compare figures only within one run.
"""

from __future__ import annotations

import argparse
import asyncio
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import REPO, free_port, wait_http
from tests.serving.models import build_offset
from tests.serving.support import serve_command

ROW = [1.0, 2.0, 3.0, 4.0]
BODY = json.dumps({"instances": [ROW]}).encode()
JSON = {"Content-Type": "application/json"}
TARGET = "X-Berth-Target-Model"
CACHE = "x-berth-model-cache"


def name_of(index: int) -> str:
    return f"m{index:04d}.onnx"


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1000 if values else float("nan")


def zipf_probabilities(count: int, exponent: float) -> np.ndarray:
    weights = np.arange(1, count + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


@dataclass
class Popularity:
    """Zipf over ranks, ranks shuffled onto models: draw() gives model indices."""

    probabilities: np.ndarray
    model_of_rank: np.ndarray
    rng: np.random.Generator

    @classmethod
    def make(cls, count: int, exponent: float, seed: int) -> Popularity:
        rng = np.random.default_rng(seed)
        return cls(zipf_probabilities(count, exponent), rng.permutation(count), rng)

    def draw(self, size: int) -> np.ndarray:
        ranks = self.rng.choice(len(self.probabilities), size=size, p=self.probabilities)
        return self.model_of_rank[ranks]

    @property
    def top(self) -> int:
        return int(self.model_of_rank[0])


# --- servers ---------------------------------------------------------------------------------


@contextmanager
def berth_serve(model_uri: Path, log: Path, *args: str) -> Iterator[int]:
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            serve_command(model_uri, port, *args), stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=120)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def get(port: int, path: str) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"GET {path} answered {answer.status}")
        return body
    finally:
        connection.close()


def cache_counters(port: int) -> tuple[float, float]:
    """(hits, misses) so far, summed over the models, from the replica's /metrics."""
    text = get(port, "/metrics").decode()
    totals = {"hits": 0.0, "misses": 0.0}
    for line in text.splitlines():
        found = re.match(r"berth_model_cache_(hits|misses)_total\{.*\} ([\d.e+]+)$", line)
        if found:
            totals[found.group(1)] += float(found.group(2))
    return totals["hits"], totals["misses"]


def invoke(connection: http.client.HTTPConnection, model: int | None) -> tuple[float, str, bytes]:
    """One POST /invocations: (seconds, the cache header, the body)."""
    headers = JSON if model is None else {**JSON, TARGET: name_of(model)}
    started = time.perf_counter()
    connection.request("POST", "/invocations", BODY, headers)
    answer = connection.getresponse()
    body = answer.read()
    seconds = time.perf_counter() - started
    if answer.status != 200:
        raise RuntimeError(f"model {model} answered {answer.status}: {body[:300]!r}")
    return seconds, answer.getheader(CACHE) or "", body


def offset_of(body: bytes) -> int:
    return round(json.loads(body)["predictions"][0][0] - ROW[0])


# --- latency, one request at a time ------------------------------------------------------------


@dataclass
class Latency:
    hits: list[float]
    misses: list[float]
    one: list[float]  # the multi-model replica, every request for its most popular model
    single: list[float]

    @property
    def hit_rate(self) -> float:
        return len(self.hits) / (len(self.hits) + len(self.misses))


def sequential(multi_port: int, single_port: int, sequence: np.ndarray, top: int, warm_up: int) -> Latency:
    """Three parties in turns, request by request, the order rotating: the multi-model replica
    under Zipf, the same replica asked for its most popular model only, and the baseline."""
    multi = http.client.HTTPConnection("127.0.0.1", multi_port, timeout=120)
    one = http.client.HTTPConnection("127.0.0.1", multi_port, timeout=120)
    single = http.client.HTTPConnection("127.0.0.1", single_port, timeout=120)
    for model in sequence[:warm_up]:
        invoke(multi, int(model))
    for _ in range(200):
        invoke(one, top)
        invoke(single, None)
    result = Latency([], [], [], [])
    for index, model in enumerate(sequence[warm_up:]):
        turn = [("zipf", multi, int(model)), ("one", one, top), ("single", single, None)]
        for label, connection, target in turn[index % 3 :] + turn[: index % 3]:
            seconds, cache, body = invoke(connection, target)
            if target is None:
                result.single.append(seconds)
                continue
            if offset_of(body) != target:
                raise RuntimeError(f"{name_of(target)} answered model {offset_of(body)}'s numbers")
            if cache not in ("hit", "miss"):
                raise RuntimeError(f"{name_of(target)}: {CACHE} is {cache!r}")
            if label == "one":
                result.one.append(seconds)
            else:
                (result.hits if cache == "hit" else result.misses).append(seconds)
    for connection in (multi, one, single):
        connection.close()
    return result


def raw_session_ms(models: Sequence[Path]) -> tuple[float, float]:
    """ONNX Runtime in this process, with the replica's session options: (session creation +
    first run, destruction), medians over the given models, 100 other sessions held as the
    replica's cache would."""
    from berth_serving.session import load_session

    feed = {"x": np.asarray([ROW], np.float32)}
    held = [load_session(models[0]) for _ in range(100)]
    created, destroyed = [], []
    for path in models:
        started = time.perf_counter()
        session = load_session(path)
        session.run(None, feed)
        created.append(time.perf_counter() - started)
        held.append(session)
        oldest = held.pop(0)
        started = time.perf_counter()
        del oldest
        destroyed.append(time.perf_counter() - started)
    del held
    return statistics.median(created) * 1000, statistics.median(destroyed) * 1000


# --- throughput --------------------------------------------------------------------------------

WRK_SCRIPT = """
local names, sequence, requests = {}, {}, {}
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  local body_file = io.open(args[1], "rb")
  local body = body_file:read("*all")
  body_file:close()
  for name in io.lines(args[2]) do names[#names + 1] = name end
  for index in io.lines(args[3]) do sequence[#sequence + 1] = tonumber(index) end
  for i, name in ipairs(names) do
    local headers = {["Content-Type"] = "application/json"}
    if name ~= "-" then headers["X-Berth-Target-Model"] = name end
    requests[i] = wrk.format("POST", "/invocations", headers, body)
  end
  -- Threads start far apart in the sequence: no two replay the same models in step.
  position = (tonumber(args[4]) + id * math.floor(#sequence / 7)) % #sequence + 1
end
function request()
  local r = requests[sequence[position]]
  position = position % #sequence + 1
  return r
end
"""


@dataclass
class Load:
    requests: int
    seconds: float
    errors: int

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


class LoadGenerator:
    """Closed-loop load: wrk when installed, else asyncio. A target is a port and a list of
    target-model names ("-" for none) indexed by a presampled sequence."""

    def __init__(self, work: Path, connections: int) -> None:
        self.work = work
        self.connections = connections
        self.wrk = shutil.which("wrk") is not None
        self.name = "wrk" if self.wrk else "python asyncio client (wrk not installed: apt-get install wrk)"
        (work / "body.json").write_bytes(BODY)
        (work / "load.lua").write_text(WRK_SCRIPT)
        self._files: dict[str, tuple[Path, Path]] = {}

    def target(self, label: str, names: list[str], sequence: np.ndarray) -> str:
        names_file, sequence_file = self.work / f"{label}.names", self.work / f"{label}.sequence"
        names_file.write_text("\n".join(names) + "\n")
        sequence_file.write_text("\n".join(str(int(i) + 1) for i in sequence) + "\n")  # Lua: 1-based
        self._files[label] = (names_file, sequence_file)
        return label

    def run(self, port: int, label: str, seconds: float, offset: int) -> Load:
        names_file, sequence_file = self._files[label]
        if self.wrk:
            return self._wrk(port, names_file, sequence_file, seconds, offset)
        names = names_file.read_text().split()
        sequence = [int(i) - 1 for i in sequence_file.read_text().split()]
        return asyncio.run(self._asyncio(port, names, sequence, seconds, offset))

    def _wrk(self, port: int, names: Path, sequence: Path, seconds: float, offset: int) -> Load:
        threads = min(2, self.connections)
        out = subprocess.run(
            ["wrk", "-t", str(threads), "-c", str(self.connections), "-d", f"{seconds:g}s",
             "-s", str(self.work / "load.lua"), f"http://127.0.0.1:{port}",
             "--", str(self.work / "body.json"), str(names), str(sequence), str(offset)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        requests = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
        if requests is None:
            raise RuntimeError(f"wrk said: {out}")
        duration = float(requests.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[requests.group(3)]
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        socket_errors = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
        )
        count = int(errors.group(1)) if errors else 0
        count += sum(map(int, socket_errors.groups())) if socket_errors else 0
        return Load(int(requests.group(1)), duration, count)

    async def _asyncio(
        self, port: int, names: list[str], sequence: list[int], seconds: float, offset: int
    ) -> Load:
        heads = [
            (
                "POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + ("" if name == "-" else f"{TARGET}: {name}\r\n")
                + f"Content-Length: {len(BODY)}\r\n\r\n"
            ).encode()
            + BODY
            for name in names
        ]
        counts = {"done": 0, "errors": 0}
        deadline = time.perf_counter() + seconds

        async def worker(start: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            position = start
            while time.perf_counter() < deadline:
                writer.write(heads[sequence[position % len(sequence)]])
                position += 1
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", head, re.I)
                await reader.readexactly(int(length.group(1)) if length else 0)
                counts["done"] += 1
                if not head.startswith(b"HTTP/1.1 200"):
                    counts["errors"] += 1
            writer.close()

        stride = len(sequence) // (self.connections + 1)
        started = time.perf_counter()
        await asyncio.gather(*(worker(offset + i * stride) for i in range(self.connections)))
        return Load(counts["done"], time.perf_counter() - started, counts["errors"])


# --- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--max-loaded", type=int, default=100, help="--max-loaded-models of the replica")
    parser.add_argument("--exponent", type=float, default=1.1, help="Zipf exponent")
    parser.add_argument("--padding-kib", type=int, default=256, help="unused weight per model")
    parser.add_argument("--warm-up", type=int, default=2000, help="requests that fill the cache, not counted")
    parser.add_argument("--requests", type=int, default=6000, help="measured requests to each endpoint")
    parser.add_argument("--seconds", type=float, default=12.0, help="load time per throughput target")
    parser.add_argument("--slices", type=int, default=4, help="turns each throughput target takes")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=14)
    options = parser.parse_args()
    if not 0 < options.max_loaded < options.models:
        parser.error("--max-loaded must be between 1 and --models - 1")

    work = Path(tempfile.mkdtemp(prefix="berth-bench-multimodel-"))
    try:
        prefix = work / "models"
        started = time.perf_counter()
        paths = [
            build_offset(prefix / name_of(i), float(i), padding_bytes=options.padding_kib * 1024)
            for i in range(options.models)
        ]
        build_seconds = time.perf_counter() - started
        popularity = Popularity.make(options.models, options.exponent, options.seed)
        top_share = popularity.probabilities[: options.max_loaded].sum()
        load = LoadGenerator(work, options.concurrency)
        print(
            f"berth multi-model benchmark: {options.models} models of "
            f"{paths[0].stat().st_size / 1024:.0f} KiB on disk (offset + {options.padding_kib} KiB padding, "
            f"built in {build_seconds:.1f} s), --max-loaded-models {options.max_loaded}, "
            f"Zipf({options.exponent:g}) seed {options.seed} (top {options.max_loaded} hold "
            f"{top_share:.1%} of requests, the most popular {popularity.probabilities[0]:.1%}); "
            f"baseline: single-model berth serve of {name_of(popularity.top)}; load generator: {load.name}; "
            "2 shared cores, other agents' tests running beside it",
            flush=True,
        )
        raw_ms, raw_destroy_ms = raw_session_ms(paths[:: max(1, options.models // 40)])

        sequence = popularity.draw(options.warm_up + options.requests)
        with contextlib.ExitStack() as servers:
            multi_port = servers.enter_context(
                berth_serve(prefix, work / "multi.log", "--multi-model",
                            "--max-loaded-models", str(options.max_loaded))
            )  # fmt: skip
            single_port = servers.enter_context(berth_serve(paths[popularity.top], work / "single.log"))

            started = time.perf_counter()
            latency = sequential(multi_port, single_port, sequence, popularity.top, options.warm_up)
            latency_seconds = time.perf_counter() - started
            loaded = json.loads(get(multi_port, "/models"))["models"]
            load_ms = statistics.median(m["loadSeconds"] for m in loaded) * 1000
            model_kib = statistics.median(m["bytes"] for m in loaded) / 1024

            names = [name_of(i) for i in range(options.models)]
            load.target("zipf", names, popularity.draw(200_000))
            load.target("one", [name_of(popularity.top)], np.zeros(1, np.int64))
            load.target("single", ["-"], np.zeros(1, np.int64))
            turns = [("zipf", multi_port), ("one", multi_port), ("single", single_port)]
            for label, port in turns:  # warm connections, the cache stays as the latency run left it
                load.run(port, label, 1.0, 0)
            loads: dict[str, list[Load]] = {label: [] for label, _ in turns}
            zipf_counters = [0.0, 0.0]
            per_slice = options.seconds / options.slices
            for index in range(options.slices):
                for label, port in turns[index % 3 :] + turns[: index % 3]:
                    before = cache_counters(multi_port) if label == "zipf" else (0.0, 0.0)
                    loads[label].append(load.run(port, label, per_slice, offset=index * 20_011))
                    if label == "zipf":
                        after = cache_counters(multi_port)
                        zipf_counters[0] += after[0] - before[0]
                        zipf_counters[1] += after[1] - before[1]

        hit_p50, single_p50 = percentile(latency.hits, 50), percentile(latency.single, 50)
        ratio = hit_p50 / single_p50
        print(
            f"\nlatency, one request at a time, keep-alive; multi-model under Zipf, multi-model on "
            f"{name_of(popularity.top)} only and single-model in turns ({options.warm_up} warm-up requests, "
            f"then {options.requests} to each; {latency_seconds:.0f} s):"
        )
        print(
            f"  hit rate {latency.hit_rate:.1%} ({len(latency.hits)} hits, {len(latency.misses)} misses; "
            f"the top {options.max_loaded} models' share, the best a cache of {options.max_loaded} can do: "
            f"{top_share:.1%})"
        )
        for label, values in (
            ("multi-model hits", latency.hits),
            ("multi-model misses", latency.misses),
            (f"multi-model, {name_of(popularity.top)} only", latency.one),
            ("single-model", latency.single),
        ):
            print(
                f"  {label:29s} p50 {percentile(values, 50):8.3f} ms   p99 {percentile(values, 99):8.3f} ms"
            )
        print(
            f"  hit p50 / single-model p50 = x{ratio:.3f}, {hit_p50 - single_p50:+.3f} ms "
            f"(target within 10%: {'met' if ratio <= 1.10 else 'MISSED'}); "
            f"hit p99 / single-model p99 = x{percentile(latency.hits, 99) / percentile(latency.single, 99):.3f}; "
            f"one model only p50 / single-model p50 = x{percentile(latency.one, 50) / single_p50:.3f}"
        )
        print(
            f"  a miss: p50 {percentile(latency.misses, 50):.3f} ms against the replica's own load time "
            f"(median loadSeconds of the {len(loaded)} loaded models) {load_ms:.3f} ms and ONNX Runtime's "
            f"session creation + first run in this process {raw_ms:.3f} ms (destruction, which an "
            f"eviction adds, {raw_destroy_ms:.3f} ms); measured model size "
            f"median {model_kib:.0f} KiB"
        )

        rates = {
            label: sum(x.requests for x in runs) / sum(x.seconds for x in runs)
            for label, runs in loads.items()
        }
        errors = {label: sum(x.errors for x in runs) for label, runs in loads.items()}
        hits, misses = zipf_counters
        print(
            f"\nthroughput, {options.concurrency} keep-alive connections, {options.seconds:g} s each in "
            f"{options.slices} turns of {per_slice:g} s ({load.name}):"
        )
        print(
            f"  multi-model, Zipf over {options.models}:      {rates['zipf']:8.0f} req/s  "
            f"x{rates['zipf'] / rates['single']:.3f} of single-model "
            f"(hit rate under load {hits / max(1.0, hits + misses):.1%}, {misses:.0f} requests missed)"
        )
        print(
            f"  multi-model, all on {name_of(popularity.top)}:    {rates['one']:8.0f} req/s  "
            f"x{rates['one'] / rates['single']:.3f} of single-model (every request a hit)"
        )
        print(f"  single-model {name_of(popularity.top)}:           {rates['single']:8.0f} req/s")
        if any(errors.values()):
            print(f"  errors (non-2xx or socket): {errors}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
