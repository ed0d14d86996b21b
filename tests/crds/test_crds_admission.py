"""What the API server admits and refuses with our CRDs, and that pydantic agrees row by row."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest
from berth_operator import api
from pydantic import ValidationError

from tests.support.crdcheck import admit, berth_crds

CRDS = berth_crds()
SHA = "9f2c" + "0" * 60


def model(name: str = "fraud-v1", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "Model",
        "metadata": {"name": name},
        "spec": {"modelUri": "s3://models/fraud/v1/model.onnx", **spec},
    }


def variant(name: str, **fields: Any) -> dict[str, Any]:
    return {"variantName": name, "modelName": "fraud-v1", "instanceType": "cpu-small", **fields}


def config(*variants: dict[str, Any], name: str = "fraud-config", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "EndpointConfig",
        "metadata": {"name": name},
        "spec": {"productionVariants": list(variants), **spec},
    }


def endpoint(name: str = "fraud", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "Endpoint",
        "metadata": {"name": name},
        "spec": {"endpointConfigName": "fraud-config", **spec},
    }


def changed(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of obj with the dotted path set (list indexes as numbers)."""
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return out


@dataclass
class Row:
    id: str
    obj: dict[str, Any]
    refused_with: str | None = None  # a substring of the API server's message; None = admitted
    old: dict[str, Any] | None = None  # an update from this object (transition rules)


BLUE = variant("blue")
GREEN = variant("green")
SCALING = {"minReplicas": 1, "maxReplicas": 5, "targetInvocationsPerReplica": 50}
CANARY = {"blueGreen": {"trafficRouting": {"type": "Canary", "canarySize": {"type": "Percent", "value": 10}}}}

GOOD = [
    Row("model-minimal", model()),
    Row(
        "model-full",
        model(
            sha256=SHA,
            image="ghcr.io/acme/onnx-server:1.2",
            env=[
                {"name": "LOG_LEVEL", "value": "debug"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "t"}}},
            ],
            credentialsSecretRef={"name": "s3-creds"},
            serviceAccountName="fraud-reader",
            runtime={
                "maxBatchSize": 64,
                "maxBatchDelayMs": 0.5,
                "intraOpThreads": 2,
                "graphOptimizationLevel": "basic",
            },
        ),
    ),
    Row(
        "model-with-status",
        {
            **model(),
            "status": {
                "observedGeneration": 1,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "Found",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ],
            },
        },
    ),
    Row("model-other-schemes", model(modelUri="pvc://models/fraud/model.tar.gz")),
    Row("config-minimal", config(BLUE)),
    Row(
        "config-full",
        config(
            variant("blue", initialInstanceCount=2, initialVariantWeight=3, autoscaling=SCALING),
            variant(
                "green",
                initialVariantWeight=0.5,
                resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"nvidia.com/gpu": 1}},
                autoscaling={"maxReplicas": 4, "targetCPUUtilization": 70, "scaleInCooldownSeconds": 0},
            ),
            shadowProductionVariants=[variant("shadow", modelName="fraud-v2")],
        ),
    ),
    Row("config-one-weight-zero", config(variant("blue", initialVariantWeight=0), GREEN)),
    Row("config-ten-variants", config(*[variant(f"v{i}") for i in range(10)])),
    Row("endpoint-minimal", endpoint()),
    Row(
        "endpoint-full",
        endpoint(
            deploymentConfig={
                **CANARY,
                "autoRollback": {"maxErrorRatePercent": 2.5, "maxP99LatencyMs": 250},
            },
            variantOverrides=[{"variantName": "blue", "desiredWeight": 3, "desiredInstanceCount": 4}],
        ),
    ),
    Row(
        "endpoint-with-status",
        {
            **endpoint(),
            "status": {
                "phase": "Updating",
                "url": "http://gw/endpoints/default/fraud/invocations",
                "endpointConfigName": "fraud-config",
                "pendingEndpointConfigName": "fraud-config-v2",
                "productionVariants": [{"variantName": "blue", "modelName": "fraud-v1", "currentWeight": 1}],
                "rollout": {
                    "targetEndpointConfigName": "fraud-config-v2",
                    "startedAt": "2026-01-01T00:00:00Z",
                    "trafficShiftedPercent": 10,
                    "state": "Baking",
                    "retainedInstanceCounts": {"blue": 2},
                },
            },
        },
    ),
    # Updates: an Endpoint moves between configs; metadata of an immutable kind may change.
    Row("endpoint-update-config", endpoint(endpointConfigName="fraud-config-v2"), old=endpoint()),
    Row("endpoint-auth-rbac", endpoint(auth={"mode": "KubernetesRBAC"})),
    Row("endpoint-auth-api-key", endpoint(auth={"mode": "APIKey", "secretRef": {"name": "fraud-keys"}})),
    Row("endpoint-auth-open", endpoint(auth={"mode": "None"})),
    Row("config-update-labels", changed(config(BLUE), "metadata.labels", {"team": "risk"}), old=config(BLUE)),
    Row("model-update-same-spec", model(), old=model()),
]

