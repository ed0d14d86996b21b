"""Inference pipelines: 2 to 15 stages run serially as one model (Model.spec.pipeline).

ONNX stages run in this process, each its own ONNX Runtime session; an image stage is a
container of the same pod honouring the serving contract, called over loopback. The whole
pipeline looks like one session to the server (`PipelineSession.run`), so batching, timeouts,
metrics and every route work unchanged: a merged batch flows through every stage, and the
batcher splits the last stage's answer by rows as for any model.
"""

from __future__ import annotations

import http.client
import itertools
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from berth_serving.config import PipelineStage, ServeConfig
from berth_serving.metrics import LATENCY_BUCKETS, Histogram
from berth_serving.pipeline.wiring import Wiring, WiringError, wire
from berth_serving.signature import Signature, TensorSpec

FAILED_STAGE_HEADER = b"x-berth-failed-stage"
# What an image stage's answer may hold at most (a stage is ours, but a bug there must not
# take this process's memory with it).
MAX_STAGE_ANSWER_BYTES = 64 * 1024 * 1024
_UNKNOWN = "unknown"  # the onnx_type of an image stage's tensors: known only per request


class StageFailed(Exception):
    """A stage refused or failed; `code` is the answer's status (an image stage's own)."""

    def __init__(self, stage: str, code: int, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.code = code
        self.message = message


@dataclass
class _Stage:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]  # the ones kept (spec.outputs), all by default
    batchable: bool = True  # an image stage is taken at its word: N rows in, N rows out
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class _OnnxStage(_Stage):
    session: Any = None

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, Any]:
        names = [spec.name for spec in self.outputs]
        try:
            values = self.session.run(names, dict(feed))
        except Exception as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            # ONNX Runtime's InvalidArgument: the values that reached it (from the client's input).
            code = 400 if type(error).__name__ == "InvalidArgument" else 500
            raise StageFailed(self.name, code, f"stage {self.name!r} failed: {first_line[:500]}") from None
        return dict(zip(names, values, strict=True))


@dataclass
class _ImageStage(_Stage):
    url: str = ""
    timeout: float = 60.0
    _connection: http.client.HTTPConnection | None = None

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, Any]:
        # One tensor: the contract's bare list; several: {"inputs": {NAME: ...}}.
        document: Any = (
            next(iter(feed.values())).tolist()
            if len(feed) == 1
            else {"inputs": {k: v.tolist() for k, v in feed.items()}}
        )
        body = orjson.dumps(document)
        status, answer = self._post(body)
        if status != 200:
            raise StageFailed(
                self.name, status, f"stage {self.name!r} answered {status}: {_error_text(answer)}"
            )
        try:
            parsed = orjson.loads(answer)
        except orjson.JSONDecodeError:
            raise StageFailed(
                self.name, 502, f"stage {self.name!r} answered something that is not JSON"
            ) from None
        if isinstance(parsed, dict) and isinstance(parsed.get("outputs"), dict):
            found = parsed["outputs"]
        elif isinstance(parsed, dict) and "predictions" in parsed:
            found = {self.outputs[0].name if self.outputs else "predictions": parsed["predictions"]}
        else:
            raise StageFailed(
                self.name, 502, f"stage {self.name!r} answered JSON with no predictions or outputs"
            )
        wanted = [spec.name for spec in self.outputs] or list(found)
        missing = [name for name in wanted if name not in found]
        if missing:
            raise StageFailed(self.name, 502, f"stage {self.name!r} answered no output {missing[0]!r}")
        return {name: np.asarray(found[name]) for name in wanted}

    def _post(self, body: bytes) -> tuple[int, bytes]:
        parts = urllib.parse.urlsplit(self.url)
        for attempt in (1, 2):  # a kept-alive connection the stage closed: once more, fresh
            connection = self._connection
            if connection is None:
                connection = self._connection = http.client.HTTPConnection(
                    parts.hostname or "127.0.0.1", parts.port or 80, timeout=self.timeout
                )
            try:
                connection.request(
                    "POST",
                    "/invocations",
                    body,
                    {"Content-Type": "application/json", "Accept": "application/json"},
                )
                response = connection.getresponse()
                answer = response.read(MAX_STAGE_ANSWER_BYTES + 1)
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                self._connection = None
                if attempt == 2:
                    raise StageFailed(
                        self.name, 502, f"stage {self.name!r} at {self.url} unreachable: {error}"
                    ) from None
                continue
            if len(answer) > MAX_STAGE_ANSWER_BYTES:
                connection.close()
                self._connection = None
                raise StageFailed(
                    self.name, 502, f"stage {self.name!r} answered over {MAX_STAGE_ANSWER_BYTES} bytes"
                )
            return response.status, answer
        raise AssertionError("unreachable")


