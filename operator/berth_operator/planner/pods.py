"""The pod scaffolding every pod that runs a model has: serving pods (workload.py) and
TransformJob pods (transform/job.py).

The container names and the storage-initializer's arguments are spelled here once; local mode
reads them from here instead of parsing planned objects back.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from berth_serving.config import MODEL_MOUNT_PATH

from ..api import ModelSpec
from ..quantity import canonical, to_bytes
from ..settings import InstanceType, Settings

INIT_CONTAINER = "storage-initializer"
SERVER_CONTAINER = "server"
TRANSFORM_CONTAINER = "transform"
MODEL_VOLUME = "model"
TMP_VOLUME = "tmp"
TMP_SIZE_LIMIT = "1Gi"  # scratch of the serving runtime and of batch transform's partial outputs
PVC_MOUNT_ROOT = "/mnt/pvc"
PVC_VOLUME = "pvc"
RUN_AS = 10001  # the uid and gid the Berth images are built with
CACHE_VOLUME = "model-cache"
CACHE_MOUNT_PATH = "/var/cache/berth/models"
# The startup probe gives a replica (and a pipeline's image stage) this long to fetch nothing more
# and load its model before the liveness probe may restart it (large models take minutes to load).
STARTUP_SECONDS = 600
INIT_RESOURCES: dict[str, Any] = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}


def pvc_claim(uri: str) -> str | None:
    """CLAIM of a pvc://CLAIM/PATH URI."""
    if not uri.startswith("pvc://"):
        return None
    return uri[len("pvc://") :].partition("/")[0]


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def model_volume_size(instance_type: InstanceType, volume_size_in_gb: int | None = None) -> str:
    """The model emptyDir's sizeLimit: the variant's volumeSizeInGB, else the instance type's."""
    if volume_size_in_gb is not None:
        return f"{volume_size_in_gb}Gi"
    return canonical(instance_type.model_volume_size_limit)


@dataclass(frozen=True)
class ModelFetch:
    """What one storage-initializer fetches into the model volume: the model, or one ONNX stage of
    a pipeline into a directory of its own (the server finds the .onnx in it)."""

    container: str  # the init container's name
    uri: str
    sha256: str | None
    dest: str  # where in the pod the model lands

    @property
    def stage(self) -> str | None:
        return stage_of_init_container(self.container)


def stage_dir(stage: str) -> str:
    """Where a pipeline's ONNX stage is fetched to, in every container that mounts the model volume."""
    return f"{MODEL_MOUNT_PATH}/{stage}"


def stage_init_container(stage: str) -> str:
    return f"{INIT_CONTAINER}-{stage}"


def is_init_container(name: str) -> bool:
    """A storage-initializer: the model's, or a pipeline stage's."""
    return name == INIT_CONTAINER or name.startswith(f"{INIT_CONTAINER}-")


def stage_of_init_container(name: str) -> str | None:
    """The pipeline stage a storage-initializer fetches (None: the model's own)."""
    prefix = f"{INIT_CONTAINER}-"
    return name[len(prefix) :] if name.startswith(prefix) else None


def model_fetches(model: ModelSpec) -> list[ModelFetch]:
    """The storage-initializers of a pod that runs the model: one for the model, or one per ONNX
    stage of a pipeline (image stages are containers of their own: planner/pipeline.py)."""
    if not model.is_pipeline:
        return [ModelFetch(INIT_CONTAINER, model.uri, model.sha256, MODEL_MOUNT_PATH)]
    return [
        ModelFetch(stage_init_container(name), stage.model_uri, stage.sha256, stage_dir(name))
        for name, stage in model.stages
        if stage.model_uri is not None
    ]


def pvc_claims(model: ModelSpec) -> list[str]:
    """The claims of the model's pvc:// URIs (a pipeline's stages may name several), in order."""
    uris = [model.uri] if model.is_multi_model else [f.uri for f in model_fetches(model)]
    return list(dict.fromkeys(c for c in map(pvc_claim, uris) if c is not None))


def pvc_volume_name(model: ModelSpec, claim: str) -> str:
    """The volume of a claim: `pvc`, then pvc-2, pvc-3... for a pipeline's further claims."""
    index = pvc_claims(model).index(claim)
    return PVC_VOLUME if index == 0 else f"{PVC_VOLUME}-{index + 1}"


