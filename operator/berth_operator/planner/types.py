"""The planner's inputs and outputs. Plain data: the planner is a pure function of these.

    plan_endpoint(PlanInput) -> Plan

The operator (kopf), `berth render` and local mode (`berth up`) all build a PlanInput
from what they see, call the planner, and carry out the Plan in their own way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ..api import Endpoint, EndpointConfig, EndpointStatus, Model
from ..settings import Settings

Manifest = dict[str, Any]


@dataclass(frozen=True, order=True)
class ObjectRef:
    api_version: str
    kind: str
    name: str
    namespace: str

    @classmethod
    def of(cls, obj: Manifest) -> ObjectRef:
        meta = obj["metadata"]
        return cls(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace", "default"))


@dataclass(frozen=True)
class FleetMetrics:
    """What the new fleet's own /metrics said, summed over its pods (cumulative since start)."""

    requests: float = 0.0
    errors_5xx: float = 0.0
    p99_latency_ms: float | None = None
    # What errors_5xx counts, in a rollback's reason: 5xx answers, or failed async inferences.
    errors_are: str = "5xx"
    # Data capture: events the fleet dropped (berth_capture_dropped_total, every reason).
    capture_dropped: float = 0.0

    @property
    def error_rate_percent(self) -> float:
        return 100.0 * self.errors_5xx / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class QueueState:
    """One async variant's Redis stream as the operator read it (berth_serving.asyncinf.queue)."""

    size: int = 0  # messages waiting or in flight (XLEN)
    pending: int = 0  # in flight: delivered to a worker, not yet answered
    oldest_age_seconds: float = 0.0
    counts: Mapping[str, int] = field(default_factory=dict)  # succeeded, failed, expired, redelivered


@dataclass(frozen=True)
class Observed:
    """What exists now. Children are the objects labelled berth.dev/endpoint=NAME."""

    now: datetime
    children: list[Manifest] = field(default_factory=list)
    pods: list[Manifest] = field(default_factory=list)
    # Per EndpointConfig name: metrics of that config's fleet (filled during rollouts).
    metrics: dict[str, FleetMetrics] = field(default_factory=dict)
    # Kinds the cluster does not serve (no CRD installed), e.g. {"HTTPRoute"}.
    unavailable_kinds: frozenset[str] = frozenset()
    # (kind, name) of a planned child -> why the API server refused to create or change it.
    write_failures: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # Pod name -> Warning events about it (reason, message), read for pods that are stuck starting.
    pod_events: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    # Stream key -> what the queue holds, for the async variants the plan asked about
    # (planner.asyncinf.streams_to_observe); a stream not read counts as empty.
    queues: Mapping[str, QueueState] = field(default_factory=dict)
    queue_error: str | None = None  # why the queues could not be read (Redis unreachable)


@dataclass(frozen=True)
class PlanInput:
    endpoint: Endpoint
    # EndpointConfigs and Models of the endpoint's namespace that the planner may need
    # (the serving config, a pending one); a missing name is reported in the status.
    configs: dict[str, EndpointConfig]
    models: dict[str, Model]
    settings: Settings
    observed: Observed


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    objects: list[Manifest]  # every child that should exist, complete (create or patch to this)
    delete: list[ObjectRef]  # observed children that must go
    status: EndpointStatus  # the Endpoint status to write
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None  # seconds until a timed step is due (bake, termination wait)
    # Objects the Endpoint needs but shares with others of its namespace (the serving pods' review
    # identity): applied before the children, no owner, never deleted by a plan.
    shared: list[Manifest] = field(default_factory=list)
