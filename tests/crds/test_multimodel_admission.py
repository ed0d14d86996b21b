"""Admission of multi-model Models (mode, multiModel) and TransformJob.spec.targetModel: the CRD
(schema and CEL) and pydantic refuse the same rows, naming the field and why. The same rows run
against the real API server in tests/cluster/test_multimodel.py."""

from __future__ import annotations

from typing import Any

import pytest
from berth_operator import api

from tests.crds.test_crds_admission import (
    SHA,
    Row,
    assert_admitted,
    assert_refused,
    config,
)
from tests.crds.test_transformjob_admission import job

PREFIX = "s3://models/customers/"


def model(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "Model",
        "metadata": {"name": "customers"},
        "spec": {"modelUri": PREFIX, "mode": "MultiModel", **spec},
    }


def single(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "Model",
        "metadata": {"name": "fraud-v1"},
        "spec": {"modelUri": "s3://models/fraud.onnx", **spec},
    }


GOOD = [
    Row("multi-minimal", model()),
    Row(
        "multi-full",
        model(
            multiModel={"cacheBytes": 4 * 1024**3, "maxLoadedModels": 100_000, "warmModels": 1000},
            credentialsSecretRef={"name": "s3-creds"},
            runtime={"maxBatchSize": 8},
        ),
    ),
    Row("multi-no-warm", model(multiModel={"warmModels": 0})),
    Row("multi-http", model(modelUri="https://models.example.com/customers/")),
    Row("multi-file", model(modelUri="file:///srv/models/")),
    Row("multi-pvc", model(modelUri="pvc://models/customers/")),
    Row("multi-byo-image", model(image="ghcr.io/acme/onnx-server:1.2")),
    Row("single-explicit", single(mode="SingleModel", sha256=SHA)),
    # A prefix with mode SingleModel is one directory holding one model, as before.
    Row("single-directory", single(modelUri="s3://models/fraud/")),
    # Serverless variants of a MultiModel Model: EndpointConfigs name Models, admission cannot tell.
    Row(
        "serverless-variant",
        config(
            {"variantName": "blue", "modelName": "customers", "serverlessConfig": {"memorySizeInMB": 2048}}
        ),
    ),
    Row("transform-target", job(targetModel="customer-17.tar.gz")),
    Row("transform-target-nested", job(targetModel="eu/fraud/v2.onnx")),
    Row("transform-target-dots", job(targetModel="..hidden/.x/a..b.onnx")),
    Row("transform-target-longest", job(targetModel="m" * 1024)),
]

BAD = [
    Row("multi-not-a-prefix", model(modelUri="s3://models/customers"), api.MSG_MULTI_MODEL_PREFIX),
    Row("multi-one-file", model(modelUri="s3://models/customer-17.onnx"), api.MSG_MULTI_MODEL_PREFIX),
    Row("multi-sha256", model(sha256=SHA), api.MSG_MULTI_MODEL_NO_SHA256),
    Row(
        "multi-warmup",
        model(warmupRequests=[{"body": '{"inputs": [[1.0]]}'}]),
        api.MSG_MULTI_MODEL_NO_WARMUP,
    ),
    Row("settings-without-mode", single(multiModel={"cacheBytes": 1024}), api.MSG_MULTI_MODEL_SETTINGS),
    Row(
        "settings-single-mode",
        single(mode="SingleModel", multiModel={"warmModels": 5}),
        api.MSG_MULTI_MODEL_SETTINGS,
    ),
    Row("unknown-mode", model(mode="Multi"), "spec.mode"),
    Row("cache-zero", model(multiModel={"cacheBytes": 0}), "spec.multiModel.cacheBytes"),
    Row("cache-as-quantity", model(multiModel={"cacheBytes": "4Gi"}), "spec.multiModel.cacheBytes"),
    Row("loaded-zero", model(multiModel={"maxLoadedModels": 0}), "spec.multiModel.maxLoadedModels"),
    Row("warm-negative", model(multiModel={"warmModels": -1}), "spec.multiModel.warmModels"),
    Row("warm-too-many", model(multiModel={"warmModels": 1001}), "spec.multiModel.warmModels"),
    Row("settings-unknown-field", model(multiModel={"cacheSize": 10}), "spec.multiModel"),
    Row("transform-target-empty", job(targetModel=""), "spec.targetModel"),
    Row("transform-target-too-long", job(targetModel="m" * 1025), "spec.targetModel"),
    Row("transform-target-absolute", job(targetModel="/etc/passwd"), api.MSG_TARGET_MODEL_PATH),
    Row("transform-target-up", job(targetModel="../other/model.onnx"), api.MSG_TARGET_MODEL_PATH),
    Row("transform-target-dot", job(targetModel="eu/./fraud.onnx"), api.MSG_TARGET_MODEL_PATH),
    Row("transform-target-empty-segment", job(targetModel="eu//fraud.onnx"), api.MSG_TARGET_MODEL_PATH),
    Row("transform-target-a-prefix", job(targetModel="eu/"), api.MSG_TARGET_MODEL_PATH),
    Row("transform-target-backslash", job(targetModel="eu\\fraud.onnx"), "spec.targetModel"),
    Row("transform-target-control", job(targetModel="fraud\n.onnx"), "spec.targetModel"),
]
ROWS = GOOD + BAD


def test_rows_are_distinct() -> None:
    assert len({row.id for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", GOOD, ids=lambda row: row.id)
def test_admitted(row: Row) -> None:
    assert_admitted(row)


@pytest.mark.parametrize("row", BAD, ids=lambda row: row.id)
def test_refused_naming_the_field(row: Row) -> None:
    assert_refused(row, pydantic_names_the_field=True)


def test_defaults() -> None:
    spec = api.Model.model_validate(model()).spec
    assert spec.is_multi_model and spec.multi_model is None
    settings = spec.multi_model_settings
    assert (settings.cache_bytes, settings.max_loaded_models, settings.warm_models) == (None, None, 10)
    assert api.Model.model_validate(single()).spec.mode == "SingleModel"
    assert api.TransformJob.model_validate(job()).spec.target_model is None


def test_the_prefix_message_names_the_field_and_why() -> None:
    assert api.MSG_MULTI_MODEL_PREFIX.startswith("modelUri:") and "/" in api.MSG_MULTI_MODEL_PREFIX
    assert (
        api.MSG_MULTI_MODEL_NO_SHA256.startswith("sha256:") and "NAME.sha256" in api.MSG_MULTI_MODEL_NO_SHA256
    )
    assert api.MSG_MULTI_MODEL_SETTINGS.startswith("multiModel:")
    assert api.MSG_TARGET_MODEL_PATH.startswith("targetModel:")
