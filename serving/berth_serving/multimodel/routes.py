"""The repository API of a multi-model replica, on the REST app: `GET /models` (what is
loaded, sizes, last use, request counts) and Triton's model repository extension
(`POST /v2/repository/index`, `.../models/NAME/load`, `.../models/NAME/unload`); and its
/metrics, the per-model families merged into one exposition."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from berth_serving.metrics import Metrics
from berth_serving.multimodel.host import MultiModelHost
from berth_serving.tensors import dumps


def _json(document: object) -> Response:
    return Response(dumps(document), media_type="application/json")


def add_repository_routes(rest: FastAPI, host: MultiModelHost) -> None:
    @rest.get("/models")
    async def models() -> Response:
        return _json(host.describe())

    @rest.post("/v2/repository/index")
    async def index() -> Response:
        return _json(await host.index())

    @rest.post("/v2/repository/models/{name:path}/load")
    async def load(name: str) -> Response:
        await host.load(name)  # 404 unknown, 507 too large, 424 a load that failed
        return _json({"name": name, "state": "READY"})

    @rest.post("/v2/repository/models/{name:path}/unload")
    async def unload(name: str) -> Response:
        # Idle: unloaded now; busy: once its last request finishes (Triton's behaviour).
        return _json({"name": name, "unloaded": host.unload(name)})


def merge_families(sources: Iterable[Iterable[Metric]]) -> list[Metric]:
    """One family per name, samples from every source (an exposition must not repeat a name)."""
    merged: dict[str, Metric] = {}
    for families in sources:
        for family in families:
            first = merged.get(family.name)
            if first is None:
                merged[family.name] = family
            else:
                first.samples.extend(family.samples)
    return list(merged.values())


class _Merged(Collector):
    def __init__(self, process: Metrics, host: MultiModelHost) -> None:
        self._process = process
        self._host = host

    def collect(self) -> Iterator[Metric]:
        per_model = [metrics.families() for metrics in self._host.per_model_metrics()]
        # The process registry: its own families and whatever else exports to it (auth's).
        yield from merge_families([self._process.registry.collect(), *per_model, self._host.model_families()])


def multi_model_exposition(process: Metrics, host: MultiModelHost) -> bytes:
    """/metrics of a multi-model replica: requests that named no loadable model count under
    the process's own labels (model=""), the rest under their model."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(process, host))
    return generate_latest(registry)
