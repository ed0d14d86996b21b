"""Admission of inference pipelines (Model.spec.pipeline): the CRD (schema and CEL) and pydantic
refuse the same rows, naming the field and why. The same rows run against the real API server in
tests/cluster/test_pipeline.py."""

from __future__ import annotations

from typing import Any

import pytest
from berth_operator import api
from pydantic import ValidationError

from tests.crds.test_crds_admission import CRDS, SHA, Row, config
from tests.support.crdcheck import admit

SCALER = {"modelUri": "s3://models/risk/scaler.onnx"}
CLASSIFIER = {"modelUri": "s3://models/risk/classifier.onnx", "outputs": ["probabilities"]}
POSTPROCESS = {"image": "registry.example.com/postprocess:1", "port": 8081}


def pipeline(*stages: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "Model",
        "metadata": {"name": "risk"},
        "spec": {"pipeline": list(stages), **spec},
    }


def onnx(index: int, **fields: Any) -> dict[str, Any]:
    return {"modelUri": f"s3://models/risk/stage-{index}.onnx", **fields}


def pydantic_verdict(obj: dict[str, Any]) -> str | None:
    """What `berth render`, local mode and the Model's status say (field paths as the API server's)."""
    try:
        api.RESOURCE_KINDS[obj["kind"]].model_validate(obj)
    except ValidationError as error:
        return api.validation_message(error)
    return None


GOOD = [
    Row("api-md-example", pipeline(SCALER, CLASSIFIER, POSTPROCESS)),
    Row("two-onnx-stages", pipeline(SCALER, CLASSIFIER)),
    Row("fifteen-stages", pipeline(*(onnx(i) for i in range(1, 16)))),
    Row(
        "every-field",
        pipeline(
            {"name": "scale", "modelUri": "pvc://store/scaler.tar.gz", "sha256": SHA},
            {"name": "classify", "modelUri": "https://models.example.com/c.onnx", "outputs": ["label", "p"]},
            {
                "name": "explain",
                "image": "registry.example.com/explain:2",
                "port": 9000,
                "outputs": ["attributions"],
                "env": [{"name": "MODE", "value": "fast"}, {"name": "K", "valueFrom": {"fieldRef": {}}}],
            },
            {"name": "format", "image": "registry.example.com/format:1", "port": 65535},
            credentialsSecretRef={"name": "s3-creds"},
            serviceAccountName="risk",
            env=[{"name": "OMP_NUM_THREADS", "value": "2"}],
            runtime={"maxBatchSize": 16},
            warmupRequests=[{"body": "[[1, 2, 3, 4]]"}],
            mode="SingleModel",
        ),
    ),
    Row(
        "file-stages-local-mode", pipeline({"modelUri": "file://scaler.onnx"}, {"modelUri": "file://c.onnx"})
    ),
    Row(
        "names-like-defaults-elsewhere",
        pipeline({"name": "stage", **SCALER}, {"name": "stage-one", **CLASSIFIER}),
    ),
    Row("image-stage-in-the-middle", pipeline(SCALER, POSTPROCESS, CLASSIFIER)),
    Row("two-image-stages", pipeline(SCALER, POSTPROCESS, {**POSTPROCESS, "port": 8082})),
    Row("port-1", pipeline(SCALER, {**POSTPROCESS, "port": 1})),
    Row("name-40-characters", pipeline({"name": "s" * 40, **SCALER}, CLASSIFIER)),
    Row("empty-pipeline-is-no-pipeline", pipeline(modelUri="s3://models/fraud.onnx")),
    # A pipeline is one model: EndpointConfigs name it like any other (admission cannot tell).
    Row(
        "serverless-variant",
        config({"variantName": "blue", "modelName": "risk", "serverlessConfig": {"memorySizeInMB": 2048}}),
    ),
]

