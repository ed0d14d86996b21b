"""Pure diffing of a Plan against what exists: which objects to create, patch and delete.

The API server adds defaults to what we create (imagePullPolicy, protocol, revisionHistoryLimit
and so on), so an existing child is compared with "desired is a subset of observed": only a
field we set and that now differs causes a write, and a resync with nothing changed writes
nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .planner.observe import is_subset, numbers_equal
from .planner.types import Manifest, ObjectRef

# Metadata fields the planner owns on its children; the rest (uid, resourceVersion, managed
# fields, other controllers' annotations) belongs to the API server and others.
OWNED_METADATA = ("labels", "annotations", "ownerReferences")
NOT_PATCHED = ("apiVersion", "kind", "metadata", "status")


def subset_patch(desired: Mapping[str, Any], observed: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch setting the fields of desired that observed lacks or has otherwise."""
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        current = observed.get(key)
        if is_subset(value, current):
            continue
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            patch[key] = subset_patch(value, current)
        else:
            patch[key] = value  # scalars and lists are replaced whole (merge-patch semantics)
    return patch


def child_patch(desired: Manifest, observed: Manifest) -> dict[str, Any] | None:
    """The merge patch that brings an existing child to the desired state, or None if it is there."""
    wanted: dict[str, Any] = {key: value for key, value in desired.items() if key not in NOT_PATCHED}
    meta = desired.get("metadata") or {}
    owned_meta = {key: meta[key] for key in OWNED_METADATA if key in meta}
    if owned_meta:
        wanted["metadata"] = owned_meta
    patch = subset_patch(wanted, observed)
    return patch or None


def status_patch(observed: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """RFC 7386 merge patch from observed to desired status (we own the whole status), or None."""
    observed = observed or {}
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        current = observed.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            nested = status_patch(current, value)
            if nested:
                patch[key] = nested
        elif not (value == current or numbers_equal(value, current)):
            patch[key] = value
    for key in observed:
        if key not in desired:
            patch[key] = None
    return patch or None


def object_key(obj: Manifest) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", "default"), meta["name"])


def ref_key(ref: ObjectRef) -> tuple[str, str, str, str]:
    return (ref.api_version, ref.kind, ref.namespace, ref.name)


@dataclass
class Actions:
    create: list[Manifest] = field(default_factory=list)
    patch: list[tuple[Manifest, dict[str, Any]]] = field(default_factory=list)  # (observed, patch)
    delete: list[ObjectRef] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.create or self.patch or self.delete)


def diff_children(
    desired: Iterable[Manifest], delete: Iterable[ObjectRef], observed: Iterable[Manifest]
) -> Actions:
    """What to create, patch and delete so that observed becomes desired."""
    existing = {object_key(obj): obj for obj in observed}
    actions = Actions()
    for obj in desired:
        current = existing.get(object_key(obj))
        if current is None or current.get("metadata", {}).get("deletionTimestamp"):
            if current is None:
                actions.create.append(obj)
            continue  # being deleted: create it again once it is gone
        patch = child_patch(obj, current)
        if patch is not None:
            actions.patch.append((current, patch))
    actions.delete = [ref for ref in delete if ref_key(ref) in existing]
    return actions
