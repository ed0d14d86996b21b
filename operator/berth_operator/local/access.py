"""Invoke authentication in local mode: the cluster's rules where a machine can keep them.

An Endpoint without spec.auth is served open (None) on loopback, and `berth up` says so: the
router only listens on 127.0.0.1. KubernetesRBAC needs an API server to review tokens, so local
mode serves it open on loopback too, and says that. APIKey is checked for real: the keys come
from a v1 Secret among the manifests, written where the pod would have its Secret volume.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from berth_serving.config import ENV

from ..api import Endpoint, InvokeAuth
from ..planner.access import API_KEYS_VOLUME
from ..planner.types import Manifest

Key = tuple[str, str]
API_KEYS_ENV = ENV["api_keys_dir"]


def local_endpoint(endpoint: Endpoint) -> tuple[Endpoint, str]:
    """The Endpoint as local mode serves it, and the line `berth up` prints about its auth."""
    where = f"Endpoint {endpoint.namespace}/{endpoint.name}"
    auth = endpoint.spec.auth
    if auth is not None and auth.mode == "APIKey":
        assert auth.secret_ref is not None  # admission
        return endpoint, f"{where}: invoke auth APIKey (keys from Secret {auth.secret_ref.name})"
    if auth is None:
        note = f"{where}: invoke auth None (local mode's default on loopback; a cluster would use KubernetesRBAC)"
    elif auth.mode == "KubernetesRBAC":
        note = f"{where}: invoke auth KubernetesRBAC is not checked in local mode (no API server): open on loopback"
    else:
        return endpoint, f"{where}: invoke auth None"
    spec = endpoint.spec.model_copy(update={"auth": InvokeAuth(mode="None")})
    return endpoint.model_copy(update={"spec": spec}), note


def secret_name(deployment: Manifest) -> str | None:
    """The Secret the planned pod mounts its API keys from."""
    for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
        if volume.get("name") == API_KEYS_VOLUME:
            return str(volume["secret"]["secretName"])
    return None


def write_api_keys(
    deployment: Manifest, secrets: Mapping[Key, Mapping[str, bytes]], run_dir: Path
) -> Path | str:
    """The directory standing in for the pod's Secret volume (one file per entry, owner-only), or
    why there is none. Rewritten on every call, so an edited Secret rotates the keys."""
    name = secret_name(deployment)
    namespace = deployment["metadata"].get("namespace", "default")
    if name is None:
        return f"Deployment {deployment['metadata']['name']}: no API key volume"
    entries = secrets.get((namespace, name))
    if entries is None:
        return f"Secret {namespace}/{name} not found among the manifests (APIKey needs it)"
    directory = run_dir / "secrets" / namespace / name
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    wanted = {key for key in entries if key and "/" not in key and not key.startswith(".")}
    for stale in directory.iterdir():
        if stale.name not in wanted:
            stale.unlink()
    for key in sorted(wanted):
        _replace_if_changed(directory / key, entries[key])
    return directory


def _replace_if_changed(path: Path, content: bytes) -> None:
    """Write `content` to `path` so that a reader never sees it half written: the serving
    process reads the directory while this runs, and a truncated file would be an empty entry
    (a key refused until the next reading). The temporary name is a dotfile, which readers skip."""
    try:
        if path.read_bytes() == content:
            return
    except OSError:
        pass
    temporary = path.with_name(f".{path.name}.writing")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    os.replace(temporary, path)