BAD = [
    Row("neither-uri-nor-pipeline", pipeline(), api.MSG_PIPELINE_OR_MODEL_URI),
    Row(
        "both-uri-and-pipeline",
        pipeline(SCALER, CLASSIFIER, modelUri="s3://m/x.onnx"),
        api.MSG_PIPELINE_OR_MODEL_URI,
    ),
    Row("one-stage", pipeline(SCALER), api.MSG_PIPELINE_STAGES),
    Row("sixteen-stages", pipeline(*(onnx(i) for i in range(1, 17))), "spec.pipeline"),
    Row("multi-model", pipeline(SCALER, CLASSIFIER, mode="MultiModel"), api.MSG_PIPELINE_SINGLE_MODEL),
    Row("top-level-sha256", pipeline(SCALER, CLASSIFIER, sha256=SHA), api.MSG_PIPELINE_NO_SHA256),
    Row("top-level-image", pipeline(SCALER, CLASSIFIER, image="acme/server:1"), api.MSG_PIPELINE_NO_IMAGE),
    Row("image-first", pipeline(POSTPROCESS, SCALER), api.MSG_PIPELINE_FIRST_ONNX),
    Row(
        "names-twice",
        pipeline({"name": "a", **SCALER}, {"name": "a", **CLASSIFIER}),
        api.MSG_STAGE_NAMES_UNIQUE,
    ),
    Row(
        "explicit-default-name",
        pipeline(SCALER, {"name": "stage-1", **CLASSIFIER}),
        api.MSG_STAGE_DEFAULT_NAME,
    ),
    Row("own-default-name", pipeline({"name": "stage-1", **SCALER}, CLASSIFIER), api.MSG_STAGE_DEFAULT_NAME),
    Row("ports-twice", pipeline(SCALER, POSTPROCESS, POSTPROCESS), api.MSG_STAGE_PORTS_UNIQUE),
    Row("stage-both", pipeline(SCALER, {**CLASSIFIER, **POSTPROCESS}), api.MSG_STAGE_ONE_OF),
    Row("stage-neither", pipeline(SCALER, {"outputs": ["x"]}), api.MSG_STAGE_ONE_OF),
    Row("image-without-port", pipeline(SCALER, {"image": "acme/post:1"}), api.MSG_STAGE_PORT),
    Row("port-without-image", pipeline(SCALER, {**CLASSIFIER, "port": 8081}), api.MSG_STAGE_PORT),
    Row("server-port", pipeline(SCALER, {**POSTPROCESS, "port": 8080}), api.MSG_STAGE_RESERVED_PORT),
    Row("worker-metrics-port", pipeline(SCALER, {**POSTPROCESS, "port": 9091}), api.MSG_STAGE_RESERVED_PORT),
    Row("port-zero", pipeline(SCALER, {**POSTPROCESS, "port": 0}), "spec.pipeline[1].port"),
    Row("port-too-high", pipeline(SCALER, {**POSTPROCESS, "port": 65536}), "spec.pipeline[1].port"),
    Row("port-a-string", pipeline(SCALER, {**POSTPROCESS, "port": "8081"}), "spec.pipeline[1].port"),
    Row("sha256-on-image", pipeline(SCALER, {**POSTPROCESS, "sha256": SHA}), api.MSG_STAGE_SHA256),
    Row(
        "env-on-onnx",
        pipeline(SCALER, {**CLASSIFIER, "env": [{"name": "X", "value": "1"}]}),
        api.MSG_STAGE_ENV,
    ),
    # A list-type set: the API server's own "Duplicate value" (pydantic says MSG_STAGE_OUTPUTS_UNIQUE).
    Row(
        "outputs-twice",
        pipeline(SCALER, {**CLASSIFIER, "outputs": ["p", "p"]}),
        "spec.pipeline[1].outputs[1]",
    ),
    Row("output-empty", pipeline(SCALER, {**CLASSIFIER, "outputs": [""]}), "spec.pipeline[1].outputs[0]"),
    Row("bad-stage-uri", pipeline(SCALER, {"modelUri": "ftp://m/c.onnx"}), "spec.pipeline[1].modelUri"),
    Row("gs-not-yet", pipeline(SCALER, {"modelUri": "gs://m/c.onnx"}), "spec.pipeline[1].modelUri"),
    Row("bad-stage-sha256", pipeline({**SCALER, "sha256": "XYZ"}, CLASSIFIER), "spec.pipeline[0].sha256"),
    Row("name-not-a-label", pipeline({"name": "Scale_1", **SCALER}, CLASSIFIER), "spec.pipeline[0].name"),
    Row("name-too-long", pipeline({"name": "s" * 41, **SCALER}, CLASSIFIER), "spec.pipeline[0].name"),
    Row("stage-unknown-field", pipeline(SCALER, {**CLASSIFIER, "resources": {}}), "spec.pipeline[1]"),
    Row("image-empty", pipeline(SCALER, {"image": "", "port": 8081}), "spec.pipeline[1].image"),
]
ROWS = GOOD + BAD
# Where the API server's words are its own (a list-type set's "Duplicate value"), pydantic's are ours.
PYDANTIC_SAYS = {"outputs-twice": api.MSG_STAGE_OUTPUTS_UNIQUE}


