"""A model ready to answer: its session, signature and batcher. One per process in
single-model serving, one per cached model on a multi-model endpoint."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berth_serving.batcher import Batcher
from berth_serving.config import ServeConfig
from berth_serving.metrics import Metrics
from berth_serving.signature import Signature


@dataclass
class LoadedModel:
    name: str
    path: Path
    session: Any
    signature: Signature
    output_names: list[str]
    batcher: Batcher
    names: tuple[str, ...]  # what v2 answers for: the model name and the endpoint's aliases


def batch_delay_seconds(config: ServeConfig, providers: list[str]) -> float:
    """How long the worker may hold a batch open for more requests.

    On a GPU one ORT call costs about the same for 1 or 32 rows, so waiting up to
    max_batch_delay_ms to fill a batch pays. On CPU the cost grows with the rows: waiting
    only adds latency, and under load each wait costs the worker a GIL hand-off (measured
    here: 9,400 vs 11,300 single-row MLP requests/s at concurrency 64). CPU serving batches
    naturally instead: requests arriving while ORT runs form the next batch."""
    on_cpu = not providers or providers[0] == "CPUExecutionProvider"
    return 0.0 if on_cpu else config.max_batch_delay_ms / 1000.0


def start_model(
    config: ServeConfig,
    loop: asyncio.AbstractEventLoop,
    name: str,
    path: Path,
    session: Any,
    signature: Signature,
    metrics: Metrics,
    names: tuple[str, ...],
    one_thread_twin: Any | None = None,
) -> LoadedModel:
    """Wrap a loaded session (and its one-thread twin, if it has one: session.py) with its own
    batcher (started: its worker thread runs)."""
    output_names = [spec.name for spec in signature.outputs]
    twin_run = None if one_thread_twin is None else lambda feed: one_thread_twin.run(output_names, feed)
    batcher = Batcher(
        lambda feed: session.run(output_names, feed),
        loop,
        batchable=signature.batchable,
        max_batch_size=config.max_batch_size,
        max_delay_seconds=batch_delay_seconds(config, session.get_providers()),
        on_batch=metrics.observe_batch,
        run_one_thread=twin_run,
    )
    batcher.start()
    return LoadedModel(name, path, session, signature, output_names, batcher, names)
