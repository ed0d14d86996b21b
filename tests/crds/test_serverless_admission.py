"""Admission of serverlessConfig and Model.spec.warmupRequests: the CRD (schema and CEL) and
pydantic refuse the same rows, naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from berth_operator import api

from tests.crds.test_crds_admission import (
    Row,
    assert_admitted,
    assert_refused,
    config,
    variant,
)

SERVERLESS = {"memorySizeInMB": 2048}
OUTPUT = {"outputUri": "s3://bucket/async/out/"}


def serverless(name: str = "blue", **fields: Any) -> dict[str, Any]:
    return {"variantName": name, "modelName": "fraud-v1", "serverlessConfig": {**SERVERLESS, **fields}}


def model(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "Model",
        "metadata": {"name": "fraud-v1"},
        "spec": {"modelUri": "s3://models/fraud.onnx", **spec},
    }


GOOD = [
    Row("serverless-minimal", config(serverless())),
    Row(
        "serverless-full",
        config(
            serverless(
                memorySizeInMB=6144,
                maxConcurrency=200,
                provisionedConcurrency=200,
                idleSeconds=10,
                coldStartTimeoutSeconds=900,
                maxHeldRequests=0,
            )
        ),
    ),
    Row("serverless-beside-provisioned", config(serverless("cold"), variant("warm", initialVariantWeight=3))),
    Row("serverless-smallest", config(serverless(memorySizeInMB=1024, maxConcurrency=1))),
    Row(
        "model-warmup",
        model(warmupRequests=[{"body": '{"inputs": [[1.0]]}'}, {"contentType": "text/csv", "body": "1,2"}]),
    ),
]

BAD = [
    Row(
        "neither-instance-nor-serverless",
        config({"variantName": "blue", "modelName": "fraud-v1"}),
        api.MSG_SERVERLESS_OR_INSTANCE,
    ),
    Row(
        "both-instance-and-serverless",
        config({**serverless(), "instanceType": "cpu-small"}),
        api.MSG_SERVERLESS_OR_INSTANCE,
    ),
    Row(
        "serverless-with-count",
        config({**serverless(), "initialInstanceCount": 2}),
        api.MSG_SERVERLESS_NO_COUNT,
    ),
    Row(
        "serverless-with-autoscaling",
        config(
            {**serverless(), "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "targetCPUUtilization": 50}}
        ),
        api.MSG_SERVERLESS_NO_AUTOSCALING,
    ),
    Row(
        "serverless-with-gpu",
        config({**serverless(), "resources": {"limits": {"nvidia.com/gpu": 1}}}),
        api.MSG_SERVERLESS_NO_RESOURCES,
    ),
    Row("memory-off-step", config(serverless(memorySizeInMB=1500)), api.MSG_SERVERLESS_MEMORY_STEP),
    Row(
        "memory-too-small",
        config(serverless(memorySizeInMB=512)),
        "spec.productionVariants[0].serverlessConfig.memorySizeInMB",
    ),
    Row(
        "memory-too-large",
        config(serverless(memorySizeInMB=7168)),
        "spec.productionVariants[0].serverlessConfig.memorySizeInMB",
    ),
    Row(
        "concurrency-zero",
        config(serverless(maxConcurrency=0)),
        "spec.productionVariants[0].serverlessConfig.maxConcurrency",
    ),
    Row(
        "concurrency-too-high",
        config(serverless(maxConcurrency=201)),
        "spec.productionVariants[0].serverlessConfig.maxConcurrency",
    ),
    Row(
        "provisioned-over-max",
        config(serverless(maxConcurrency=5, provisionedConcurrency=6)),
        api.MSG_SERVERLESS_PROVISIONED,
    ),
    Row(
        "provisioned-over-default-max",
        config(serverless(provisionedConcurrency=21)),
        api.MSG_SERVERLESS_PROVISIONED,
    ),
    Row(
        "idle-too-short",
        config(serverless(idleSeconds=1)),
        "spec.productionVariants[0].serverlessConfig.idleSeconds",
    ),
    Row(
        "timeout-zero",
        config(serverless(coldStartTimeoutSeconds=0)),
        "spec.productionVariants[0].serverlessConfig.coldStartTimeoutSeconds",
    ),
    Row(
        "held-negative",
        config(serverless(maxHeldRequests=-1)),
        "spec.productionVariants[0].serverlessConfig.maxHeldRequests",
    ),
    Row(
        "serverless-unknown-field",
        config(serverless(memory=2048)),
        "spec.productionVariants[0].serverlessConfig",
    ),
    Row(
        "serverless-shadow",
        config(variant("blue"), shadowProductionVariants=[serverless("shadow")]),
        api.MSG_SERVERLESS_NO_SHADOWS,
    ),
    Row(
        "serverless-async",
        config(serverless(), asyncInferenceConfig={"outputConfig": OUTPUT}),
        api.MSG_SERVERLESS_NOT_ASYNC,
    ),
    Row(
        "warmup-no-body",
        model(warmupRequests=[{"contentType": "application/json"}]),
        "spec.warmupRequests[0].body",
    ),
    Row("warmup-too-many", model(warmupRequests=[{"body": "{}"}] * 11), "spec.warmupRequests"),
    Row(
        "warmup-body-too-large", model(warmupRequests=[{"body": "x" * 70_000}]), "spec.warmupRequests[0].body"
    ),
]
ROWS = GOOD + BAD


def test_rows_are_distinct() -> None:
    assert len({row.id for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", GOOD, ids=lambda row: row.id)
def test_admitted(row: Row) -> None:
    assert_admitted(row)


@pytest.mark.parametrize("row", BAD, ids=lambda row: row.id)
def test_refused_naming_the_field(row: Row) -> None:
    assert_refused(row)


def test_defaults_follow_the_contract() -> None:
    spec = api.EndpointConfig.model_validate(config(serverless())).spec
    found = spec.production_variants[0].serverless_config
    assert found is not None
    assert (found.max_concurrency, found.provisioned_concurrency, found.idle_seconds) == (20, 0, 300)
    assert (found.cold_start_timeout_seconds, found.max_held_requests) == (180, 100)
