"""The status of Models and EndpointConfigs, written when it differs (the planner computes it).

kopf-free, like reconcile.py: the handlers pass the object as the watch delivered it and, for an
EndpointConfig, which of its Models exist (from the Models index); for a Model, its serving
pods (from the pods index).
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from datetime import datetime

from .apply import status_patch
from .kube import KubeClient, berth_kind
from .planner.resources import config_status, model_status
from .planner.types import Manifest

MODELS = berth_kind("Model")
CONFIGS = berth_kind("EndpointConfig")


async def sync_model_status(
    kube: KubeClient, raw: Manifest, now: datetime, pods: Iterable[Manifest] = ()
) -> bool:
    """Write the Model's planned status if it differs; True when something was written."""
    body = status_patch(raw.get("status"), model_status(raw, now, pods))
    if body is None:
        return False
    meta = raw["metadata"]
    await kube.patch_status(MODELS, meta["namespace"], meta["name"], body)
    return True


async def sync_config_status(
    kube: KubeClient, raw: Manifest, existing_models: Set[str], now: datetime
) -> bool:
    """Write the EndpointConfig's planned status if it differs; True when something was written."""
    body = status_patch(raw.get("status"), config_status(raw, existing_models, now))
    if body is None:
        return False
    meta = raw["metadata"]
    await kube.patch_status(CONFIGS, meta["namespace"], meta["name"], body)
    return True
