"""Metrics of a fleet for auto rollback: its pods' own /metrics, or a Prometheus query.

Counters are cumulative since each pod started; the planner compares them over a bake. A pod
that cannot be scraped within the short timeout is skipped with a log line: a slow pod must
not stall the reconcile of the whole Endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .planner.types import FleetMetrics, Manifest

log = logging.getLogger(__name__)

INVOCATIONS = "berth_invocations_total"
LATENCY = "berth_model_latency_seconds"
DEFAULT_PORT = 8080
SCRAPE_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


# --------------------------------------------------------------------------- parsing (pure)


def _is_5xx(code: str) -> bool:
    return code.startswith("5")


def _quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets {upper bound: count}."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound  # the answer lies above the largest finite bucket
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (
                count - previous_count
            )
        previous_bound, previous_count = bound, count
    return previous_bound


class MetricsSum:
    """Counters summed over pods: requests, 5xx answers and latency histogram buckets."""

    def __init__(self) -> None:
        self.requests = 0.0
        self.errors_5xx = 0.0
        self.buckets: dict[float, float] = {}

    def add_text(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == INVOCATIONS:
                    self.requests += sample.value
                    if _is_5xx(str(sample.labels.get("code", ""))):
                        self.errors_5xx += sample.value
                elif sample.name == f"{LATENCY}_bucket":
                    bound = float(sample.labels["le"])
                    self.buckets[bound] = self.buckets.get(bound, 0.0) + sample.value

    def result(self) -> FleetMetrics:
        p99 = _quantile(self.buckets, 0.99)
        return FleetMetrics(
            requests=self.requests,
            errors_5xx=self.errors_5xx,
            p99_latency_ms=None if p99 is None else p99 * 1000.0,
        )


def parse_metrics(texts: Iterable[str]) -> FleetMetrics:
    """FleetMetrics from the Prometheus text of each pod of a fleet."""
    total = MetricsSum()
    for text in texts:
        total.add_text(text)
    return total.result()


def pod_metrics_url(pod: Manifest) -> str | None:
    """http://POD_IP:PORT/metrics, the port being the serving container's `http` port (else 8080)."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    ports = [p for c in (pod.get("spec") or {}).get("containers") or [] for p in c.get("ports") or []]
    named = [p for p in ports if p.get("name") == "http"]
    chosen = (named or ports or [{"containerPort": DEFAULT_PORT}])[0]
    port = int(chosen.get("containerPort", DEFAULT_PORT))
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/metrics"


def pod_is_running(pod: Manifest) -> bool:
    meta = pod.get("metadata") or {}
    return (pod.get("status") or {}).get("phase") == "Running" and not meta.get("deletionTimestamp")


# --------------------------------------------------------------------------- fetching


async def _scrape_pod(session: aiohttp.ClientSession, url: str) -> str | None:
    try:
        async with session.get(url, timeout=SCRAPE_TIMEOUT) as response:
            if response.status != 200:
                log.info("skipping %s: HTTP %s", url, response.status)
                return None
            return await response.text()
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        log.info("skipping %s: %s", url, exc or type(exc).__name__)
        return None


async def scrape_pods(session: aiohttp.ClientSession, pods: Iterable[Manifest]) -> FleetMetrics | None:
    """Sum of the /metrics of the running pods; None when no pod could be scraped."""
    urls = [url for pod in pods if pod_is_running(pod) and (url := pod_metrics_url(pod))]
    if not urls:
        return None
    texts = await asyncio.gather(*(_scrape_pod(session, url) for url in urls))
    scraped = [text for text in texts if text is not None]
    return parse_metrics(scraped) if scraped else None


def _promql_selector(namespace: str, pod_names: Iterable[str]) -> str:
    # `namespace` and `pod` are the target labels the Prometheus Operator's Pod/ServiceMonitors set.
    pods = "|".join(re.escape(name) for name in sorted(pod_names))
    return f'namespace="{namespace}",pod=~"{pods}"'


async def _prom_query(session: aiohttp.ClientSession, base: str, query: str) -> list[dict[str, Any]]:
    async with session.get(
        f"{base.rstrip('/')}/api/v1/query", params={"query": query}, timeout=SCRAPE_TIMEOUT
    ) as r:
        r.raise_for_status()
        body = await r.json()
    result: list[dict[str, Any]] = body.get("data", {}).get("result", [])
    return result


async def query_prometheus(
    session: aiohttp.ClientSession, base: str, namespace: str, pod_names: Iterable[str]
) -> FleetMetrics | None:
    """The same sums from Prometheus, over the fleet's pods (by their `namespace` and `pod` labels)."""
    names = list(pod_names)
    if not names:
        return None
    selector = _promql_selector(namespace, names)
    try:
        by_code = await _prom_query(session, base, f"sum by (code) ({INVOCATIONS}{{{selector}}})")
        buckets = await _prom_query(session, base, f"sum by (le) ({LATENCY}_bucket{{{selector}}})")
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        log.info("prometheus query at %s failed: %s", base, exc)
        return None
    if not by_code and not buckets:
        return None
    total = MetricsSum()
    for series in by_code:
        value = float(series["value"][1])
        total.requests += value
        if _is_5xx(str(series.get("metric", {}).get("code", ""))):
            total.errors_5xx += value
    for series in buckets:
        total.buckets[float(series["metric"]["le"])] = float(series["value"][1])
    return total.result()
