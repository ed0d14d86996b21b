"""Metrics of a fleet for auto rollback: its pods' own /metrics, or a Prometheus query. The I/O
only: planner/fleetmetrics.py reduces what is read, as it does for local mode.

Counters are cumulative since each pod started; the planner compares them over a bake. A pod
that cannot be scraped within the short timeout is skipped with a log line: a slow pod must
not stall the reconcile of the whole Endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from typing import Any

import aiohttp
from berth_serving.config import DEFAULT_PORT
from berth_serving.metrics import INVOCATIONS_TOTAL, MODEL_LATENCY

from .planner.fleetmetrics import from_series, from_texts
from .planner.types import FleetMetrics, Manifest

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


# --------------------------------------------------------------------------- addresses (pure)


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
    return from_texts(scraped) if scraped else None


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
        by_code = await _prom_query(session, base, f"sum by (code) ({INVOCATIONS_TOTAL}{{{selector}}})")
        buckets = await _prom_query(session, base, f"sum by (le) ({MODEL_LATENCY}_bucket{{{selector}}})")
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        log.info("prometheus query at %s failed: %s", base, exc)
        return None
    if not by_code and not buckets:
        return None
    requests: dict[str, float] = {}
    for series in by_code:
        code = str(series.get("metric", {}).get("code", ""))
        requests[code] = requests.get(code, 0.0) + float(series["value"][1])
    latency = {float(series["metric"]["le"]): float(series["value"][1]) for series in buckets}
    return from_series(requests, latency)
