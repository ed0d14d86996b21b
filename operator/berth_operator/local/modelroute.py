"""Model-affinity routing for a MultiModel variant in local mode. Pure: no I/O, no clock.

On a cluster the replicas forward a model's requests among themselves; in local mode the
router does it (the replicas run with no peers): the model a request names, by its
X-Berth-Target-Model (or X-Amzn-SageMaker-Target-Model) header or its v2 path, goes to the
replica that rendezvous hashing picks among the variant's ready replicas, so each model is
loaded on one replica and stays there while replicas come and go. A replica is named by its
"host:port", which it keeps across restarts, so the hash does not move with a restart.

A hot model spills to its second choice (rendezvous.choose) when the router already has
`saturation` requests for it in flight at its owner: see ModelPool.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from berth_serving.multimodel.names import model_key, name_problem, target_model
from berth_serving.multimodel.rendezvous import SPILL_CHOICES, choose, rank

HEADER_NAMES = "X-Berth-Target-Model (or X-Amzn-SageMaker-Target-Model)"
_INVOCATIONS = b"/invocations"
# Paths that name their model: Triton's model routes and its repository extension.
_MODEL_PATHS = (b"/v2/models/", b"/v2/repository/models/")
# What may follow the name on those paths (the longest first, as they are stripped in turn).
_MODEL_SUFFIXES = ("/infer", "/ready", "/config", "/stats", "/load", "/unload")
_VERSIONS = "/versions/"


class Replica(Protocol):
    @property
    def identity(self) -> str: ...  # "host:port"

    @property
    def models_inflight(self) -> dict[str, int]: ...  # model key -> the router's requests in flight


R = TypeVar("R", bound=Replica)


@dataclass(frozen=True)
class Target:
    """What a request to a MultiModel variant names: a model's routing key, or a reason it
    cannot be routed (`problem`, a 400), or neither (a request for no model: any replica)."""

    key: str | None = None
    problem: str | None = None


def request_target(target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> Target:
    """The model of a request as forwarded (`target` is the rewritten path and query)."""
    path = target.split(b"?", 1)[0]
    for prefix in _MODEL_PATHS:
        if path.startswith(prefix):
            name = _path_name(path[len(prefix) :])
            if name is None:
                return Target()
            problem = name_problem(name)
            if problem is not None:
                return Target(problem=f"model name {name!r} in the path: {problem}")
            return Target(key=model_key(name))
    name = target_model(headers)
    if name is not None:
        problem = name_problem(name)
        if problem is not None:
            return Target(problem=f"{HEADER_NAMES}: {problem}")
        return Target(key=model_key(name))
    if path == _INVOCATIONS:
        return Target(
            problem=f"this endpoint serves many models: name one in {HEADER_NAMES}, "
            "e.g. X-Berth-Target-Model: customer-17.tar.gz, or call /v2/models/NAME/infer"
        )
    return Target()


def _path_name(rest: bytes) -> str | None:
    """`customer-17/infer` -> `customer-17`; `eu%2Ffraud/versions/2/infer` -> `eu/fraud`."""
    text = urllib.parse.unquote(rest.decode("latin-1"), errors="replace")
    for suffix in _MODEL_SUFFIXES:
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    versions = text.rfind(_VERSIONS)
    if versions > 0 and "/" not in text[versions + len(_VERSIONS) :]:
        text = text[:versions]
    text = text.rstrip("/")
    return text or None


class ModelPool(Generic[R]):
    """The ready replicas of one MultiModel variant: a model's requests go to its owner.

    `saturation` is how many requests for one model the router may have in flight at one
    replica before that replica counts as saturated for it (and the model spills to its second
    choice). Two of the variant's full batches: the replica's batcher answers up to a batch at
    once, so at two batches in flight one is running and one waiting, and the next request
    would wait two batch times; from there a second replica (which loads the model once, on
    the spill) pays off. The same limit as the replicas' own forwarding on a cluster
    (berth_serving.app.peers_of), so a hot model spills alike in both modes.
    """

    __slots__ = ("_by_id", "_ids", "_next", "saturation", "upstreams")

    def __init__(self, upstreams: Sequence[R], saturation: int) -> None:
        self.upstreams = list(upstreams)
        self.saturation = max(1, saturation)
        self._by_id = {u.identity: u for u in self.upstreams}
        self._ids = tuple(self._by_id)
        self._next = 0

    def take(self, avoid: R | None = None) -> R | None:
        """A request for no model in particular (GET /models, /ping): the replicas in turn."""
        count = len(self.upstreams)
        for _ in range(count):
            upstream = self.upstreams[self._next % count]
            self._next += 1
            if upstream is not avoid or count == 1:
                return upstream
        return None

    def saturated(self, key: str, replica_id: str) -> bool:
        return self._by_id[replica_id].models_inflight.get(key, 0) >= self.saturation

    def choose(self, key: str, avoid: Iterable[R] = ()) -> R | None:
        """The model's owner among the ready replicas (less `avoid`: those that failed), else its
        second choice when the owner is saturated."""
        left = {u.identity for u in avoid}
        ids = [i for i in self._ids if i not in left] if left else self._ids
        chosen = choose(key, ids, lambda replica: self.saturated(key, replica))
        return None if chosen is None else self._by_id[chosen]

    def other_choice(self, key: str, tried: R) -> R | None:
        """The other of the model's two choices: where a request goes once `tried` refused it
        (503, 429). None when the variant has one replica."""
        for replica_id in rank(key, self._ids)[:SPILL_CHOICES]:
            if replica_id != tried.identity:
                return self._by_id[replica_id]
        return None
