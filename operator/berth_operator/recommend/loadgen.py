"""One load step with Locust, in a process of its own: `python -m berth_operator.recommend.loadgen`.

Locust (locust.io) is the load generator: a maintained library whose users are real HTTP clients
(FastHttpUser, geventhttpclient) and whose runner ramps them up and down for us. It runs in a
child process because importing it patches the standard library for gevent, which must never
touch the recommender's own process. Latencies are taken from Locust's request events at full
precision (its own histogram rounds to whole milliseconds, too coarse for sub-millisecond models);
the process prints one JSON line with the step's figures and its own CPU use, so the caller can
tell when the generator, not the server, was the limit.

The users are closed-loop (each waits for its answer before sending again): a step measures the
throughput and latency at that concurrency, which is what sizing a variant needs.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def run_step(
    url: str,
    payload: bytes,
    content_type: str,
    users: int,
    warmup: float,
    seconds: float,
    users_per_minute: float = 0.0,
) -> dict[str, Any]:
    import gevent
    from locust import FastHttpUser, constant, events, task
    from locust.env import Environment

    base, _, path = url.partition("://")[2].partition("/")
    host = url[: url.index("://") + 3] + base
    latencies: list[float] = []
    failures = [0]
    recording = [False]

    @events.request.add_listener
    def on_request(response_time: float, exception: Exception | None, **_: Any) -> None:
        if not recording[0]:
            return
        if exception is not None:
            failures[0] += 1
        latencies.append(response_time)

    class Caller(FastHttpUser):
        wait_time = constant(0)

        @task
        def invoke(self) -> None:
            with self.client.post(
                "/" + path,
                data=payload,  # type: ignore[arg-type]  # bytes go out as they are (its docstring says so)
                headers={"Content-Type": content_type},
                catch_response=True,
            ) as answer:
                if answer.status_code != 200:
                    answer.failure(f"{answer.status_code}")

    Caller.host = host
    env = Environment(user_classes=[Caller], events=events)
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=users)
    gevent.sleep(warmup)
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    recording[0] = True
    if users_per_minute <= 0:
        gevent.sleep(seconds)
    else:  # an Advanced job's phase: users grow at spawnRate per minute while it lasts
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            wanted = users + int(users_per_minute * elapsed / 60)
            if wanted != runner.user_count:
                runner.start(wanted, spawn_rate=max(1.0, users_per_minute / 60))
            gevent.sleep(min(0.5, seconds - elapsed))
    recording[0] = False
    final_users = runner.user_count
    cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
    runner.quit()
    ordered = sorted(latencies)

    def percentile(share: float) -> float:
        if not ordered:
            return float("inf")
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    return {
        "concurrency": final_users,
        "requests": len(ordered),
        "failures": failures[0],
        "seconds": wall,
        "p50_ms": percentile(0.50),
        "p95_ms": percentile(0.95),
        "p99_ms": percentile(0.99),
        "generator_busy": cpu / wall if wall > 0 else 0.0,
    }


def main(argv: list[str]) -> int:
    url, payload_path, content_type, users, warmup, seconds, per_minute, *termination_log = argv
    with open(payload_path, "rb") as handle:
        payload = handle.read()
    result = run_step(
        url, payload, content_type, int(users), float(warmup), float(seconds), float(per_minute)
    )
    line = json.dumps(result)
    print(line, flush=True)
    for path in termination_log:  # in a cluster Job: the pod's termination message carries it out
        with open(path, "w") as handle:
            handle.write(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
