"""A real HTTP server on loopback that serves a fleet's /metrics in Prometheus text, like `berth serve`."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class FleetMetricsServer:
    """Every scrape first records `ok` 200s and `errors` 500s more, so the counters keep rising."""

    def __init__(
        self,
        ok_per_scrape: int = 20,
        errors_per_scrape: int = 0,
        latency_seconds: float = 0.004,
        capture_drops_per_scrape: int = 0,
    ) -> None:
        self.registry = CollectorRegistry()
        self.invocations = Counter(
            "berth_invocations", "Invocations by code", ["code"], registry=self.registry
        )
        self.latency = Histogram("berth_model_latency_seconds", "Model latency", registry=self.registry)
        self.capture_dropped = Counter(
            "berth_capture_dropped", "Captured events dropped", ["variant", "reason"], registry=self.registry
        )
        self.capture_drops_per_scrape = capture_drops_per_scrape
        self.ok_per_scrape = ok_per_scrape
        self.errors_per_scrape = errors_per_scrape
        self.latency_seconds = latency_seconds
        self.scrapes = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                body = server.scrape()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def scrape(self) -> bytes:
        self.scrapes += 1
        self.invocations.labels("200").inc(self.ok_per_scrape)
        if self.errors_per_scrape:
            self.invocations.labels("500").inc(self.errors_per_scrape)
        for _ in range(self.ok_per_scrape + self.errors_per_scrape):
            self.latency.observe(self.latency_seconds)
        if self.capture_drops_per_scrape:
            self.capture_dropped.labels("blue", "upload_failed").inc(self.capture_drops_per_scrape)
        return generate_latest(self.registry)

    def __enter__(self) -> FleetMetricsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
