"""The operator and local mode read the same /metrics text and take the same rollback decision.

They once reduced it apart: the operator interpolated p99 inside its bucket (22 ms), local mode
took the bucket's upper bound (25 ms), so a 23 ms limit rolled back in one mode and not the other.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from berth_operator.api import DeploymentConfig
from berth_operator.local.engine import Engine
from berth_operator.local.modelcache import ModelCache
from berth_operator.local.router import Router
from berth_operator.planner.rollout import metrics_breach
from berth_operator.scrape import scrape_pods
from berth_operator.settings import Settings

# 100 requests: 60 within 20 ms, all within 25 ms. p99: rank 99 of 100 inside (20, 25] ms.
TEXT = b"""# TYPE berth_invocations_total counter
berth_invocations_total{code="200",model="m",variant="v"} 100
# TYPE berth_model_latency_seconds histogram
berth_model_latency_seconds_bucket{le="0.02",model="m",variant="v"} 60
berth_model_latency_seconds_bucket{le="0.025",model="m",variant="v"} 100
berth_model_latency_seconds_bucket{le="+Inf",model="m",variant="v"} 100
berth_model_latency_seconds_count{model="m",variant="v"} 100
berth_model_latency_seconds_sum{model="m",variant="v"} 2.1
"""


@pytest.fixture
def metrics_port() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(TEXT)))
            self.end_headers()
            self.wfile.write(TEXT)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_both_shells_reduce_the_same_text_to_one_decision(metrics_port: int, tmp_path: Path) -> None:
    pod = {
        "metadata": {"name": "p"},
        "spec": {"containers": [{"ports": [{"name": "http", "containerPort": metrics_port}]}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1"},
    }

    async def both() -> tuple[Any, Any]:
        async with aiohttp.ClientSession() as session:
            operator = await scrape_pods(session, [pod])
        engine = Engine(Settings(), ModelCache(tmp_path / "cache"), tmp_path, Router())
        try:
            local = await engine.scrape([f"http://127.0.0.1:{metrics_port}/metrics"])
        finally:
            await engine.shutdown()
        return operator, local

    operator, local = asyncio.run(both())
    assert operator == local
    assert local.p99_latency_ms == pytest.approx(20 + 5 * (99 - 60) / 40)  # 24.875 ms, interpolated
    policy = DeploymentConfig.model_validate({"autoRollback": {"maxP99LatencyMs": 24.9}})
    assert metrics_breach(policy, operator) is None and metrics_breach(policy, local) is None
    stricter = DeploymentConfig.model_validate({"autoRollback": {"maxP99LatencyMs": 24.8}})
    assert metrics_breach(stricter, operator) == metrics_breach(stricter, local) == "p99 25ms > 24.8ms"
