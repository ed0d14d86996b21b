"""Metadata shared by every child object: namespace, labels, ownerReferences."""

from __future__ import annotations

from typing import Any

from ..api import API_VERSION, Endpoint
from .types import Manifest


def owner_references(endpoint: Endpoint) -> list[dict[str, Any]]:
    """A controller reference to the Endpoint, for garbage collection; none without a uid (render)."""
    if not endpoint.metadata.uid:
        return []
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "Endpoint",
            "name": endpoint.name,
            "uid": endpoint.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def object_meta(endpoint: Endpoint, name: str, labels: dict[str, str]) -> Manifest:
    meta: Manifest = {"name": name, "namespace": endpoint.namespace, "labels": dict(labels)}
    owners = owner_references(endpoint)
    if owners:
        meta["ownerReferences"] = owners
    return meta