def uses_cache(model: ModelSpec, settings: Settings) -> bool:
    """The settings name a node-local model cache, and a fetch's sha256 gives its key there."""
    return settings.model_cache.volume is not None and any(f.sha256 for f in model_fetches(model))


def model_volumes(model: ModelSpec, size_limit: str, settings: Settings) -> list[dict[str, Any]]:
    """The pod's volumes: the model and /tmp emptyDirs (bounded, so a runaway download or unpack
    evicts this pod rather than filling the node), the claims of pvc:// model URIs, and the
    node-local model cache when there is one."""
    volumes: list[dict[str, Any]] = [
        {"name": MODEL_VOLUME, "emptyDir": {"sizeLimit": size_limit}},
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
    ]
    for claim in pvc_claims(model):  # the init containers read the models from the claims
        volumes.append(_pvc_volume(pvc_volume_name(model, claim), claim))
    if uses_cache(model, settings):
        assert settings.model_cache.volume is not None
        volumes.append({"name": CACHE_VOLUME, **settings.model_cache.volume.source()})
    return volumes


def _pvc_volume(name: str, claim: str) -> dict[str, Any]:
    return {"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}


def _pvc_mount(name: str, claim: str) -> dict[str, Any]:
    # fetch-model reads pvc://CLAIM/PATH at /mnt/pvc/CLAIM/PATH
    return {"name": name, "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": True}


def multi_model_volumes(model: ModelSpec, size_limit: str) -> list[dict[str, Any]]:
    """A MultiModel pod has no model volume: its server fetches each model on demand into its
    temporary directory, so /tmp is one emptyDir as large as a single-model pod's model and /tmp
    volumes together (the same ephemeral-storage request); and a pvc:// prefix's claim, which the
    server reads the models from."""
    volumes: list[dict[str, Any]] = [
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": ephemeral_storage(size_limit)}}
    ]
    claim = pvc_claim(model.uri)
    if claim is not None:
        volumes.append(_pvc_volume(PVC_VOLUME, claim))
    return volumes


def multi_model_mounts(model: ModelSpec) -> list[dict[str, Any]]:
    """The server's mounts in a MultiModel pod: the scratch /tmp, and a pvc:// prefix's claim."""
    mounts: list[dict[str, Any]] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    claim = pvc_claim(model.uri)
    if claim is not None:
        mounts.append(_pvc_mount(PVC_VOLUME, claim))
    return mounts


def storage_credentials(model: ModelSpec) -> list[dict[str, Any]]:
    """envFrom of the container that fetches the model: the Secret of credentialsSecretRef."""
    if model.credentials_secret_ref is None:
        return []
    return [{"secretRef": {"name": model.credentials_secret_ref.name}}]


def ephemeral_storage(size_limit: str) -> str:
    """The main container's ephemeral-storage request: both emptyDirs, so the scheduler places the
    pod on a node with room for the model."""
    total = to_bytes(size_limit) + to_bytes(TMP_SIZE_LIMIT)
    return canonical(f"{total // 1024}Ki" if total % 1024 == 0 else total)


def model_volume_mounts() -> list[dict[str, Any]]:
    """The main container's mounts: the fetched model, read-only, and /tmp."""
    return [
        {"name": MODEL_VOLUME, "mountPath": MODEL_MOUNT_PATH, "readOnly": True},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},
    ]


def fetch_model_args(
    model: ModelSpec, size_limit: str, cache: bool = False, sha256_beside: bool = False
) -> list[str]:
    """The model's storage-initializer's arguments (a Model that is no pipeline)."""
    [fetch] = model_fetches(model)
    return _fetch_args(fetch, size_limit, cache, sha256_beside)


def _fetch_args(fetch: ModelFetch, size_limit: str, cache: bool, sha256_beside: bool = False) -> list[str]:
    """`berth fetch-model URI DEST`: verified by sha256 when given (or, sha256_beside, by the
    URI.sha256 beside a model under a MultiModel prefix when there is one), and never more bytes
    than the model volume holds (an archive that would unpack past it is refused with that
    reason); with a cache, copied from it when the node has the model and stored into it when not.
    Each stage of a pipeline may take the whole volume: the emptyDir's sizeLimit bounds them all."""
    args = ["fetch-model", fetch.uri, fetch.dest, "--max-bytes", str(to_bytes(size_limit))]
    if fetch.sha256:
        args += ["--sha256", fetch.sha256]
    elif sha256_beside:
        args.append("--sha256-beside")
    if cache and fetch.sha256:
        args += ["--cache-dir", CACHE_MOUNT_PATH]
    return args


