"""ONNX Runtime session settings: providers with a CPU fallback, spinning off, threads from
the cgroup CPU limit (fake cgroup files), graph optimization level."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from berth_serving.session import choose_providers, load_one_thread_twin, load_session, session_options

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"


def test_cpu_by_default() -> None:
    assert choose_providers([], [CPU]) == ([CPU], None)


def test_cuda_when_available() -> None:
    assert choose_providers(["cuda"], [TRT, CUDA, CPU]) == ([CUDA, CPU], None)
    assert choose_providers(["tensorrt", "cuda"], [TRT, CUDA, CPU]) == ([TRT, CUDA, CPU], None)


def test_cuda_missing_falls_back_to_cpu_with_a_warning() -> None:
    providers, warning = choose_providers(["cuda"], [CPU])
    assert providers == [CPU]
    assert warning is not None
    assert "CUDAExecutionProvider" in warning and "using CPUExecutionProvider" in warning


def test_session_options() -> None:
    options = session_options(3, "basic")
    assert options.intra_op_num_threads == 3
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    import onnxruntime as ort

    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with pytest.raises(ValueError, match="graph optimization level"):
        session_options(1, "fastest")


def test_threads_follow_the_cgroup_limit(onnx_models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    session = load_session(onnx_models.identity, cgroup_root=tmp_path)
    assert session.get_session_options().intra_op_num_threads == 1
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_unavailable_provider_logs_one_warning(onnx_models, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.WARNING, logger="berth.serving.session"):
        session = load_session(onnx_models.identity, providers=("cuda",))
    assert session.get_providers() == [CPU]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "CUDAExecutionProvider" in warnings[0].getMessage()


def test_batch_delay_applies_to_accelerators_only() -> None:
    from berth_serving.config import ServeConfig
    from berth_serving.loaded import batch_delay_seconds

    config = ServeConfig(model_uri="m.onnx", max_batch_delay_ms=4)
    assert batch_delay_seconds(config, [CPU]) == 0.0
    assert batch_delay_seconds(config, [CUDA, CPU]) == pytest.approx(0.004)
    assert batch_delay_seconds(config, [TRT, CUDA, CPU]) == pytest.approx(0.004)


def test_a_cpu_session_of_a_small_model_gets_a_one_thread_twin_answering_alike(onnx_models) -> None:  # type: ignore[no-untyped-def]
    session = load_session(onnx_models.mlp, threads=2)
    twin = load_one_thread_twin(onnx_models.mlp, session, "all", grown_bytes=10 * 1024 * 1024)
    assert twin is not None
    assert twin.get_session_options().intra_op_num_threads == 1
    assert twin.get_providers() == [CPU]
    x = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
    np.testing.assert_allclose(twin.run(None, {"x": x})[0], session.run(None, {"x": x})[0], rtol=1e-6)


def test_no_twin_for_a_one_thread_session_or_a_model_too_large_to_load_twice(
    onnx_models,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    one = load_session(onnx_models.mlp, threads=1)
    assert load_one_thread_twin(onnx_models.mlp, one, "all", grown_bytes=0) is None
    two = load_session(onnx_models.mlp, threads=2)
    with caplog.at_level(logging.INFO, logger="berth.serving.session"):
        assert load_one_thread_twin(onnx_models.mlp, two, "all", grown_bytes=200, max_bytes=100) is None
    assert "no one-thread twin: the model is too large to load twice" in caplog.text
