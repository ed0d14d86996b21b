"""The Endpoint's phase, conditions and events, from what the plan decided and what is observed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..api import Condition, EndpointStatus, Phase, RollbackRecord
from .conditions import condition, parsed_conditions
from .fleet import Fleet
from .podfailures import PodFailure
from .rollout import Decision
from .types import Event


@dataclass(frozen=True)
class Facts:
    serving: Fleet
    serving_ready: bool  # every variant of the serving config has its ready replicas
    route_ok: bool  # the observed route carries this plan's split (or no route is needed)
    route_was_in_place: bool  # the observed route carried the previous status's split
    routing_error: str | None
    deferred: bool  # children that are going wait for the route to move off them
    failures: tuple[PodFailure, ...]
    problems: tuple[str, ...]  # everything a person should know, failureReason and Degraded
    missing: tuple[str, ...] = ()  # planned children of the serving fleet and route that do not exist
    route_waiting: str | None = None  # why the Gateway has not accepted the route yet
    apply_failed: bool = False  # the API server refused to create or change a planned child
    # Async: why the queue does not work (AsyncQueueNotConfigured, AsyncQueueUnreachable), if so.
    queue_reason: str | None = None

    @property
    def in_service(self) -> bool:
        """Every variant has its ready replicas, every child exists, the route carries the weights."""
        return self.serving_ready and self.route_ok and not self.missing


def rollback_problem(rollback: RollbackRecord) -> str:
    return f"rolled back: {rollback.reason} (EndpointConfig {rollback.endpoint_config_name})"


def problems_of(
    decision: Decision,
    fleets: Sequence[Fleet],
    failures: Sequence[PodFailure],
    routing_error: str | None,
    extra: Sequence[str] = (),
) -> tuple[str, ...]:
    found: list[str] = []
    if decision.last_rollback is not None:
        found.append(rollback_problem(decision.last_rollback))
    for fleet in fleets:
        found += [*fleet.errors, *fleet.warnings]
    found += [f.message for f in failures]
    if routing_error:
        found.append(routing_error)
    found += extra
    return tuple(found)


def phase_of(previous: EndpointStatus, decision: Decision, facts: Facts) -> Phase:
    ready = facts.in_service
    rolling_back = decision.last_rollback is not None and (
        previous.rollout is not None or previous.phase == "RollingBack"
    )
    if decision.rollout is not None:
        return "Updating"
    if ready and not (rolling_back and facts.deferred):
        return "InService"
    if rolling_back:
        return "RollingBack"  # traffic is moving back; the new fleet goes once it has none
    if previous.phase in (None, "Creating", "Failed"):
        return "Failed" if facts.serving.invalid else "Creating"
    return "Updating"  # it served before: scaling, replicas lost, or the route is being changed


def _ready(facts: Facts) -> tuple[bool, str, str]:
    serving = facts.serving
    # Answering requests: the route in place now, or the one before this plan changed it.
    route = facts.route_ok or facts.route_was_in_place
    if serving.missing:
        return False, "EndpointConfigNotFound", f"EndpointConfig {serving.config} not found"
    if serving.errors:
        return False, "InvalidVariant" if serving.invalid else "ModelNotFound", "; ".join(serving.errors)
    if facts.queue_reason == "AsyncQueueNotConfigured":
        return False, facts.queue_reason, "asyncInferenceConfig needs a queue: see Degraded"
    if not facts.serving_ready:
        return False, "VariantsNotReady", f"waiting for the replicas of EndpointConfig {serving.config}"
    if facts.routing_error:
        return False, "RouteError", facts.routing_error
    if facts.missing:
        return False, "ChildrenMissing", f"waiting for {', '.join(facts.missing)} to exist"
    if not route:
        return False, "RouteNotReady", facts.route_waiting or "waiting for the route to carry the weights"
    return True, "Serving", f"every variant of EndpointConfig {serving.config} is ready"


def _progressing(phase: Phase, decision: Decision, facts: Facts) -> tuple[bool, str, str]:
    rollout = decision.rollout
    if rollout is not None:
        message = (
            f"rolling out EndpointConfig {rollout.target_endpoint_config_name}: {rollout.state}, "
            f"step {rollout.step}, {rollout.traffic_shifted_percent}% of traffic shifted"
        )
        if decision.waiting:
            message += f"; {decision.waiting}"
        return True, "RollingOut", message
    if phase == "RollingBack":
        return True, "RollingBack", f"moving all traffic back to EndpointConfig {decision.serving}"
    if phase == "Creating":
        return True, "Creating", f"creating EndpointConfig {decision.serving}"
    if phase == "Updating" and not facts.serving_ready:
        return True, "Scaling", f"waiting for the replicas of EndpointConfig {decision.serving}"
    if phase == "Updating":
        return True, "Routing", "waiting for the route to carry the weights"
    if phase == "Failed":
        return False, "Failed", "the endpoint cannot be created as specified"
    return False, "Complete", f"EndpointConfig {decision.serving} serves"


def _degraded(decision: Decision, facts: Facts) -> tuple[bool, str, str]:
    if not facts.problems:
        return False, "AsExpected", ""
    if decision.last_rollback is not None:
        reason = "RolledBack"
    elif facts.failures:
        reason = "PodFailures"
    elif facts.apply_failed:
        reason = "ApplyFailed"
    elif facts.queue_reason:
        reason = facts.queue_reason
    else:
        reason = "ConfigurationError"
    return True, reason, "; ".join(facts.problems)


def conditions_of(
    previous: EndpointStatus,
    decision: Decision,
    facts: Facts,
    phase: Phase,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    found = (
        ("Ready", _ready(facts)),
        ("Progressing", _progressing(phase, decision, facts)),
        ("Degraded", _degraded(decision, facts)),
    )
    return [
        condition(previous.conditions, type_, value, reason, message, now, generation)
        for type_, (value, reason, message) in found
    ]


def status_events(previous: EndpointStatus, status: EndpointStatus) -> list[Event]:
    """Told once: reaching InService, and each new failure reason."""
    events: list[Event] = []
    if status.phase == "InService" and previous.phase != "InService":
        events.append(Event("Normal", "InService", f"serving EndpointConfig {status.endpoint_config_name}"))
    if status.failure_reason and status.failure_reason != previous.failure_reason:
        events.append(Event("Warning", "Degraded", status.failure_reason))
    return events


def invalid_endpoint_status(raw: Mapping[str, Any], message: str, now: datetime) -> dict[str, Any]:
    """The status of an Endpoint whose spec does not parse (admission refuses it on a cluster with
    the CRD; without, say why): Failed, Ready False, Degraded True, reason InvalidSpec. What it
    served before stays in the status, as its children stay in the cluster."""
    stored = dict(raw.get("status") or {})
    generation = (raw.get("metadata") or {}).get("generation")
    previous = parsed_conditions(stored.get("conditions"))
    found = (
        ("Ready", False, "the spec is invalid: " + message),
        ("Progressing", False, "nothing is rolled out until the spec is fixed"),
        ("Degraded", True, message),
    )
    conditions = [
        condition(previous, type_, value, "InvalidSpec", text, now, generation)
        for type_, value, text in found
    ]
    return {
        **stored,
        "observedGeneration": generation,
        "phase": "Failed",
        "failureReason": message,
        "conditions": [c.to_wire() for c in conditions],
    }