def model_init_container(
    model: ModelSpec, settings: Settings, size_limit: str, sha256_beside: bool = False
) -> dict[str, Any]:
    """The storage-initializer of a Model that is no pipeline."""
    [container] = model_init_containers(model, settings, size_limit, sha256_beside)
    return container


def model_init_containers(
    model: ModelSpec, settings: Settings, size_limit: str, sha256_beside: bool = False
) -> list[dict[str, Any]]:
    """The storage-initializers: `berth fetch-model` of the model (or of each ONNX stage of a
    pipeline, one after the other) into the model volume."""
    cache = uses_cache(model, settings)
    return [
        _init_container(model, fetch, settings, size_limit, cache, sha256_beside)
        for fetch in model_fetches(model)
    ]


def _init_container(
    model: ModelSpec, fetch: ModelFetch, settings: Settings, size_limit: str, cache: bool, sha256_beside: bool
) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [
        {"name": MODEL_VOLUME, "mountPath": MODEL_MOUNT_PATH},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},
    ]
    claim = pvc_claim(fetch.uri)
    if claim is not None:
        mounts.append(_pvc_mount(pvc_volume_name(model, claim), claim))
    if cache and fetch.sha256:
        mounts.append({"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT_PATH})
    container: dict[str, Any] = {
        "name": fetch.container,
        # Berth's own image always has `berth fetch-model`, even when the server image is BYO.
        "image": settings.images.cpu,
        "imagePullPolicy": settings.images.pull_policy,
        "command": ["berth"],
        "args": _fetch_args(fetch, size_limit, cache, sha256_beside),
        "resources": copy.deepcopy(INIT_RESOURCES),
        # berth writes its error to /dev/termination-log; the log tail stands in if it could not.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security(),
        "volumeMounts": mounts,
    }
    if model.env:
        container["env"] = [e.to_wire() for e in model.env]
    if model.credentials_secret_ref is not None:
        container["envFrom"] = storage_credentials(model)
    return container


def pod_scaffold(model: ModelSpec, service_account: str | None = None) -> dict[str, Any]:
    """The pod-level fields every pod that runs the model has, in the order the pod spec lists them:
    serviceAccountName (the given one, else the model's), no automounted API token or service
    links, and a non-root securityContext with the images' uid."""
    spec: dict[str, Any] = {}
    account = service_account or model.service_account_name
    if account:
        spec["serviceAccountName"] = account
    spec.update(
        {
            # IRSA and workload identity need no token here; a server that reviews callers' tokens
            # gets its own projected into its container alone (planner/access.py).
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": pod_security(),
        }
    )
    return spec


def pod_security() -> dict[str, Any]:
    """Non-root with the images' uid, the runtime's default seccomp profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def node_placement(instance_type: InstanceType) -> dict[str, Any]:
    """The instance type's nodeSelector and tolerations, those it has."""
    placement: dict[str, Any] = {}
    if instance_type.node_selector:
        placement["nodeSelector"] = dict(sorted(instance_type.node_selector.items()))
    if instance_type.tolerations:
        placement["tolerations"] = [dict(t) for t in instance_type.tolerations]
    return placement


def container_resources(
    quantities: Mapping[str, Mapping[str, int | float | str]], ephemeral: str | None
) -> dict[str, Any]:
    """requests and limits in the API server's spelling, keys sorted, with the ephemeral-storage
    request for the pod's emptyDirs (unless the quantities name one)."""
    result: dict[str, Any] = {}
    requests = dict(quantities.get("requests") or {})
    if ephemeral is not None:
        requests.setdefault("ephemeral-storage", ephemeral)
    for part, values in (("requests", requests), ("limits", dict(quantities.get("limits") or {}))):
        if values:
            result[part] = {key: canonical(values[key]) for key in sorted(values)}
    return result
