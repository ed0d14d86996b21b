"""ONNX Runtime session setup: threads from the container's CPU limit, spinning off,
the configured graph optimization level, and execution providers with a CPU fallback; and
the one-thread twin a CPU session of a small model gets for batches of small requests."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from berth_serving.cgroup import CGROUP_ROOT, intra_op_threads

log = logging.getLogger("berth.serving.session")

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
# Short names accepted by --providers, and the ONNX Runtime provider each means.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
CPU = "CPUExecutionProvider"
# The twin is a second copy of the model's weights: only a model of at most this much (the
# larger of its file and what its session grew the process by) gets one. Larger dense models
# rarely need it: at about 2 FLOPs per weight a row, a model of 8M float weights (32 MB) already
# costs about 0.2 ms a row on one core, past batcher.ONE_THREAD_BELOW_SECONDS. Loading it took
# 4 ms for the 5 MB MLP here (0.19 s for a 100 MB one).
TWIN_MAX_BYTES = 64 * 1024 * 1024


def choose_providers(requested: Sequence[str], available: Sequence[str]) -> tuple[list[str], str | None]:
    """The providers to use, in order, always ending with CPU; and a warning when some of
    the requested ones are not available here (say, CUDA asked for on a CPU-only image)."""
    wanted = [PROVIDER_ALIASES.get(name.strip().lower(), name.strip()) for name in requested if name.strip()]
    chosen = [name for name in dict.fromkeys(wanted) if name in available and name != CPU]
    missing = [name for name in dict.fromkeys(wanted) if name not in available]
    warning = None
    if missing:
        warning = (
            f"execution provider(s) {', '.join(missing)} not available here "
            f"(available: {', '.join(available)}); using {', '.join([*chosen, CPU])}"
        )
    return [*chosen, CPU], warning


def session_options(threads: int, optimization: str) -> Any:
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise ValueError(f"graph optimization level must be one of {', '.join(OPTIMIZATION_LEVELS)}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = levels[optimization]
    # Spinning threads burn the CPU the event loop needs and make tail latency erratic.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def load_session(
    model_path: Path,
    *,
    threads: int = 0,
    optimization: str = "all",
    providers: Sequence[str] = (),
    cgroup_root: Path = CGROUP_ROOT,
) -> Any:
    import onnxruntime as ort

    count = intra_op_threads(threads, cgroup_root)
    chosen, warning = choose_providers(providers, ort.get_available_providers())
    if warning:
        log.warning(warning)
    session = ort.InferenceSession(
        str(model_path), sess_options=session_options(count, optimization), providers=chosen
    )
    log.info(
        "model session ready",
        extra={
            "fields": {
                "path": str(model_path),
                "intra_op_threads": count,
                "providers": session.get_providers(),
            }
        },
    )
    return session


def load_one_thread_twin(
    model_path: Path, session: Any, optimization: str, grown_bytes: int, max_bytes: int = TWIN_MAX_BYTES
) -> Any | None:
    """A second session of the model on one intra-op thread, or None where it cannot pay.

    Under load the event loop needs a CPU of its own: a batch of many small requests whose
    ORT time per request is within a few times the loop's own cost per request gains little
    from more threads (the loop sets the pace), and their wake-ups take CPU from it; on one
    thread the same batch costs 40% less CPU (the MLP at 24 rows here: 0.65 ms on one thread,
    1.1 ms of CPU on two). The batcher picks the twin for such batches (batcher.ONE_THREAD_BELOW_SECONDS)
    and the session with every thread for larger work. None: not on CPU alone (threads do not
    decide a GPU's speed), a session of one thread already, or a model over `max_bytes`
    (`grown_bytes`: what loading `session` added to the process's resident memory)."""
    import onnxruntime as ort

    if session.get_providers() != [CPU] or session.get_session_options().intra_op_num_threads <= 1:
        return None
    size = max(grown_bytes, model_path.stat().st_size)  # the growth under-counts reused heap
    if size > max_bytes:
        log.info(
            "no one-thread twin: the model is too large to load twice",
            extra={"fields": {"path": str(model_path), "bytes": size, "max_bytes": max_bytes}},
        )
        return None
    return ort.InferenceSession(
        str(model_path), sess_options=session_options(1, optimization), providers=[CPU]
    )
