"""What a pod gives its containers, given to local processes: ConfigMap volumes, env, sidecars.

The async objects of the planner need three things a plain serving fleet does not: the front
door reads its routes from a mounted ConfigMap (written here into the run directory, and
rewritten when the plan changes, atomically so a reader never sees half a file), the
`async-worker` container runs beside each replica (a SidecarSpec), and their env carries
fieldRef (the pod's name) and secretKeyRef values (from the Secrets among the manifests).
Pure but for the files it writes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..planner.pods import SERVER_CONTAINER
from .sidecar import SidecarSpec, berth_args

Manifest = dict[str, Any]
Key = tuple[str, str]
# Containers local mode runs beside a replica (others in a pod template are left out, with a warning).
SIDECAR_COMMANDS = frozenset({"async-worker"})
# Containers local mode runs as a fleet's process when a pod has no serving container.
PROCESS_COMMANDS = frozenset({"async-frontdoor"})


def configmap_dir(run_dir: Path, namespace: str, name: str) -> Path:
    return run_dir / "configmaps" / namespace / name


def write_config_maps(configmaps: list[Manifest], run_dir: Path) -> None:
    """Each ConfigMap's data as files (one per key), replaced only when their content changed."""
    for obj in configmaps:
        meta = obj["metadata"]
        directory = configmap_dir(run_dir, meta.get("namespace", "default"), meta["name"])
        directory.mkdir(parents=True, exist_ok=True)
        for key, value in (obj.get("data") or {}).items():
            if not key or "/" in key or key.startswith("."):
                continue
            path = directory / key
            content = str(value).encode()
            try:
                if path.read_bytes() == content:
                    continue
            except OSError:
                pass
            tmp = path.with_name(f".{key}.tmp")
            tmp.write_bytes(content)
            os.replace(tmp, path)


def mounts(
    pod_spec: Mapping[str, Any], container: Mapping[str, Any], run_dir: Path, namespace: str
) -> dict[str, Path]:
    """mountPath -> the local directory standing in for it, for the container's ConfigMap volumes."""
    volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
    found: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount.get("name")) or {}
        if "configMap" in volume:
            found[mount["mountPath"].rstrip("/")] = configmap_dir(
                run_dir, namespace, volume["configMap"]["name"]
            )
    return found


def local_path(value: str, mounted: Mapping[str, Path]) -> str:
    """value with a mounted path replaced by its local directory."""
    for mount_path, directory in mounted.items():
        if value == mount_path or value.startswith(mount_path + "/"):
            return str(directory) + value[len(mount_path) :]
    return value


def resolve_env(
    container: Mapping[str, Any], secrets: Mapping[Key, Mapping[str, bytes]], namespace: str
) -> tuple[dict[str, str], tuple[str, ...], list[str]]:
    """(literal env, names set to the pod's name, names that cannot be given here)."""
    env: dict[str, str] = {}
    pod_name: list[str] = []
    missing: list[str] = []
    for source in container.get("envFrom") or []:  # a Model's credentialsSecretRef
        ref = source.get("secretRef") or {}
        entries = secrets.get((namespace, ref.get("name", "")))
        if entries is not None:
            env.update({k: v.decode() for k, v in entries.items()})
        elif ref and not ref.get("optional"):
            missing.append(f"envFrom Secret {ref.get('name')}")
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var:
            env[name] = str(var["value"])
            continue
        source = var.get("valueFrom") or {}
        field = (source.get("fieldRef") or {}).get("fieldPath")
        secret = source.get("secretKeyRef") or {}
        if field == "metadata.name":
            pod_name.append(name)
        elif field == "metadata.namespace":
            env[name] = namespace
        elif secret and secret.get("key") in secrets.get((namespace, secret.get("name", "")), {}):
            env[name] = secrets[(namespace, secret["name"])][secret["key"]].decode()
        elif not (secret and secret.get("optional")):
            missing.append(name)
    return env, tuple(pod_name), missing


def main_container(pod_spec: Mapping[str, Any]) -> Mapping[str, Any]:
    containers = pod_spec.get("containers") or []
    return next(
        (c for c in containers if c.get("name") == SERVER_CONTAINER), containers[0] if containers else {}
    )


def serves_model(pod_spec: Mapping[str, Any]) -> bool:
    return any(c.get("name") == SERVER_CONTAINER for c in pod_spec.get("containers") or [])


def process_args(pod_spec: Mapping[str, Any], run_dir: Path, namespace: str) -> tuple[str, ...] | str:
    """The `berth` command line of a pod without a serving container (the front door), with its
    mounted paths made local; or why local mode cannot run it."""
    container = main_container(pod_spec)
    args = berth_args(container)
    if not args or args[0] not in PROCESS_COMMANDS:
        return f"container {container.get('name')!r} runs {' '.join(args) or 'its image'}: not a berth command local mode runs"
    mounted = mounts(pod_spec, container, run_dir, namespace)
    return tuple(local_path(arg, mounted) for arg in args)


def sidecars(
    pod_spec: Mapping[str, Any], secrets: Mapping[Key, Mapping[str, bytes]], run_dir: Path, namespace: str
) -> tuple[tuple[SidecarSpec, ...], list[str]]:
    """The SidecarSpecs of a serving pod's other containers, and warnings for what is left out."""
    found: list[SidecarSpec] = []
    warnings: list[str] = []
    main = main_container(pod_spec)
    for container in pod_spec.get("containers") or []:
        if container is main:
            continue
        args = berth_args(container)
        if not args or args[0] not in SIDECAR_COMMANDS:
            warnings.append(f"container {container.get('name')!r} is not run in local mode")
            continue
        env, pod_name, missing = resolve_env(container, secrets, namespace)
        warnings += [
            f"container {container['name']!r}: env {name} is not available in local mode" for name in missing
        ]
        mounted = mounts(pod_spec, container, run_dir, namespace)
        local_args = tuple(local_path(arg, mounted) for arg in args)
        found.append(SidecarSpec(container["name"], local_args, env, pod_name))
    return tuple(found), warnings
