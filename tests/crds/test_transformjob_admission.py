"""TransformJob (issue #7): what the API server admits and refuses with its CRD, and that pydantic agrees."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from berth_operator import api
from pydantic import ValidationError

from tests.crds.test_crds_admission import Row, changed
from tests.support.crdcheck import admit, berth_crds

CRDS = berth_crds()
CRD = CRDS["TransformJob"]


def job(name: str = "score-march", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "TransformJob",
        "metadata": {"name": name},
        "spec": {
            "modelName": "fraud-v1",
            "input": {"uri": "s3://data/march/"},
            "output": {"uri": "s3://data/march-scored/"},
            "instanceType": "cpu-small",
            **spec,
        },
    }


def with_input(**fields: Any) -> dict[str, Any]:
    return job(input={"uri": "s3://data/march/", **fields})


def with_output(**fields: Any) -> dict[str, Any]:
    return job(output={"uri": "s3://data/march-scored/", **fields})


GOOD = [
    Row("minimal", job()),
    Row("filters", job(inputFilter="$[1:]", outputFilter="$[0,-1]", joinSource="Input")),
    Row("json-filters", job(inputFilter="$.features", outputFilter="$['id','SageMakerOutput']")),
    Row(
        "full",
        job(
            input={
                "uri": "s3://data/march/part-0001.jsonl.gz",
                "contentType": "application/jsonlines",
                "splitType": "Line",
                "compression": "Gzip",
            },
            output={"uri": "s3://data/out/", "accept": "application/jsonlines", "assembleWith": "Line"},
            batchStrategy="SingleRecord",
            maxPayloadBytes=1024 * 1024,
            maxConcurrentTransforms=4,
            instanceCount=3,
            joinSource="Input",
            maxErrors=10,
            ttlSecondsAfterFinished=0,
        ),
    ),
    Row("npy-whole-objects", with_input(contentType="application/x-npy", splitType="None")),
    Row("assemble-none", with_output(assembleWith="None")),
    Row("file-uris", job(input={"uri": "file:///data/in/"}, output={"uri": "file:///data/out/"})),
    Row(
        "with-status",
        {
            **job(),
            "status": {
                "phase": "Running",
                "jobName": "score-march",
                "recordsDone": 1000,
                "recordsTotal": 5000,
                "startTime": "2026-01-01T00:00:00Z",
                "conditions": [
                    {
                        "type": "Complete",
                        "status": "False",
                        "reason": "Running",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ],
            },
        },
    ),
    Row("capture-minimal", job(dataCapture={"destinationUri": "s3://bucket/capture/"})),
    Row(
        "capture-full",
        job(
            dataCapture={
                "destinationUri": "file:///var/berth/capture/",
                "samplingPercentage": 0.5,
                "captureModes": ["Output"],
                "textContentTypes": ["text/csv", "application/jsonlines"],
                "maxFileBytes": 1024,
                "maxFileAgeSeconds": 3600,
            }
        ),
    ),
    Row("capture-off", job(dataCapture={"destinationUri": "s3://b/c/", "samplingPercentage": 0})),
    Row("update-labels-only", changed(job(), "metadata.labels", {"team": "risk"}), old=job()),
]

BAD = [
    Row(
        "capture-no-destination",
        job(dataCapture={"samplingPercentage": 10}),
        "spec.dataCapture.destinationUri",
    ),
    Row("capture-gs", job(dataCapture={"destinationUri": "gs://b/c/"}), api.MSG_CAPTURE_URI),
    Row("capture-bare-scheme", job(dataCapture={"destinationUri": "s3://"}), api.MSG_CAPTURE_URI),
    Row(
        "capture-over-100",
        job(dataCapture={"destinationUri": "s3://b/c/", "samplingPercentage": 101}),
        "spec.dataCapture.samplingPercentage",
    ),
    Row(
        "capture-repeated-mode",
        job(dataCapture={"destinationUri": "s3://b/c/", "captureModes": ["Input", "Input"]}),
        "spec.dataCapture.captureModes",
    ),
    Row(
        "capture-tiny-files",
        job(dataCapture={"destinationUri": "s3://b/c/", "maxFileBytes": 10}),
        "spec.dataCapture.maxFileBytes",
    ),
    Row(
        "capture-unknown-field",
        job(dataCapture={"destinationUri": "s3://b/c/", "kmsKeyId": "arn:aws:kms:x"}),
        "spec.dataCapture",
    ),
    Row("input-filter-no-dollar", job(inputFilter="[1:]"), api.MSG_FILTER_SYNTAX),
    Row("output-filter-no-dollar", job(outputFilter="features"), api.MSG_FILTER_SYNTAX),
    Row("filter-too-long", job(inputFilter="$." + "a" * 300), "spec.inputFilter: Too long"),
    Row("model-name-missing", changed(job(), "spec", {**job()["spec"], "modelName": ""}), "spec.modelName"),
    Row("input-missing", changed(job(), "spec.input", None), "spec.input"),
    Row("instance-type-missing", job(instanceType=""), "spec.instanceType"),
    Row(
        "input-scheme",
        with_input(uri="ftp://data/x.csv"),
        'spec.input.uri: Invalid value: "ftp://data/x.csv"',
    ),
    Row("output-scheme", with_output(uri="http://data/out/"), "spec.output.uri"),
    Row(
        "content-type",
        with_input(contentType="application/json"),
        'spec.input.contentType: Unsupported value: "application/json"',
    ),
    Row(
        "split-type", with_input(splitType="RecordIO"), 'spec.input.splitType: Unsupported value: "RecordIO"'
    ),
    Row("compression", with_input(compression="Zstd"), "spec.input.compression: Unsupported value"),
    Row("accept", with_output(accept="application/x-npy"), "spec.output.accept: Unsupported value"),
    Row("assemble-with", with_output(assembleWith="Json"), "spec.output.assembleWith: Unsupported value"),
    Row("batch-strategy", job(batchStrategy="Mini"), 'spec.batchStrategy: Unsupported value: "Mini"'),
    Row("join-source", job(joinSource="Output"), "spec.joinSource: Unsupported value"),
    Row(
        "payload-zero",
        job(maxPayloadBytes=0),
        "spec.maxPayloadBytes: Invalid value: 0: spec.maxPayloadBytes in body should be greater than or equal to 1",
    ),
    Row("payload-over-100mib", job(maxPayloadBytes=200 * 1024 * 1024), "spec.maxPayloadBytes"),
    Row("concurrency-zero", job(maxConcurrentTransforms=0), "spec.maxConcurrentTransforms"),
    Row(
        "instance-count-zero",
        job(instanceCount=0),
        "spec.instanceCount: Invalid value: 0: spec.instanceCount in body should be greater than or equal to 1",
    ),
    Row("instance-count-string", job(instanceCount="2"), "must be of type integer"),
    Row("negative-errors", job(maxErrors=-1), "spec.maxErrors"),
    Row("negative-ttl", job(ttlSecondsAfterFinished=-5), "spec.ttlSecondsAfterFinished"),
    Row("unknown-field", job(parallelism=3), 'unknown field "spec.parallelism"'),
    Row("unknown-input-field", with_input(format="csv"), 'unknown field "spec.input.format"'),
    Row("npy-split-by-line", with_input(contentType="application/x-npy"), api.MSG_NPY_NEEDS_NO_SPLIT),
    Row(
        "npy-split-line-explicit",
        with_input(contentType="application/x-npy", splitType="Line"),
        api.MSG_NPY_NEEDS_NO_SPLIT,
    ),
    Row(
        "join-without-lines",
        job(joinSource="Input", output={"uri": "s3://data/out/", "assembleWith": "None"}),
        api.MSG_JOIN_NEEDS_LINES,
    ),
    Row(
        "join-whole-objects",
        job(joinSource="Input", input={"uri": "s3://data/in/", "splitType": "None"}),
        api.MSG_JOIN_NEEDS_LINES,
    ),
    Row("output-is-input", with_output(uri="s3://data/march/"), api.MSG_OUTPUT_NOT_INPUT),
    Row("spec-changed", job(instanceCount=2), api.MSG_TRANSFORM_IMMUTABLE, old=job()),
    Row(
        "status-bad-phase", {**job(), "status": {"phase": "Done"}}, 'status.phase: Unsupported value: "Done"'
    ),
]
ROWS = GOOD + BAD


def test_the_table_is_big_enough() -> None:
    assert len(GOOD) >= 6 and len(BAD) >= 20
    assert {row.obj["kind"] for row in ROWS} == {"TransformJob"}
    assert len({row.id for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", GOOD, ids=lambda row: row.id)
def test_admitted(row: Row) -> None:
    assert admit(CRD, row.obj, old=row.old) == []


@pytest.mark.parametrize("row", BAD, ids=lambda row: row.id)
def test_refused_with_message(row: Row) -> None:
    messages = admit(CRD, row.obj, old=row.old)
    assert messages, "admitted, but the API server must refuse it"
    assert row.refused_with is not None
    assert any(row.refused_with in message for message in messages), messages


def pydantic_verdict(obj: dict[str, Any]) -> str | None:
    try:
        api.TransformJob.model_validate(obj)
    except ValidationError as error:
        return str(error)
    return None


@pytest.mark.parametrize("row", [row for row in ROWS if row.old is None], ids=lambda row: row.id)
def test_pydantic_agrees_with_the_api_server(row: Row) -> None:
    cluster = admit(CRD, row.obj)
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


def test_defaults_are_applied_on_read_not_stored() -> None:
    parsed = api.TransformJob.model_validate(job())
    spec = parsed.spec
    assert (spec.input.content_type, spec.input.split_type, spec.input.compression) == (
        "text/csv",
        "Line",
        "None",
    )
    assert (spec.output.accept, spec.output.assemble_with) == ("text/csv", "Line")
    assert (spec.batch_strategy, spec.instance_count, spec.join_source, spec.max_errors) == (
        "MultiRecord",
        1,
        "None",
        0,
    )
    schema = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert "default" not in str(schema["properties"]["spec"])


def test_names_columns_and_rules() -> None:
    names = CRD["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "TransformJob",
        "transformjobs",
        ["btj"],
        ["berth"],
    )
    [version] = CRD["spec"]["versions"]
    columns = [
        (c["name"].upper(), c["jsonPath"])
        for c in version["additionalPrinterColumns"]
        if not c.get("priority")
    ]
    assert columns == [
        ("PHASE", ".status.phase"),
        ("MODEL", ".spec.modelName"),
        ("DONE", ".status.recordsDone"),
        ("TOTAL", ".status.recordsTotal"),
        ("AGE", ".metadata.creationTimestamp"),
    ]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["x-kubernetes-validations"] == api.TransformJobSpec.x_kubernetes_validations
    assert (
        spec["properties"]["input"]["x-kubernetes-validations"] == api.TransformInput.x_kubernetes_validations
    )


def test_an_update_of_the_status_alone_is_admitted() -> None:
    running = copy.deepcopy(job())
    running["status"] = {"phase": "Succeeded", "recordsDone": 10, "recordsTotal": 10}
    assert admit(CRD, running, old=job()) == []
