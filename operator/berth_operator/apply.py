"""Which planned children need a write, and the status patch. Pure.

Children are written by server-side apply, which makes the fields Berth sets what the plan says
and removes the ones it stopped setting. A write is sent only when it would change something:
the object carries the digest of the last applied plan in an annotation, so a plan that changed
(a field added, changed or dropped) is applied; and a field Berth sets that someone else changed
since is applied back (drift). Quantities are planned in the API server's spelling
(quantity.py), so a read compares equal to the plan and an idle resync writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .planner.observe import is_subset, numbers_equal
from .planner.types import Manifest

DIGEST_ANNOTATION = "berth.dev/applied-digest"
# Metadata fields the planner owns on its children; the rest (uid, resourceVersion, managed
# fields, other controllers' annotations) belongs to the API server and others.
OWNED_METADATA = ("labels", "annotations", "ownerReferences")


def digest(desired: Manifest) -> str:
    """A short digest of everything the plan says about a child."""
    material = json.dumps(desired, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(material).hexdigest()[:16]


def applied(desired: Manifest) -> Manifest:
    """The object to apply: the plan with its digest stamped in an annotation."""
    meta = dict(desired["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), DIGEST_ANNOTATION: digest(desired)}
    return {**desired, "metadata": meta}


def owned_view(desired: Manifest) -> dict[str, Any]:
    """The fields of a planned child that the API server keeps as written (not apiVersion, kind,
    or metadata it manages itself)."""
    view: dict[str, Any] = {
        k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "metadata", "status")
    }
    meta = desired.get("metadata") or {}
    view["metadata"] = {key: meta[key] for key in OWNED_METADATA if key in meta}
    return view


def needs_apply(desired: Manifest, observed: Manifest | None) -> bool:
    """True unless the observed child was applied from this very plan and nobody changed a field of it."""
    if observed is None:
        return True
    annotations = (observed.get("metadata") or {}).get("annotations") or {}
    if annotations.get(DIGEST_ANNOTATION) != digest(desired):
        return True
    return not is_subset(owned_view(desired), observed)


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
