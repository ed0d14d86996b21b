"""Admission of dataCapture: what the CRD (schema and CEL) refuses, pydantic the same."""

from __future__ import annotations

from typing import Any

import pytest
from berth_operator import api

from tests.crds.test_crds_admission import Row, assert_admitted, assert_refused, config, variant

CAPTURE = {"samplingPercentage": 20, "destinationUri": "s3://bucket/capture/"}
BLUE = variant("blue")


def capturing(**fields: Any) -> dict[str, Any]:
    return config(BLUE, dataCapture={**CAPTURE, **fields})


GOOD = [
    Row("capture-minimal", capturing()),
    Row(
        "capture-full",
        capturing(
            samplingPercentage=0.5,
            destinationUri="file:///var/berth/capture/",
            captureModes=["Output"],
            textContentTypes=["text/csv", "application/jsonlines"],
            maxFileBytes=1024,
            maxFileAgeSeconds=3600,
            credentialsSecretRef={"name": "capture-s3"},
        ),
    ),
    Row("capture-everything", capturing(samplingPercentage=100, captureModes=["Input", "Output"])),
    Row("capture-off", capturing(samplingPercentage=0)),
    Row("capture-all-base64", capturing(textContentTypes=[])),
]

BAD = [
    Row(
        "capture-no-percentage",
        config(BLUE, dataCapture={"destinationUri": "s3://b/c/"}),
        "samplingPercentage",
    ),
    Row("capture-over-100", capturing(samplingPercentage=101), "spec.dataCapture.samplingPercentage"),
    Row("capture-negative", capturing(samplingPercentage=-1), "spec.dataCapture.samplingPercentage"),
    Row("capture-gs", capturing(destinationUri="gs://b/c/"), api.MSG_CAPTURE_URI),
    Row("capture-bare-scheme", capturing(destinationUri="s3://"), api.MSG_CAPTURE_URI),
    Row("capture-unknown-mode", capturing(captureModes=["Request"]), "spec.dataCapture.captureModes[0]"),
    Row("capture-no-modes", capturing(captureModes=[]), "spec.dataCapture.captureModes"),
    Row("capture-repeated-mode", capturing(captureModes=["Input", "Input"]), "spec.dataCapture.captureModes"),
    Row("capture-empty-type", capturing(textContentTypes=[""]), "spec.dataCapture.textContentTypes[0]"),
    Row("capture-tiny-files", capturing(maxFileBytes=10), "spec.dataCapture.maxFileBytes"),
    Row("capture-old-files", capturing(maxFileAgeSeconds=3601), "spec.dataCapture.maxFileAgeSeconds"),
    Row(
        "capture-secret-unnamed",
        capturing(credentialsSecretRef={"name": ""}),
        "spec.dataCapture.credentialsSecretRef.name",
    ),
    Row("capture-unknown-field", capturing(kmsKeyId="arn:aws:kms:x"), "spec.dataCapture"),
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


def test_defaults_capture_both_modes_and_csv_and_json_as_text() -> None:
    spec = api.EndpointConfig.model_validate(capturing()).spec
    assert spec.data_capture is not None
    assert spec.data_capture.capture_modes == ["Input", "Output"]
    assert spec.data_capture.text_content_types == ["text/csv", "application/json"]
