"""Admission of asyncInferenceConfig: what the CRD (schema and CEL) refuses, pydantic the same."""

from __future__ import annotations

from typing import Any

import pytest
from berth_operator import api

from tests.crds.test_crds_admission import (
    CRDS,
    Row,
    assert_admitted,
    assert_refused,
    changed,
    config,
    variant,
)
from tests.support.crdcheck import admit

OUTPUT = {"outputUri": "s3://bucket/async/out/"}
ASYNC = {"outputConfig": OUTPUT}
BACKLOG = {"minReplicas": 0, "maxReplicas": 4, "targetBacklogPerInstance": 10}
BLUE = variant("blue")


def async_config(*variants: dict[str, Any], **async_fields: Any) -> dict[str, Any]:
    return config(*(variants or (BLUE,)), asyncInferenceConfig={**ASYNC, **async_fields})


GOOD = [
    Row("async-minimal", async_config()),
    Row(
        "async-full",
        async_config(
            variant("blue", autoscaling=BACKLOG),
            variant("green", autoscaling={**BACKLOG, "minReplicas": 1}),
            outputConfig={
                "outputUri": "s3://bucket/out/",
                "failureUri": "file:///var/berth/failed/",
                "notification": {"successWebhook": "https://hooks.example/ok", "errorWebhook": "http://h/e"},
            },
            clientConfig={"maxConcurrentInvocationsPerInstance": 1000},
        ),
    ),
    Row("async-file-output", async_config(outputConfig={"outputUri": "file:///tmp/out"})),
    Row(
        "async-one-webhook",
        async_config(outputConfig={**OUTPUT, "notification": {"errorWebhook": "https://e"}}),
    ),
    Row("async-shadows-empty-list", config(BLUE, shadowProductionVariants=[], asyncInferenceConfig=ASYNC)),
    Row(
        "realtime-min-one",
        config(variant("blue", autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilization": 60})),
    ),
]

BAD = [
    Row(
        "async-no-output-config",
        config(BLUE, asyncInferenceConfig={}),
        "spec.asyncInferenceConfig.outputConfig",
    ),
    Row(
        "async-no-output-uri",
        async_config(outputConfig={"failureUri": "s3://b/f/"}),
        "spec.asyncInferenceConfig.outputConfig.outputUri",
    ),
    Row("async-output-gs", async_config(outputConfig={"outputUri": "gs://b/out/"}), api.MSG_ASYNC_OUTPUT_URI),
    Row(
        "async-output-bare-scheme",
        async_config(outputConfig={"outputUri": "s3://"}),
        api.MSG_ASYNC_OUTPUT_URI,
    ),
    Row(
        "async-output-https",
        async_config(outputConfig={"outputUri": "https://b/o"}),
        api.MSG_ASYNC_OUTPUT_URI,
    ),
    Row(
        "async-failure-http",
        async_config(outputConfig={**OUTPUT, "failureUri": "http://b/f"}),
        api.MSG_ASYNC_FAILURE_URI,
    ),
    Row(
        "async-webhook-ftp",
        async_config(outputConfig={**OUTPUT, "notification": {"successWebhook": "ftp://h/x"}}),
        api.MSG_ASYNC_WEBHOOK,
    ),
    Row(
        "async-webhook-not-url",
        async_config(outputConfig={**OUTPUT, "notification": {"errorWebhook": "hooks.example"}}),
        api.MSG_ASYNC_WEBHOOK,
    ),
    Row(
        "async-webhook-unknown-field",
        async_config(outputConfig={**OUTPUT, "notification": {"topic": "arn:aws:sns:x"}}),
        "spec.asyncInferenceConfig.outputConfig.notification",
    ),
    Row(
        "async-concurrency-zero",
        async_config(clientConfig={"maxConcurrentInvocationsPerInstance": 0}),
        "spec.asyncInferenceConfig.clientConfig.maxConcurrentInvocationsPerInstance",
    ),
    Row(
        "async-concurrency-too-big",
        async_config(clientConfig={"maxConcurrentInvocationsPerInstance": 1001}),
        "spec.asyncInferenceConfig.clientConfig.maxConcurrentInvocationsPerInstance",
    ),
    Row(
        "async-output-too-long",
        async_config(outputConfig={"outputUri": "s3://b/" + "a" * 1100}),
        "spec.asyncInferenceConfig.outputConfig.outputUri: Too long",
    ),
    Row(
        "async-with-shadow",
        config(BLUE, shadowProductionVariants=[variant("shadow")], asyncInferenceConfig=ASYNC),
        api.MSG_ASYNC_NO_SHADOWS,
    ),
    Row(
        "realtime-min-zero",
        config(variant("blue", autoscaling={"minReplicas": 0, "maxReplicas": 3, "targetCPUUtilization": 60})),
        api.MSG_MIN_ZERO_NEEDS_ASYNC,
    ),
    Row(
        "realtime-shadow-min-zero",
        config(
            BLUE,
            shadowProductionVariants=[
                variant(
                    "shadow", autoscaling={"minReplicas": 0, "maxReplicas": 3, "targetCPUUtilization": 60}
                )
            ],
        ),
        api.MSG_MIN_ZERO_NEEDS_ASYNC,
    ),
    Row(
        "realtime-backlog-target",
        config(variant("blue", autoscaling={**BACKLOG, "minReplicas": 1})),
        api.MSG_BACKLOG_NEEDS_ASYNC,
    ),
    Row(
        "async-cpu-target",
        async_config(
            variant("blue", autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilization": 60})
        ),
        api.MSG_ASYNC_NEEDS_BACKLOG,
    ),
    Row(
        "two-targets",
        async_config(variant("blue", autoscaling={**BACKLOG, "targetInvocationsPerReplica": 5})),
        api.MSG_AUTOSCALING_TARGET,
    ),
    Row(
        "backlog-target-zero",
        async_config(variant("blue", autoscaling={**BACKLOG, "targetBacklogPerInstance": 0})),
        "targetBacklogPerInstance",
    ),
    Row(
        "min-replicas-negative",
        async_config(variant("blue", autoscaling={**BACKLOG, "minReplicas": -1})),
        "spec.productionVariants[0].autoscaling.minReplicas",
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


def test_failure_location_is_derived_from_the_output_location() -> None:
    spec = api.EndpointConfig.model_validate(async_config()).spec
    assert spec.async_inference_config is not None
    output = spec.async_inference_config.output_config
    assert output.failure_location == "s3://bucket/async/out/failures/"
    given = api.EndpointConfig.model_validate(
        async_config(outputConfig={"outputUri": "s3://b/out", "failureUri": "s3://b/bad/"})
    ).spec.async_inference_config
    assert given is not None and given.output_config.failure_location == "s3://b/bad/"
    assert spec.async_inference_config.client_config.max_concurrent_invocations_per_instance == 4


def test_the_config_stays_immutable() -> None:
    old = async_config()
    new = changed(old, "spec.asyncInferenceConfig.outputConfig.outputUri", "s3://other/")
    assert any(api.MSG_CONFIG_IMMUTABLE in m for m in admit(CRDS["EndpointConfig"], new, old=old))
