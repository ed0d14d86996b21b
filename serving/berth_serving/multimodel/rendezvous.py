"""Rendezvous (highest random weight) hashing: which replica serves a model.

Every router and replica that sees the same set of ready replicas picks the same owner for a
model with no coordination, and a replica that leaves moves only the models it owned (each
to its second choice); one that joins takes only the models it now wins. Shared by local
mode's router and the replicas' own forwarding on a cluster, so both agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

# A hot model spills to its second choice when its first is saturated, never further: two
# replicas hold its weights at most.
SPILL_CHOICES = 2
# A replica is saturated for a model at this many of its full batches in flight there: one
# running and one waiting; the next request would wait two batch times, so it spills.
SATURATED_BATCHES = 2


def _score(model: str, replica: str) -> int:
    digest = hashlib.blake2b(f"{replica}\x00{model}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank(model: str, replicas: Iterable[str]) -> list[str]:
    """The replicas in the order this model prefers them (its owner first)."""
    return sorted(set(replicas), key=lambda replica: (_score(model, replica), replica), reverse=True)


def choose(
    model: str, replicas: Sequence[str], saturated: Callable[[str], bool] = lambda _: False
) -> str | None:
    """The replica to send a model's request to: its owner, else (owner saturated) the second
    choice when that one is not saturated too. None when there is no replica."""
    ranked = rank(model, replicas)
    if not ranked:
        return None
    for replica in ranked[:SPILL_CHOICES]:
        if not saturated(replica):
            return replica
    return ranked[0]
