"""Relative file:// locations of an async config are the manifest directory's, as a Model's are."""

from __future__ import annotations

from pathlib import Path

from berth_operator.local.source import load_resources

from .support import config, endpoint, model, variant, write_yaml


def test_relative_async_locations_resolve_against_the_manifest_dir(tmp_path: Path) -> None:
    cfg = config("c", [variant("v", "m")])
    cfg["spec"]["asyncInferenceConfig"] = {"outputConfig": {"outputUri": "file://async-out/"}}
    absolute = config("d", [variant("v", "m")])
    absolute["spec"]["asyncInferenceConfig"] = {
        "outputConfig": {"outputUri": "s3://bucket/out/", "failureUri": "file:///var/failed/"}
    }
    write_yaml(tmp_path / "all.yaml", [model("m", "file://m.onnx"), cfg, absolute, endpoint("e", "c")])
    resources = load_resources([tmp_path])
    out = resources.configs[("default", "c")].spec.async_inference_config
    assert out is not None
    assert out.output_config.output_uri == f"file://{tmp_path.resolve()}/async-out/"
    assert out.output_config.failure_location == f"file://{tmp_path.resolve()}/async-out/failures/"
    kept = resources.configs[("default", "d")].spec.async_inference_config
    assert kept is not None
    assert (kept.output_config.output_uri, kept.output_config.failure_uri) == (
        "s3://bucket/out/",
        "file:///var/failed/",
    )
