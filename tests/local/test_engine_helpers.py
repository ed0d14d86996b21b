"""How planned Deployments become local processes (pure helpers), and the model cache."""

from __future__ import annotations

import asyncio
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from berth_operator.api import Endpoint, EndpointConfig, Model
from berth_operator.local.engine import (
    container_env,
    desired_replicas,
    local_settings,
    model_source,
)
from berth_operator.local.modelcache import ModelCache
from berth_operator.planner import ObjectRef, Observed, PlanInput, plan_endpoint
from berth_operator.settings import Settings
from berth_serving.config import ENV

from .support import config, endpoint, model, variant


def plan_objects(autoscaling: bool = False) -> tuple[list[dict], dict]:
    spec = model("m", "file:///models/m.onnx")
    spec["spec"]["env"] = [
        {"name": "FEATURE_FLAG", "value": "on"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ]
    models = {"m": Model.model_validate(spec)}
    v = variant("a", "m", count=2)
    if autoscaling:
        v["autoscaling"] = {"minReplicas": 3, "maxReplicas": 5, "targetCPUUtilization": 70}
    cfg = EndpointConfig.model_validate(config("c1", [v]))
    plan = plan_endpoint(
        PlanInput(
            Endpoint.model_validate(endpoint("ep", "c1")),
            {"c1": cfg},
            models,
            local_settings(Settings(), 8080),
            Observed(now=datetime(2026, 1, 1, tzinfo=UTC)),
        )
    )
    (deployment,) = [o for o in plan.objects if o["kind"] == "Deployment"]
    return plan.objects, deployment


def test_serving_env_minus_what_belongs_to_a_pod() -> None:
    _, deployment = plan_objects()
    env, skipped = container_env(deployment)
    assert env[ENV["variant"]] == "a" and env["FEATURE_FLAG"] == "on"
    for pod_only in (ENV["host"], ENV["port"], ENV["model_uri"]):
        assert pod_only not in env
    assert skipped == ["TOKEN"]  # valueFrom cannot be resolved without a cluster


def test_model_source_and_replicas() -> None:
    objects, deployment = plan_objects()
    models = {("default", "m"): Model.model_validate(model("m", "file:///models/m.onnx"))}
    assert model_source(deployment, models) == ("file:///models/m.onnx", None)
    with pytest.raises(ValueError, match="no Model m to fetch"):  # the Model, never args parsed back
        model_source(deployment, {})
    applied = {ObjectRef.of(o): o for o in objects}
    assert desired_replicas(deployment, applied) == 2
    objects, deployment = plan_objects(autoscaling=True)
    assert "replicas" not in deployment["spec"]
    assert desired_replicas(deployment, {ObjectRef.of(o): o for o in objects}) == 3  # the HPA's floor


def test_model_cache_fetches_once_and_follows_file_changes(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    source.write_bytes(b"model-1")
    cache = ModelCache(tmp_path / "cache")
    uri = f"file://{source}"

    async def get(sha: str | None = None) -> Path:
        return await cache.get(uri, sha)

    first = asyncio.run(get())
    assert first.read_bytes() == b"model-1" and first.is_relative_to(tmp_path / "cache")
    assert asyncio.run(get()) == first
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 1
    source.write_bytes(b"model-2, rebuilt")
    os.utime(source, ns=(1, 2))  # a different mtime: a different cache entry
    second = asyncio.run(get())
    assert second != first and second.read_bytes() == b"model-2, rebuilt"
    digest = hashlib.sha256(b"model-2, rebuilt").hexdigest()
    assert asyncio.run(get(digest)).read_bytes() == b"model-2, rebuilt"
    with pytest.raises(Exception, match="sha256"):
        asyncio.run(get("0" * 64))