def _error_text(answer: bytes) -> str:
    try:
        parsed = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return answer[:300].decode("utf-8", "replace").strip() or "no body"
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", error))[:300]
    return str(error if error is not None else parsed)[:300]


class PipelineSession:
    """The stages as one session: `run(output_names, feed)` as ONNX Runtime's, called by the
    batcher's worker thread only."""

    def __init__(
        self, stages: Sequence[_Stage], wirings: Sequence[Wiring | None], providers: list[str]
    ) -> None:
        self.stages = list(stages)
        self._wirings = list(wirings)
        self._providers = providers
        batchable = all(stage.batchable for stage in stages)
        last = stages[-1].outputs
        self.signature = Signature(
            stages[0].inputs, last, frozenset(spec.name for spec in last) if batchable else frozenset()
        )

    def get_providers(self) -> list[str]:
        return self._providers

    def run(self, output_names: Sequence[str], feed: Mapping[str, np.ndarray]) -> list[Any]:
        values: Mapping[str, Any] = feed
        for index, stage in enumerate(self.stages):
            if index:
                values = self._feed(index, values)
            started = time.perf_counter()
            try:
                values = stage.run(values)
            finally:
                stage.latency.observe(time.perf_counter() - started)
        return [values[name] for name in output_names]

    def _feed(self, index: int, values: Mapping[str, Any]) -> dict[str, Any]:
        wiring = self._wirings[index - 1]
        stage = self.stages[index]
        if wiring is not None:
            return {taken: values[given] for taken, given in wiring.feeds}
        # An image stage's outputs are known per request only: by name, else by position,
        # as the taker's dtypes (an answer in JSON has lost them).
        specs = stage.inputs
        if not specs:
            return dict(values)
        if all(spec.name in values for spec in specs):
            chosen = [values[spec.name] for spec in specs]
        elif len(values) == len(specs):
            chosen = list(values.values())
        else:
            raise StageFailed(
                stage.name,
                500,
                f"stage {stage.name!r} takes {len(specs)} inputs, the stage before gave {len(values)}",
            )
        return {
            spec.name: np.asarray(value, spec.dtype) if spec.dtype is not None else value
            for spec, value in zip(specs, chosen, strict=True)
        }


def load_pipeline(config: ServeConfig, scratch: Path) -> PipelineSession:
    """Fetch and load every stage, and check the wiring between each two (WiringError)."""
    from berth_serving.fetch import resolve_model
    from berth_serving.session import load_session

    stages: list[_Stage] = []
    providers: list[str] = ["CPUExecutionProvider"]
    for index, spec in enumerate(config.pipeline):
        if spec.url:
            stages.append(_image_stage(spec, config.timeout_seconds))
            continue
        path = resolve_model(spec.model_uri, scratch / f"stage-{index}", spec.sha256 or None)
        session = load_session(
            path,
            threads=config.intra_op_threads,
            optimization=config.graph_optimization_level,
            providers=config.providers,
        )
        signature = Signature.from_session(session, path)
        outputs = _kept(spec, signature.outputs)
        stages.append(_OnnxStage(spec.name, signature.inputs, outputs, signature.batchable, session=session))
        if len([s for s in stages if isinstance(s, _OnnxStage)]) == 1:
            providers = session.get_providers()
    if isinstance(stages[0], _ImageStage):
        raise WiringError(
            f"the first stage ({stages[0].name!r}) must be an ONNX model: its inputs are the pipeline's"
        )
    wirings: list[Wiring | None] = []
    for giver, taker in itertools.pairwise(stages):
        if isinstance(giver, _ImageStage) or isinstance(taker, _ImageStage):
            wirings.append(None)  # checked per request: an image's signature is not declared
        else:
            wirings.append(wire(giver.name, giver.outputs, taker.name, taker.inputs))
    return PipelineSession(stages, wirings, providers)


def _kept(spec: PipelineStage, outputs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
    if not spec.outputs:
        return outputs
    names = {output.name: output for output in outputs}
    unknown = [name for name in spec.outputs if name not in names]
    if unknown:
        raise WiringError(
            f"stage {spec.name!r} has no output {unknown[0]!r}; it gives {', '.join(o.describe() for o in outputs)}"
        )
    return tuple(names[name] for name in spec.outputs)


def _image_stage(spec: PipelineStage, timeout: float) -> _ImageStage:
    parts = urllib.parse.urlsplit(spec.url)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise WiringError(
            f"stage {spec.name!r}: an image stage is called over loopback, http://127.0.0.1:PORT"
        )
    outputs = tuple(TensorSpec(name, _UNKNOWN, None, None, ()) for name in spec.outputs) or (
        TensorSpec("predictions", _UNKNOWN, None, None, ()),
    )
    return _ImageStage(spec.name, (), outputs, url=spec.url, timeout=timeout)