def test_rows_are_distinct() -> None:
    assert len({row.id for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", GOOD, ids=lambda row: row.id)
def test_admitted(row: Row) -> None:
    assert admit(CRDS[row.obj["kind"]], row.obj) == []
    assert pydantic_verdict(row.obj) is None


@pytest.mark.parametrize("row", BAD, ids=lambda row: row.id)
def test_refused_naming_the_field(row: Row) -> None:
    messages = admit(CRDS[row.obj["kind"]], row.obj)
    assert row.refused_with is not None
    assert any(row.refused_with in message for message in messages), messages


@pytest.mark.parametrize("row", BAD, ids=lambda row: row.id)
def test_pydantic_refuses_too(row: Row) -> None:
    verdict = pydantic_verdict(row.obj)
    assert verdict is not None
    assert row.refused_with is not None
    said = PYDANTIC_SAYS.get(row.id, row.refused_with)
    assert said in verdict, verdict


def test_every_message_names_its_field() -> None:
    fields = {
        api.MSG_PIPELINE_OR_MODEL_URI: "modelUri:",
        api.MSG_PIPELINE_STAGES: "pipeline:",
        api.MSG_PIPELINE_SINGLE_MODEL: "pipeline:",
        api.MSG_PIPELINE_NO_SHA256: "sha256:",
        api.MSG_PIPELINE_NO_IMAGE: "image:",
        api.MSG_PIPELINE_FIRST_ONNX: "pipeline:",
        api.MSG_STAGE_NAMES_UNIQUE: "pipeline:",
        api.MSG_STAGE_PORTS_UNIQUE: "pipeline:",
        api.MSG_STAGE_ONE_OF: "modelUri:",
        api.MSG_STAGE_PORT: "port:",
        api.MSG_STAGE_RESERVED_PORT: "port:",
        api.MSG_STAGE_SHA256: "sha256:",
        api.MSG_STAGE_ENV: "env:",
        api.MSG_STAGE_OUTPUTS_UNIQUE: "outputs:",
        api.MSG_STAGE_DEFAULT_NAME: "name:",
    }
    for message, field in fields.items():
        assert message.startswith(field), message


def test_stage_names_default_to_their_position() -> None:
    spec = api.Model.model_validate(pipeline(SCALER, {"name": "classify", **CLASSIFIER}, POSTPROCESS)).spec
    assert spec.is_pipeline and spec.model_uri is None
    assert [name for name, _ in spec.stages] == ["stage-1", "classify", "stage-3"]
    # Defaults are applied on read, never written back: the stored spec is what the user wrote.
    assert (
        "name" not in api.Model.model_validate(pipeline(SCALER, CLASSIFIER)).to_wire()["spec"]["pipeline"][0]
    )
    assert not api.Model.model_validate(pipeline(modelUri="s3://m/x.onnx")).spec.is_pipeline


def test_a_pipeline_model_has_no_model_uri_to_read() -> None:
    spec = api.Model.model_validate(pipeline(SCALER, CLASSIFIER)).spec
    with pytest.raises(ValueError, match="no modelUri"):
        spec.uri  # noqa: B018
