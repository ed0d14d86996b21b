"""Blue/green rollouts as a pure state machine over `status.rollout`.

A change of spec.endpointConfigName creates the new fleet beside the serving one; once
every new variant is ready, traffic moves by the policy (AllAtOnce, Canary, Linear) with a
bake after each step, then the old fleet is kept for terminationWaitSeconds and goes.
A breach of autoRollback during a bake, a failing new fleet, or a new fleet not ready in
time sends all traffic back to the serving fleet. Every decision is made from the status
and what is observed now, so an operator restart resumes at the same step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from ..api import DeploymentConfig, EndpointStatus, RollbackRecord, RolloutStatus, TrafficRouting
from .clock import seconds_since, stamp
from .types import Event, FleetMetrics

# Fewest requests to the new fleet before its 5xx share can trigger a rollback.
MIN_REQUESTS_FOR_ERROR_RATE = 10
METRICS_POLL_SECONDS = 10.0  # how often a bake re-reads the new fleet's metrics
WAIT_POLL_SECONDS = 5.0  # how often to look again while waiting for something observed


@dataclass(frozen=True)
class FleetState:
    ready: bool  # every variant can be built and has its ready replicas
    failures: tuple[str, ...] = ()  # pod failures that will not heal by waiting


@dataclass(frozen=True)
class RolloutInput:
    spec_config: str
    status: EndpointStatus
    policy: DeploymentConfig
    now: datetime
    # config name, retained replicas -> state of that config's fleet
    fleet_state: Callable[[str, Mapping[str, int]], FleetState]
    # config name -> replicas its observed Deployments have, per variant name
    observed_replicas: Callable[[str], dict[str, int]]
    metrics: Mapping[str, FleetMetrics]
    route_in_place: bool  # the observed route carries the traffic split of the status as it is
    # config name -> percent of traffic the observed route gives that config's fleet
    observed_share: Callable[[str], int]
    # (serving config, new config) -> per MultiModel variant of the new config, the URL its pods
    # warm their models from (recorded when a rollout starts: planner/multimodel.py)
    warm_from: Callable[[str, str], dict[str, str]] = lambda serving, target: {}


@dataclass(frozen=True)
class Decision:
    serving: str
    rollout: RolloutStatus | None = None
    last_rollback: RollbackRecord | None = None
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    waiting: str | None = None  # why the rollout does not move now, for people

    @property
    def target(self) -> str | None:
        return self.rollout.target_endpoint_config_name if self.rollout else None

    @property
    def shifted(self) -> int:
        return self.rollout.traffic_shifted_percent if self.rollout else 0


@dataclass
class _Run:
    """Accumulates events while the machine takes its steps."""

    inp: RolloutInput
    events: list[Event] = field(default_factory=list)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))

    def done(
        self,
        serving: str,
        last: RollbackRecord | None,
        rollout: RolloutStatus | None = None,
        requeue_after: float | None = None,
        waiting: str | None = None,
    ) -> Decision:
        return Decision(serving, rollout, last, tuple(self.events), requeue_after, waiting)


def first_step(routing: TrafficRouting) -> int:
    if routing.type == "Canary":
        return routing.canary_size.value
    if routing.type == "Linear":
        return routing.linear_step_size.value
    return 100


def next_step(routing: TrafficRouting, shifted: int) -> int:
    if routing.type == "Linear":
        return min(100, shifted + routing.linear_step_size.value)
    return 100


def metrics_breach(policy: DeploymentConfig, metrics: FleetMetrics | None) -> str | None:
    rules = policy.auto_rollback
    if rules is None or metrics is None:
        return None
    if (
        metrics.requests >= MIN_REQUESTS_FOR_ERROR_RATE
        and metrics.error_rate_percent > rules.max_error_rate_percent
    ):
        return f"{metrics.errors_are} {metrics.error_rate_percent:.1f}% > {rules.max_error_rate_percent:g}%"
    p99 = metrics.p99_latency_ms
    if rules.max_p99_latency_ms > 0 and p99 is not None and p99 > rules.max_p99_latency_ms:
        return f"p99 {p99:.0f}ms > {rules.max_p99_latency_ms:g}ms"
    return None


def decide(inp: RolloutInput) -> Decision:
    run = _Run(inp)
    status, spec_config = inp.status, inp.spec_config
    serving = status.endpoint_config_name
    rollout = status.rollout
    last = status.last_rollback
    if last is not None and last.endpoint_config_name != spec_config:
        last = None  # spec moved on: the rolled-back config may be tried again later

    # Nothing served yet: there is no traffic to protect, serve the spec's config at once.
    if serving is None or (rollout is None and status.phase in (None, "Creating", "Failed")):
        return run.done(spec_config, last)

    if rollout is not None and rollout.target_endpoint_config_name != spec_config:
        pending = rollout.target_endpoint_config_name
        if rollout.state == "Terminating" and spec_config != serving:
            # All traffic is on the pending config already: it serves now, the next rollout starts from it.
            run.event(
                "RolloutCompleted",
                f"EndpointConfig {pending} serves; EndpointConfig {spec_config} supersedes it",
            )
            serving, rollout = pending, None
        else:
            if rollout.traffic_shifted_percent > 0 and not inp.fleet_state(serving, {}).ready:
                return run.done(
                    serving,
                    last,
                    rollout=rollout,
                    requeue_after=WAIT_POLL_SECONDS,
                    waiting=f"waiting for EndpointConfig {serving} to be ready before moving traffic back",
                )
            if spec_config == serving:
                run.event("RolloutAborted", f"EndpointConfig {pending} abandoned: spec is back on {serving}")
            else:
                run.event("RolloutSuperseded", f"EndpointConfig {pending} superseded by {spec_config}")
            rollout = None

    if rollout is None:
        if spec_config == serving or last is not None:
            return run.done(serving, last)
        now_text = stamp(inp.now)
        rollout = RolloutStatus(
            target_endpoint_config_name=spec_config,
            step=0,
            started_at=now_text,
            step_started_at=now_text,
            traffic_shifted_percent=0,
            state="Provisioning",
            retained_instance_counts=inp.observed_replicas(serving),
            warm_from=inp.warm_from(serving, spec_config),
        )
        run.event("RolloutStarted", f"rolling out EndpointConfig {spec_config} beside {serving}")
    return _advance(run, serving, rollout, last)


def _advance(run: _Run, serving: str, rollout: RolloutStatus, last: RollbackRecord | None) -> Decision:
    inp = run.inp
    target = rollout.target_endpoint_config_name
    blue_green = inp.policy.blue_green
    routing = blue_green.traffic_routing
    fleet = inp.fleet_state(target, rollout.retained_instance_counts)
    elapsed = seconds_since(rollout.started_at, inp.now)
    timeout = blue_green.maximum_execution_timeout_seconds
    now_text = stamp(inp.now)

    def rollback(reason: str) -> Decision:
        run.event("RolledBack", f"rolled back EndpointConfig {target}: {reason}", warning=True)
        record = RollbackRecord(endpoint_config_name=target, reason=reason, time=now_text)
        return run.done(serving, record)

    def going(state: RolloutStatus, requeue: float | None, waiting: str | None = None) -> Decision:
        return run.done(serving, last, rollout=state, requeue_after=requeue, waiting=waiting)

    if fleet.failures:
        return rollback("; ".join(fleet.failures))

    carried = inp.observed_share(target)
    if rollout.state != "Terminating" and fleet.ready and carried > rollout.traffic_shifted_percent:
        # The route carries more than the status says (a status write was lost): never move back.
        run.event(
            "RolloutResumed", f"the route carries {carried}% on EndpointConfig {target}: resuming there"
        )
        rollout = rollout.model_copy(
            update={
                "step": rollout.step + 1,
                "traffic_shifted_percent": carried,
                "state": "Baking",
                "step_started_at": now_text,
            }
        )
        return going(rollout, _bake_requeue(routing.wait_interval_seconds, 0.0))

    if rollout.state == "Provisioning":
        if not fleet.ready:
            if elapsed >= timeout:
                return rollback(f"new fleet not ready within {timeout}s")
            return going(
                rollout, min(timeout - elapsed, WAIT_POLL_SECONDS * 6), f"waiting for {target} to be ready"
            )
        shift = first_step(routing)
        run.event("TrafficShifted", f"{shift}% of traffic on EndpointConfig {target}")
        state = rollout.model_copy(
            update=dict(step=1, traffic_shifted_percent=shift, state="Baking", step_started_at=now_text)
        )
        return going(state, _bake_requeue(routing.wait_interval_seconds, 0.0))

    if rollout.state == "Baking":
        breach = metrics_breach(inp.policy, inp.metrics.get(target))
        if breach is not None:
            return rollback(breach)
        if not fleet.ready:
            if elapsed >= timeout:
                return rollback(f"new fleet not ready within {timeout}s")
            return going(rollout, WAIT_POLL_SECONDS, f"waiting for {target} to be ready again")
        baked = seconds_since(rollout.step_started_at, inp.now)
        if baked < routing.wait_interval_seconds:
            return going(rollout, _bake_requeue(routing.wait_interval_seconds, baked))
        if not inp.route_in_place:
            return going(rollout, WAIT_POLL_SECONDS, "waiting for the route to carry the traffic split")
        if rollout.traffic_shifted_percent < 100:
            shift = next_step(routing, rollout.traffic_shifted_percent)
            run.event("TrafficShifted", f"{shift}% of traffic on EndpointConfig {target}")
            state = rollout.model_copy(
                update=dict(step=rollout.step + 1, traffic_shifted_percent=shift, step_started_at=now_text)
            )
            return going(state, _bake_requeue(routing.wait_interval_seconds, 0.0))
        run.event(
            "OldFleetTerminating",
            f"all traffic on {target}; {serving} goes in {blue_green.termination_wait_seconds}s",
        )
        state = rollout.model_copy(update=dict(state="Terminating", step_started_at=now_text))
        return going(state, float(blue_green.termination_wait_seconds))

    waited = seconds_since(rollout.step_started_at, inp.now)
    if waited < blue_green.termination_wait_seconds:
        return going(rollout, blue_green.termination_wait_seconds - waited)
    if not inp.route_in_place:
        return going(rollout, WAIT_POLL_SECONDS, "waiting for the route to carry the traffic split")
    run.event("RolloutCompleted", f"EndpointConfig {target} serves; {serving} removed")
    return run.done(target, last)


def _bake_requeue(wait: float, baked: float) -> float:
    """Until the bake ends, but often enough to read the new fleet's metrics."""
    return max(0.0, min(wait - baked, METRICS_POLL_SECONDS))