UNIQUE = api.MSG_VARIANT_NAMES_UNIQUE
BAD = [
    Row("dup-variant-names", config(BLUE, variant("blue", modelName="other")), UNIQUE),
    Row("dup-production-shadow", config(BLUE, shadowProductionVariants=[variant("blue")]), UNIQUE),
    Row("dup-within-shadow", config(BLUE, shadowProductionVariants=[GREEN, GREEN]), UNIQUE),
    Row(
        "variant-name-uppercase",
        config(variant("Blue")),
        'spec.productionVariants[0].variantName: Invalid value: "Blue"',
    ),
    Row("variant-name-underscore", config(variant("blue_1")), "spec.productionVariants[0].variantName"),
    Row(
        "variant-name-too-long", config(variant("a" * 64)), "spec.productionVariants[0].variantName: Too long"
    ),
    Row(
        "negative-weight",
        config(variant("blue", initialVariantWeight=-1), GREEN),
        "spec.productionVariants[0].initialVariantWeight: Invalid value: -1: "
        "spec.productionVariants[0].initialVariantWeight in body should be greater than or equal to 0",
    ),
    Row(
        "all-weights-zero",
        config(variant("blue", initialVariantWeight=0), variant("green", initialVariantWeight=0)),
        api.MSG_WEIGHTS_POSITIVE,
    ),
    Row(
        "zero-variants",
        config(),
        "spec.productionVariants: Invalid value: 0: spec.productionVariants in body should have at least 1 items",
    ),
    Row(
        "eleven-variants",
        config(*[variant(f"v{i}") for i in range(11)]),
        "spec.productionVariants: Too many: 11",
    ),
    Row("missing-variants", changed(config(BLUE), "spec", {}), "spec.productionVariants: Required value"),
    Row("instance-count-zero", config(variant("blue", initialInstanceCount=0)), "initialInstanceCount"),
    Row(
        "instance-type-empty",
        config(variant("blue", instanceType="")),
        "spec.productionVariants[0].instanceType",
    ),
    Row("count-as-string", config(variant("blue", initialInstanceCount="2")), "must be of type integer"),
    Row("weight-as-bool", config(variant("blue", initialVariantWeight=True)), "must be of type number"),
    Row(
        "resource-quantity-float",
        config(variant("blue", resources={"limits": {"cpu": 0.5}})),
        "spec.productionVariants[0].resources.limits.cpu",
    ),
    Row("unknown-field-top", {**model(), "extra": 1}, 'unknown field "extra"'),
    Row("unknown-field-spec", changed(model(), "spec.replicas", 2), 'unknown field "spec.replicas"'),
    Row(
        "unknown-field-nested",
        config(variant("blue", weight=1)),
        'unknown field "spec.productionVariants[0].weight"',
    ),
    Row(
        "unknown-field-env",
        model(env=[{"name": "A", "valeu": "typo"}]),
        'unknown field "spec.env[0].valeu"',
    ),
    Row(
        "model-uri-scheme",
        model(modelUri="ftp://models/m.onnx"),
        'spec.modelUri: Invalid value: "ftp://models/m.onnx"',
    ),
    # modelUri is optional since a pipeline has none: exactly one of the two (issue 16).
    Row("model-uri-missing", changed(model(), "spec", {"sha256": SHA}), api.MSG_PIPELINE_OR_MODEL_URI),
    Row("sha256-short", model(sha256="abc123"), "spec.sha256"),
    Row("sha256-uppercase", model(sha256=SHA.upper()), "spec.sha256"),
    Row("env-without-name", model(env=[{"value": "x"}]), "spec.env[0].name: Required value"),
    Row("runtime-batch-zero", model(runtime={"maxBatchSize": 0}), "spec.runtime.maxBatchSize"),
    Row(
        "runtime-bad-optimization",
        model(runtime={"graphOptimizationLevel": "max"}),
        'spec.runtime.graphOptimizationLevel: Unsupported value: "max"',
    ),
    Row("metadata-name", changed(model(), "metadata.name", "Fraud_V1"), "metadata.name: Invalid value"),
    Row(
        "wrong-api-version",
        changed(model(), "apiVersion", "berth.dev/v1"),
        'Model in version "v1" cannot be handled as a Model',
    ),
    Row(
        "model-spec-changed",
        model(modelUri="s3://models/fraud/v2/model.onnx"),
        api.MSG_MODEL_IMMUTABLE,
        old=model(),
    ),
    Row(
        "config-spec-changed",
        config(variant("blue", initialVariantWeight=2)),
        api.MSG_CONFIG_IMMUTABLE,
        old=config(BLUE),
    ),
    Row(
        "config-spec-grows",
        config(BLUE, GREEN),
        api.MSG_CONFIG_IMMUTABLE,
        old=config(BLUE),
    ),
    Row(
        "autoscaling-min-over-max",
        config(variant("blue", autoscaling={**SCALING, "minReplicas": 6})),
        api.MSG_AUTOSCALING_BOUNDS,  # before 1.35 kube-apiserver adds "object": (kubernetes#133832)
    ),
    Row(
        "autoscaling-two-targets",
        config(variant("blue", autoscaling={**SCALING, "targetCPUUtilization": 70})),
        api.MSG_AUTOSCALING_TARGET,
    ),
    Row(
        "autoscaling-no-target",
        config(variant("blue", autoscaling={"maxReplicas": 3})),
        api.MSG_AUTOSCALING_TARGET,
    ),
    Row(
        "autoscaling-cpu-over-100",
        config(variant("blue", autoscaling={"maxReplicas": 3, "targetCPUUtilization": 150})),
        "targetCPUUtilization: Invalid value: 150: spec.productionVariants[0].autoscaling.targetCPUUtilization in body "
        "should be less than or equal to 100",
    ),
    Row(
        "dup-variant-overrides",
        endpoint(variantOverrides=[{"variantName": "blue", "desiredWeight": 1}, {"variantName": "blue"}]),
        api.MSG_OVERRIDE_NAMES_UNIQUE,
    ),
    Row(
        "override-count-zero",
        endpoint(variantOverrides=[{"variantName": "blue", "desiredInstanceCount": 0}]),
        "spec.variantOverrides[0].desiredInstanceCount",
    ),
    Row(
        "bad-routing-type",
        endpoint(deploymentConfig={"blueGreen": {"trafficRouting": {"type": "Blue"}}}),
        'spec.deploymentConfig.blueGreen.trafficRouting.type: Unsupported value: "Blue"',
    ),
    Row(
        "canary-over-100",
        endpoint(
            deploymentConfig={
                "blueGreen": {"trafficRouting": {"type": "Canary", "canarySize": {"value": 150}}}
            }
        ),
        "canarySize.value: Invalid value: 150: spec.deploymentConfig.blueGreen.trafficRouting.canarySize.value in body "
        "should be less than or equal to 100",
    ),
    Row(
        "canary-size-unit",
        endpoint(
            deploymentConfig={"blueGreen": {"trafficRouting": {"canarySize": {"type": "Count", "value": 1}}}}
        ),
        "canarySize.type: Unsupported value",
    ),
    Row(
        "timeout-under-a-minute",
        endpoint(deploymentConfig={"blueGreen": {"maximumExecutionTimeoutSeconds": 30}}),
        "maximumExecutionTimeoutSeconds: Invalid value: 30: spec.deploymentConfig.blueGreen.maximumExecutionTimeoutSeconds "
        "in body should be greater than or equal to 60",
    ),
    Row(
        "error-rate-over-100",
        endpoint(deploymentConfig={"autoRollback": {"maxErrorRatePercent": 150}}),
        "autoRollback.maxErrorRatePercent",
    ),
    Row("config-name-not-dns", endpoint(endpointConfigName="Fraud Config"), "spec.endpointConfigName"),
    Row("auth-api-key-without-secret", endpoint(auth={"mode": "APIKey"}), api.MSG_API_KEY_NEEDS_SECRET),
    Row(
        "auth-secret-without-api-key",
        endpoint(auth={"mode": "KubernetesRBAC", "secretRef": {"name": "k"}}),
        api.MSG_SECRET_ONLY_FOR_API_KEY,
    ),
    Row(
        "auth-secret-with-default-mode",
        endpoint(auth={"secretRef": {"name": "k"}}),
        api.MSG_SECRET_ONLY_FOR_API_KEY,
    ),
    Row("auth-unknown-mode", endpoint(auth={"mode": "Open"}), 'spec.auth.mode: Unsupported value: "Open"'),
    Row(
        "status-bad-phase",
        {**endpoint(), "status": {"phase": "Sleeping"}},
        'status.phase: Unsupported value: "Sleeping"',
    ),
]
ROWS = GOOD + BAD


