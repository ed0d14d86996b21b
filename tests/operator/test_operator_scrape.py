"""Prometheus text of the serving pods -> FleetMetrics, and scraping real HTTP servers."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import aiohttp
import pytest
from berth_operator.planner.fleetmetrics import from_texts as parse_metrics
from berth_operator.scrape import pod_metrics_url, query_prometheus, scrape_pods

from tests.operator.metrics_server import FleetMetricsServer

POD_TEXT = """\
# TYPE berth_invocations_total counter
berth_invocations_total{code="200",variant="blue"} 90
berth_invocations_total{code="503",variant="blue"} 6
berth_invocations_total{code="400",variant="blue"} 4
# TYPE berth_model_latency_seconds histogram
berth_model_latency_seconds_bucket{le="0.01"} 50
berth_model_latency_seconds_bucket{le="0.1"} 99
berth_model_latency_seconds_bucket{le="1.0"} 100
berth_model_latency_seconds_bucket{le="+Inf"} 100
berth_model_latency_seconds_count 100
berth_model_latency_seconds_sum 3.0
"""


def test_sums_pods_and_counts_only_5xx_as_errors():
    metrics = parse_metrics([POD_TEXT, POD_TEXT])
    assert metrics.requests == 200
    assert metrics.errors_5xx == 12
    assert metrics.error_rate_percent == pytest.approx(6.0)


def test_p99_interpolates_within_the_bucket():
    metrics = parse_metrics([POD_TEXT])
    # rank 99 of 100 falls exactly at the top of the 0.1 s bucket
    assert metrics.p99_latency_ms == pytest.approx(100.0)


def test_no_histogram_means_no_p99():
    metrics = parse_metrics(['berth_invocations_total{code="200"} 3\n'])
    assert metrics.p99_latency_ms is None and metrics.requests == 3


def test_metrics_url_prefers_the_http_port():
    pod = {
        "spec": {
            "containers": [
                {"ports": [{"name": "grpc", "containerPort": 9000}, {"name": "http", "containerPort": 8081}]}
            ]
        },
        "status": {"podIP": "10.0.0.7"},
    }
    assert pod_metrics_url(pod) == "http://10.0.0.7:8081/metrics"
    assert pod_metrics_url({"spec": {}, "status": {"podIP": "10.0.0.8"}}) == "http://10.0.0.8:8080/metrics"
    assert pod_metrics_url({"spec": {}, "status": {}}) is None


@pytest.mark.timeout(20)
def test_scrapes_running_pods_and_skips_unreachable_ones():
    def pod(port: int, phase: str = "Running") -> dict:
        return {
            "metadata": {"name": f"p{port}"},
            "spec": {"containers": [{"ports": [{"name": "http", "containerPort": port}]}]},
            "status": {"phase": phase, "podIP": "127.0.0.1"},
        }

    async def scrape(pods: list[dict]):
        async with aiohttp.ClientSession() as session:
            return await scrape_pods(session, pods)

    with (
        FleetMetricsServer(ok_per_scrape=10, errors_per_scrape=5) as a,
        FleetMetricsServer(ok_per_scrape=5) as b,
    ):
        # A closed port (the server's own after shutdown would do; 1 is never open here).
        result = asyncio.run(scrape([pod(a.port), pod(b.port), pod(1), pod(a.port, phase="Pending")]))
    assert result is not None
    assert result.requests == 20 and result.errors_5xx == 5
    assert asyncio.run(scrape([pod(1)])) is None


class FakePrometheus:
    """A loopback HTTP server answering /api/v1/query like Prometheus, recording the queries."""

    def __init__(self) -> None:
        self.queries: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)["query"][0]
                outer.queries.append(query)
                if "by (code)" in query:
                    result = [
                        {"metric": {"code": "200"}, "value": [0, "80"]},
                        {"metric": {"code": "500"}, "value": [0, "20"]},
                    ]
                else:
                    result = [
                        {"metric": {"le": "0.05"}, "value": [0, "50"]},
                        {"metric": {"le": "0.5"}, "value": [0, "100"]},
                        {"metric": {"le": "+Inf"}, "value": [0, "100"]},
                    ]
                body = json.dumps(
                    {"status": "success", "data": {"resultType": "vector", "result": result}}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakePrometheus:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.timeout(20)
def test_prometheus_queries_select_the_fleet_pods():
    async def query(url: str):
        async with aiohttp.ClientSession() as session:
            return await query_prometheus(session, url, "ml", ["ep-cfg2-blue-1", "ep-cfg2-blue-2"])

    with FakePrometheus() as prometheus:
        metrics = asyncio.run(query(prometheus.url))
    assert metrics is not None
    assert metrics.requests == 100 and metrics.error_rate_percent == pytest.approx(20.0)
    assert metrics.p99_latency_ms == pytest.approx(491.0)  # 50 + 450 * (99 - 50) / 50
    assert all(
        'namespace="ml"' in q and 'pod=~"ep\\-cfg2\\-blue\\-1|ep\\-cfg2\\-blue\\-2"' in q
        for q in prometheus.queries
    )
