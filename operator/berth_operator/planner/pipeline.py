"""Inference pipelines (Model.spec.pipeline) in pods: what the server is told, the image stages'
containers, and how the instance type is shared among them.

A pipeline Model is one model to everything else (EndpointConfigs, rollouts, serverless, async,
capture, batch transform): only its pods differ. Each ONNX stage has a storage-initializer of its
own that fetches it into a directory of the model volume (pods.model_fetches); the server runs
`berth serve` with BERTH_PIPELINE naming those directories (the runtime loads the one .onnx in
each) and the image stages at http://127.0.0.1:PORT.

An image stage is a native sidecar (an init container with restartPolicy Always, Kubernetes
1.29+) rather than a plain second container, for three reasons: its startupProbe holds the server
back until the stage answers /ping, so the server's warm-up requests can pass through it; it is
stopped only after the server has drained, so a request in flight still reaches every stage; and
a TransformJob's pod completes when the transform container exits (a plain sidecar would keep
the Job's pod running for ever).

Resources: the instance type is what one replica may take on a node (what the scheduler places,
what `berth recommend` prices, what a serverless variant's memory buys), so the pod's containers
share it rather than add to it. Berth cannot tell which stage is the heavy one, so each stage gets
an equal share of the CPU and memory: an image stage's container 1/N of them (N stages), the server
the rest, for the N - K ONNX stages it runs (K image stages). Everything else the type names (GPUs,
ephemeral storage) stays with the server. Shares are rounded down (to a millicore, to a MiB) and
the remainder is the server's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from berth_serving.config import PipelineStage
from berth_serving.termination import WIRING_REFUSED

from ..api import ModelSpec, PipelineStageSpec
from ..quantity import canonical, to_bytes
from ..settings import Settings
from .pods import SERVER_CONTAINER, TMP_VOLUME, container_resources, container_security, stage_dir

STAGE_CONTAINER_PREFIX = "stage-"
LOOPBACK = "127.0.0.1"
MIB = 1024 * 1024
SHARED_RESOURCES = ("cpu", "memory")  # what the containers of a pipeline pod split between them
PROBE_PERIOD_SECONDS = 5

Quantities = Mapping[str, Mapping[str, int | float | str]]


def stage_container(stage: str) -> str:
    """The container of an image stage."""
    return f"{STAGE_CONTAINER_PREFIX}{stage}"


def stage_url(port: int) -> str:
    return f"http://{LOOPBACK}:{port}"


def image_stages(model: ModelSpec) -> list[tuple[str, PipelineStageSpec]]:
    return [(name, stage) for name, stage in model.stages if stage.is_image]


def served_stages(model: ModelSpec) -> tuple[PipelineStage, ...]:
    """The server's BERTH_PIPELINE: each ONNX stage at the directory its storage-initializer
    fetched it into (already checked against its sha256 there), each image stage on loopback."""
    found = []
    for name, stage in model.stages:
        outputs = tuple(stage.outputs)
        if stage.port is not None:
            found.append(PipelineStage(name, outputs=outputs, url=stage_url(stage.port)))
        else:
            found.append(PipelineStage(name, model_uri=stage_dir(name), outputs=outputs))
    return tuple(found)


def stage_containers(
    model: ModelSpec, settings: Settings, quantities: Quantities, startup_seconds: int
) -> list[dict[str, Any]]:
    """Each image stage as a native sidecar with its share of the instance type (see above)."""
    if not image_stages(model):
        return []
    share = stage_quantities(quantities, model)
    containers = []
    for name, stage in image_stages(model):
        assert stage.image is not None and stage.port is not None  # admission: an image has a port
        port = stage.port
        container: dict[str, Any] = {
            "name": stage_container(name),
            "image": stage.image,
            "imagePullPolicy": settings.images.pull_policy,
            "restartPolicy": "Always",  # a native sidecar: started before the server, stopped after
        }
        if stage.env:
            container["env"] = [e.to_wire() for e in stage.env]
        container.update(
            {
                "ports": [{"containerPort": stage.port, "protocol": "TCP"}],
                # The server starts once every stage answers /ping (its warm-up goes through them).
                "startupProbe": _ping(port, startup_seconds // PROBE_PERIOD_SECONDS),
                "readinessProbe": _ping(port, 2),
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "resources": container_resources(share, None),
                "securityContext": container_security(),
                "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/tmp"}],
            }
        )
        containers.append(container)
    return containers


def _ping(port: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": "/ping", "port": port},
        "periodSeconds": PROBE_PERIOD_SECONDS,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


# ---------------------------------------------------------------- sharing the instance type


def stage_quantities(quantities: Quantities, model: ModelSpec) -> dict[str, dict[str, str]]:
    """One image stage's container: 1/N of the CPU and memory (N stages), rounded down."""
    count = len(model.pipeline)
    return {
        part: {
            key: _format(key, _amount(key, values[key]) // count) for key in SHARED_RESOURCES if key in values
        }
        for part, values in quantities.items()
        if any(key in values for key in SHARED_RESOURCES)
    }


def server_quantities(quantities: Quantities, model: ModelSpec) -> dict[str, dict[str, int | float | str]]:
    """The server's: what the image stages do not take, and everything but CPU and memory. Its
    request never exceeds its limit (the remainders of the two differ)."""
    images, count = len(image_stages(model)), len(model.pipeline)
    if not images:
        return {part: dict(values) for part, values in quantities.items()}
    result: dict[str, dict[str, int | float | str]] = {
        part: dict(values) for part, values in quantities.items()
    }
    left: dict[str, dict[str, int]] = {}
    for part, values in quantities.items():
        for key in SHARED_RESOURCES:
            if key in values:
                total = _amount(key, values[key])
                left.setdefault(part, {})[key] = total - images * _round(key, total // count)
    for key in SHARED_RESOURCES:
        request, limit = left.get("requests", {}).get(key), left.get("limits", {}).get(key)
        if request is not None and limit is not None and request > limit:
            left["requests"][key] = limit
    for part, values in left.items():
        for key, amount in values.items():
            result[part][key] = _format(key, amount, rounded=False)
    return result


_PLAIN_NUMBER = re.compile(r"^\d+(\.\d*)?$|^\.\d+$")


def _amount(key: str, value: int | float | str) -> int:
    """CPU in millicores (rounded down), memory in bytes."""
    if key == "memory":
        return to_bytes(value)
    text = str(value).strip()
    if text.endswith("m"):
        return int(Decimal(text[:-1]).to_integral_value(rounding=ROUND_FLOOR))
    if _PLAIN_NUMBER.match(text):
        return int((Decimal(text) * 1000).to_integral_value(rounding=ROUND_FLOOR))
    return to_bytes(text) * 1000


def _round(key: str, amount: int) -> int:
    """A share rounded down to a whole MiB of memory (when it holds one), a millicore of CPU."""
    if key == "memory" and amount >= MIB:
        return amount // MIB * MIB
    return amount


def _format(key: str, amount: int, rounded: bool = True) -> str:
    if rounded:
        amount = _round(key, amount)
    if key == "cpu":
        return canonical(f"{amount}m")
    return canonical(f"{amount // MIB}Mi" if amount % MIB == 0 and amount else str(amount))


def refused_wiring(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """What a server of these pods said when it refused the pipeline's wiring (its termination
    message, now or before its last restart), else None."""
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") != SERVER_CONTAINER:
                continue
            for state in (status.get("state") or {}, status.get("lastState") or {}):
                message = str((state.get("terminated") or {}).get("message") or "").strip()
                if message.startswith(WIRING_REFUSED):
                    return message
    return None