def test_the_table_is_big_enough() -> None:
    assert len(GOOD) >= 8 and len(BAD) >= 20
    # TransformJob and MonitoringSchedule rows: test_transformjob_admission.py, test_monitoring_admission.py
    serving_kinds = set(api.RESOURCE_KINDS) - {"TransformJob", "MonitoringSchedule"}
    assert {row.obj["kind"] for row in GOOD} == {row.obj["kind"] for row in BAD} == serving_kinds
    assert len({row.id for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", GOOD, ids=lambda row: row.id)
def test_admitted(row: Row) -> None:
    assert admit(CRDS[row.obj["kind"]], row.obj, old=row.old) == []


@pytest.mark.parametrize("row", BAD, ids=lambda row: row.id)
def test_refused_with_message(row: Row) -> None:
    messages = admit(CRDS[row.obj["kind"]], row.obj, old=row.old)
    assert messages, "admitted, but the API server must refuse it"
    assert row.refused_with is not None
    assert any(row.refused_with in message for message in messages), messages


def pydantic_verdict(obj: dict[str, Any]) -> str | None:
    try:
        api.RESOURCE_KINDS[obj["kind"]].model_validate(obj)
    except ValidationError as error:
        return str(error)
    return None


def assert_admitted(row: Row) -> None:
    """Admitted by the CRD (schema and CEL) and by pydantic alike."""
    assert admit(CRDS[row.obj["kind"]], row.obj) == []
    assert pydantic_verdict(row.obj) is None


def assert_refused(row: Row, pydantic_names_the_field: bool = False) -> None:
    """Refused by the CRD, a message naming the field and why; and by pydantic (`berth render`,
    `berth up`) as the cluster does, with our words where they are ours (and, asked to, the
    field's path in the manifest's words where they are not)."""
    assert row.refused_with is not None
    messages = admit(CRDS[row.obj["kind"]], row.obj)
    assert any(row.refused_with in message for message in messages), messages
    verdict = pydantic_verdict(row.obj)
    assert verdict is not None
    if pydantic_names_the_field or row.refused_with in vars(api).values():
        assert row.refused_with in verdict, verdict


@pytest.mark.parametrize("row", [row for row in ROWS if row.old is None], ids=lambda row: row.id)
def test_pydantic_agrees_with_the_api_server(row: Row) -> None:
    """`berth render` and `berth up` (pydantic) refuse exactly what the cluster (CRD) refuses."""
    cluster = admit(CRDS[row.obj["kind"]], row.obj)
    pydantic = pydantic_verdict(row.obj)
    assert (pydantic is None) == (cluster == []), f"cluster: {cluster}\npydantic: {pydantic}"


@pytest.mark.parametrize(
    "row",
    [row for row in BAD if row.old is None and row.refused_with in vars(api).values()],
    ids=lambda row: row.id,
)
def test_pydantic_refuses_with_the_same_words(row: Row) -> None:
    assert row.refused_with is not None
    assert row.refused_with in (pydantic_verdict(row.obj) or "")


def test_transition_rules_need_an_old_object() -> None:
    """Creating is not an update: `self == oldSelf` is skipped, the other rules still run."""
    crd = CRDS["EndpointConfig"]
    new = config(variant("blue", initialVariantWeight=2))
    assert admit(crd, new) == []
    assert admit(crd, new, old=new) == []
    refused = admit(crd, config(BLUE, BLUE), old=config(BLUE))
    assert any(api.MSG_CONFIG_IMMUTABLE in message for message in refused)
    assert any(UNIQUE in message for message in refused)


def test_numbers_reach_cel_as_doubles() -> None:
    """An integer weight of a `type: number` field compares with 0.0 in CEL, as on the API server."""
    crd = CRDS["EndpointConfig"]
    assert admit(crd, config(variant("blue", initialVariantWeight=1))) == []
    assert api.MSG_WEIGHTS_POSITIVE in " ".join(admit(crd, config(variant("blue", initialVariantWeight=0))))
