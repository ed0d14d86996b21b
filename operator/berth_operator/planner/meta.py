"""Metadata shared by every child object: namespace, labels, ownerReferences."""

from __future__ import annotations

from typing import Any

from ..api import API_VERSION, Resource
from .types import Manifest


def owner_references(owner: Resource) -> list[dict[str, Any]]:
    """A controller reference to a Berth object, for garbage collection; none without a uid (render)."""
    if not owner.metadata.uid:
        return []
    return [
        {
            "apiVersion": API_VERSION,
            "kind": owner.KIND,
            "name": owner.name,
            "uid": owner.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def object_meta(owner: Resource, name: str, labels: dict[str, str]) -> Manifest:
    meta: Manifest = {"name": name, "namespace": owner.namespace, "labels": dict(labels)}
    owners = owner_references(owner)
    if owners:
        meta["ownerReferences"] = owners
    return meta
