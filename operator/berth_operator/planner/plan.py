"""plan_endpoint: the whole planner. Specs + observed state -> desired children, deletes, status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..api import Condition, EndpointStatus, VariantStatus
from . import asyncinf, capture, labels, multimodel, serverless
from .access import network_policy, serving_access, serving_identity
from .autoscaling import KEDA_KIND, autoscaler_problems
from .clock import stamp
from .conditions import condition
from .fleet import Fleet, VariantPlan, resolve_fleet
from .names import async_frontdoor_name, label_value
from .observe import (
    Readiness,
    RouteAcceptance,
    deployment_readiness,
    find,
    matches,
    observed_split,
    route_acceptance,
)
from .podfailures import PodFailure, deployment_failures, pod_failures
from .rollout import Decision, FleetState, RolloutInput, decide
from .routing import Backend, Routing, plan_routing
from .status import Facts, conditions_of, phase_of, problems_of, status_events
from .types import Event, FleetMetrics, Manifest, ObjectRef, Plan, PlanInput
from .workload import variant_objects

# The NetworkPolicy goes first and is deleted last: no serving pod is ever reachable without it.
ENDPOINT_KINDS = ("NetworkPolicy",)
# The front door's ConfigMap goes before its Deployment, which mounts it.
FLEET_KINDS = (
    "ConfigMap",
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    KEDA_KIND,
    serverless.HTTP_SCALED_OBJECT_KIND,
    "PodDisruptionBudget",
)
ROUTE_KINDS = ("HTTPRoute", "Ingress")
KIND_ORDER = {kind: i for i, kind in enumerate(ENDPOINT_KINDS + FLEET_KINDS + ROUTE_KINDS)}
DEFERRED_DELETE_SECONDS = 2.0  # look again soon: the route is moving off a fleet that is going
DRAIN_POLL_SECONDS = 10.0  # how often to look at the queues of fleets that drain
QUEUE_POLL_SECONDS = 15.0  # how often an async endpoint's backlog in status is refreshed
BACKLOG_CONDITION = "HasBacklogWithoutCapacity"


@dataclass(frozen=True)
class _Live:
    """A fleet in the plan and its share of the traffic in percent."""

    fleet: Fleet
    share: int


class _Planner:
    def __init__(self, inp: PlanInput) -> None:
        self.inp = inp
        self.endpoint = inp.endpoint
        self.previous = inp.endpoint.status or EndpointStatus()
        self.children = [c for c in inp.observed.children if self._is_ours(c)]
        self.endpoint_label = labels.endpoint_label(self.endpoint.name)
        self.route_was_in_place = False  # the observed route carried the split of the previous status
        self._fleets: dict[tuple[str, tuple[tuple[str, int], ...], bool], Fleet] = {}

    def _is_ours(self, child: Manifest) -> bool:
        meta = child.get("metadata", {})
        return bool(
            meta.get("labels", {}).get(labels.ENDPOINT) == labels.endpoint_label(self.inp.endpoint.name)
            and meta.get("namespace", self.inp.endpoint.namespace) == self.inp.endpoint.namespace
        )

    # ---------------------------------------------------------------- fleets

    def fleet(self, config: str, retained: Mapping[str, int] | None = None, proving: bool = False) -> Fleet:
        """proving: the fleet has not served yet; its serverless variants keep one replica until it
        has (a fleet at zero would be "ready" without ever loading its model)."""
        key = (config, tuple(sorted((retained or {}).items())), proving)
        if key not in self._fleets:
            inp = self.inp
            fleet = resolve_fleet(
                self.endpoint.name,
                config,
                inp.configs,
                inp.models,
                inp.settings,
                self.endpoint.spec.variant_overrides,
                retained,
            )
            if proving:
                variants = tuple(
                    replace(v, replicas=max(v.replicas, 1)) if v.serverless is not None else v
                    for v in fleet.variants
                )
                fleet = replace(fleet, variants=variants)
            self._fleets[key] = fleet
        return self._fleets[key]

    def proving(self, config: str) -> bool:
        """config has not served this Endpoint yet (a rollout's target, or a first fleet)."""
        previous = self.previous
        return config != previous.endpoint_config_name or previous.phase in (None, "Creating", "Failed")

    def readiness(self, variant: VariantPlan) -> Readiness:
        return deployment_readiness(self.children, variant)

    def failures(self, fleets: list[Fleet]) -> list[PodFailure]:
        models = {
            (label_value(v.config), label_value(v.name)): v.model.name
            for fleet in fleets
            for v in fleet.variants
        }
        deployments = [
            (label_value(v.config), label_value(v.name), observed)
            for fleet in fleets
            for v in fleet.variants
            if (observed := find(self.children, "Deployment", v.object_name)) is not None
        ]
        seen = self.inp.observed
        found = pod_failures(seen.pods, self.endpoint_label, models, seen.now, seen.pod_events)
        return sorted(set(found + deployment_failures(deployments)))

    def fleet_state(self, config: str, retained: Mapping[str, int]) -> FleetState:
        fleet = self.fleet(config, retained, self.proving(config))
        ready = fleet.complete and all(self.readiness(v).is_ready for v in fleet.variants)
        fatal = tuple(f.message for f in self.failures([fleet]) if f.fatal)
        return FleetState(ready, fatal)

    def observed_share(self, config: str) -> int:
        """Percent of the traffic the observed route sends to config's fleet (rounded down)."""
        split = observed_split(self.children)
        total = sum(split.values())
        if total <= 0:
            return 0
        services = {v.object_name for v in self.fleet(config).production}
        return 100 * sum(w for s, w in split.items() if s in services) // total

    def observed_replicas(self, config: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for variant in self.fleet(config).variants:
            observed = find(self.children, "Deployment", variant.object_name)
            replicas = (observed or {}).get("spec", {}).get("replicas")
            if isinstance(replicas, int) and not variant.shadow:
                counts[variant.name] = replicas
        return dict(sorted(counts.items()))

    # ---------------------------------------------------------------- traffic

    def live(
        self, serving: str | None, target: str | None, shifted: int, retained: Mapping[str, int]
    ) -> list[_Live]:
        fleets = []
        if serving is not None:
            fleets.append(
                _Live(self.fleet(serving, proving=self.proving(serving)), 100 - shifted if target else 100)
            )
        if target is not None and target != serving:
            fleets.append(_Live(self.fleet(target, retained, proving=True), shifted))
        return fleets

    def routing(self, live: list[_Live]) -> Routing:
        backends: list[Backend] = []
        for item in live:
            production = item.fleet.production
            total = sum(v.weight for v in production)
            for v in production:
                fraction = item.share / 100 * v.weight / total if total > 0 else 0.0
                backends.append(Backend(v.name, v.object_name, fraction, item.share, model=v.model.name))
            backends += [
                Backend(v.name, v.object_name, 0.0, item.share, shadow=True) for v in item.fleet.shadows
            ]
        return plan_routing(
            self.endpoint,
            backends,
            self.inp.settings,
            self.inp.observed.unavailable_kinds,
            async_service=async_frontdoor_name(self.endpoint.name) if self.has_frontdoor(live) else None,
            intercepted=self.intercepted(live),
        )

    # ---------------------------------------------------------------- serverless

    def intercepted(self, live: list[_Live]) -> frozenset[str]:
        """Services of serverless variants the route reaches through the KEDA HTTP interceptor."""
        if not serverless.scales_to_zero(self.inp.settings, self.inp.observed.unavailable_kinds):
            return frozenset()
        return frozenset(
            v.object_name for item in live for v in item.fleet.production if v.serverless is not None
        )

    # ---------------------------------------------------------------- async

    def has_frontdoor(self, live: list[_Live]) -> bool:
        """A live fleet is async and the settings name its queue."""
        return any(item.fleet.is_async for item in live) and asyncinf.redis_configured(self.inp.settings)

    def metrics(self) -> dict[str, FleetMetrics]:
        """The new fleet's health: its pods' metrics, or for an async fleet its queue's outcomes."""
        found = dict(self.inp.observed.metrics)
        rollout = self.previous.rollout
        if rollout is not None:
            target = rollout.target_endpoint_config_name
            fleet = self.fleet(target, rollout.retained_instance_counts)
            outcomes = asyncinf.failure_metrics(fleet, self.inp.observed)
            if outcomes is not None:
                found[target] = outcomes
        return found

    def draining(self, live: list[_Live]) -> list[Fleet]:
        """Async fleets the route left that still hold queued messages: they answer them first."""
        previous, observed = self.previous, self.inp.observed
        live_configs = {item.fleet.config for item in live}
        candidates = [
            previous.endpoint_config_name,
            previous.pending_endpoint_config_name,
            *previous.draining_endpoint_config_names,
        ]
        found = []
        for name in dict.fromkeys(c for c in candidates if c):
            fleet = self.fleet(name)
            if name in live_configs or fleet.missing or not fleet.is_async:
                continue
            if asyncinf.holds_messages(fleet, observed):
                # Never at zero while messages wait: KEDA would start one anyway, a lost KEDA would not.
                variants = tuple(replace(v, replicas=max(v.replicas, 1)) for v in fleet.variants)
                found.append(replace(fleet, variants=variants))
        return found

    def async_objects(self, live: list[_Live], routing: Routing) -> list[Manifest]:
        if not self.has_frontdoor(live):
            return []
        fleets = [item.fleet for item in live if item.fleet.is_async]
        model = fleets[0].production[0].model if fleets[0].production else None
        if model is None:
            return []
        routes = asyncinf.routes_of(self.endpoint, fleets, routing.weights)
        return asyncinf.frontdoor_objects(self.endpoint, model, routes, self.inp.settings)

    def async_problems(self, live: list[_Live], draining: list[Fleet]) -> tuple[list[str], str | None]:
        """What keeps async inference from working, and the condition reason that names it."""
        if not any(item.fleet.is_async for item in live) and not draining:
            return [], None
        if not asyncinf.redis_configured(self.inp.settings):
            return [asyncinf.MSG_NO_REDIS], "AsyncQueueNotConfigured"
        error = self.inp.observed.queue_error
        if error is not None:
            return [f"cannot read the async queue: {error}"], "AsyncQueueUnreachable"
        return [], None

    def backlog_condition(self, live: list[_Live], draining: list[Fleet]) -> Condition | None:
        """HasBacklogWithoutCapacity: a variant has messages waiting and no ready replica."""
        fleets = [item.fleet for item in live] + draining
        variants = [(v, self.readiness(v).ready) for f in fleets for v in f.production if v.stream]
        if not variants:
            return None
        observed, previous = self.inp.observed, self.previous.conditions
        generation = self.endpoint.metadata.generation
        if observed.queue_error is not None or not asyncinf.redis_configured(self.inp.settings):
            before = next((c for c in previous if c.type == BACKLOG_CONDITION), None)
            kept = before is not None and before.status == "Unknown"
            return Condition(
                type=BACKLOG_CONDITION,
                status="Unknown",
                reason="QueueUnknown",
                message="the queue cannot be read",
                last_transition_time=before.last_transition_time if before and kept else stamp(observed.now),
                observed_generation=generation,
            )
        waiting = asyncinf.without_capacity(variants, observed)
        if waiting:
            message = f"messages wait for {', '.join(waiting)}, which has no ready replica"
            return condition(
                previous, BACKLOG_CONDITION, True, "NoReadyReplica", message, observed.now, generation
            )
        return condition(
            previous,
            BACKLOG_CONDITION,
            False,
            "Capacity",
            "every variant with messages has a ready replica",
            observed.now,
            generation,
        )

    def acceptance(self, routing: Routing) -> RouteAcceptance:
        """What the Gateway said of the planned HTTPRoute (an Ingress or no route needs no word)."""
        for obj in routing.objects:
            if obj["kind"] == "HTTPRoute":
                return route_acceptance(obj, find(self.children, "HTTPRoute", obj["metadata"]["name"]))
        return RouteAcceptance(True)

    def route_in_place(self, routing: Routing) -> bool:
        """The observed route carries this routing's split, and its Gateway accepted it."""
        if routing.error is not None:
            return False
        if not routing.objects:
            return self.inp.settings.routing.mode == "none"
        in_place = all(matches(obj, self.children) for obj in routing.objects)
        return in_place and self.acceptance(routing).accepted

    def missing(self, objects: list[Manifest]) -> tuple[str, ...]:
        """Planned objects that do not exist (yet, or because the API server refused them)."""
        return tuple(
            f"{obj['kind']} {obj['metadata']['name']}"
            for obj in objects
            if find(self.children, obj["kind"], obj["metadata"]["name"]) is None
        )

    def write_problems(self) -> list[str]:
        return [
            f"cannot apply {kind} {name}: {message}"
            for (kind, name), message in sorted(self.inp.observed.write_failures.items())
        ]

    # ---------------------------------------------------------------- plan

    def plan(self) -> Plan:
        inp, previous, spec = self.inp, self.previous, self.endpoint.spec
        before = previous.rollout
        route_before = self.routing(
            self.live(
                previous.endpoint_config_name,
                before.target_endpoint_config_name if before else None,
                before.traffic_shifted_percent if before else 0,
                before.retained_instance_counts if before else {},
            )
        )
        self.route_was_in_place = previous.endpoint_config_name is not None and self.route_in_place(
            route_before
        )
        decision = decide(
            RolloutInput(
                spec_config=spec.endpoint_config_name,
                status=previous,
                policy=spec.deployment_config,
                now=inp.observed.now,
                fleet_state=self.fleet_state,
                observed_replicas=self.observed_replicas,
                metrics=self.metrics(),
                route_in_place=self.route_was_in_place,
                observed_share=self.observed_share,
                warm_from=self.warm_sources,
            )
        )
        retained = decision.rollout.retained_instance_counts if decision.rollout else {}
        live = self.live(decision.serving, decision.target, decision.shifted, retained)
        draining = self.draining(live)
        fleets = [item.fleet for item in live] + draining
        warm = self.planned_warm_from(decision)
        objects = [
            obj
            for fleet in fleets
            for v in fleet.variants
            for obj in variant_objects(
                self.endpoint,
                multimodel.with_warm_from(v, warm.get(fleet.config, {})),
                inp.settings,
                inp.observed.unavailable_kinds,
            )
        ]
        any_async = any(fleet.is_async for fleet in fleets)
        policy = network_policy(
            self.endpoint,
            inp.settings,
            async_metrics=any_async,
            interceptor=bool(self.intercepted(live)),
            peers=any(v.multi_model for fleet in fleets for v in fleet.variants),
        )
        if policy is not None:
            objects.append(policy)
        routing = self.routing(live)
        objects += self.async_objects(live, routing)
        keep_route = routing.error is not None or (
            not routing.objects and inp.settings.routing.mode != "none"
        )
        objects += routing.objects
        objects.sort(key=lambda o: (KIND_ORDER.get(o["kind"], 99), o["metadata"]["name"]))
        delete, deferred = self.deletes(objects, live, keep_route)
        status, events = self.status(decision, live, routing, deferred, objects, draining)
        requeue = decision.requeue_after
        if draining or any_async:
            poll = DRAIN_POLL_SECONDS if draining else QUEUE_POLL_SECONDS
            requeue = poll if requeue is None else min(requeue, poll)
        if deferred:
            requeue = DEFERRED_DELETE_SECONDS if requeue is None else min(requeue, DEFERRED_DELETE_SECONDS)
        return Plan(objects, delete, status, [*decision.events, *events], requeue, self.shared(live))

    # ---------------------------------------------------------------- multi-model

    def warm_sources(self, serving: str, target: str) -> dict[str, str]:
        """Where the new config's MultiModel variants warm from, as a starting rollout records it."""
        source = self.fleet(serving, proving=self.proving(serving))
        return multimodel.warm_sources(self.endpoint, serving, source.variants, self.fleet(target).variants)

    def planned_warm_from(self, decision: Decision) -> dict[str, dict[str, str]]:
        """Config -> variant -> warm source of the live fleets' pods: the recorded ones only, so a
        pod template never changes once planned (and not when the rollout that set it ends)."""
        planned = {decision.serving: multimodel.recorded_warm_from(self.previous, decision.serving)}
        if decision.rollout is not None:
            planned[decision.rollout.target_endpoint_config_name] = dict(decision.rollout.warm_from)
        return planned

    def shared(self, live: list[_Live]) -> list[Manifest]:
        """The review identity of every ServiceAccount the live fleets' pods run as (KubernetesRBAC)."""
        accounts = set()
        for item in live:
            for v in item.fleet.variants:
                access = serving_access(self.endpoint, self.inp.settings, v.model.spec.service_account_name)
                if access.service_account is not None:
                    accounts.add(access.service_account)
        shared = [
            obj
            for account in sorted(accounts)
            for obj in serving_identity(self.endpoint.namespace, account, self.inp.settings)
        ]
        if (
            self.intercepted(live)
            and serverless.REFERENCE_GRANT_KIND not in self.inp.observed.unavailable_kinds
        ):
            meta_labels = {labels.PART_OF: labels.PART_OF_VALUE, labels.MANAGED_BY: labels.MANAGED_BY_VALUE}
            shared.append(serverless.reference_grant(self.endpoint.namespace, self.inp.settings, meta_labels))
        return shared

    def deletes(
        self, desired: list[Manifest], live: list[_Live], keep_route: bool
    ) -> tuple[list[ObjectRef], bool]:
        wanted = {(o["kind"], o["metadata"]["name"]) for o in desired}
        wanted_names = {o["metadata"]["name"] for o in desired}
        # A config that vanished while serving: leave its fleet alone rather than cut traffic.
        kept_configs = {label_value(item.fleet.config) for item in live if item.fleet.missing}
        routed = self._routed_services()
        delete: list[ObjectRef] = []
        deferred = False
        for child in self.children:
            kind, meta = child.get("kind"), child.get("metadata", {})
            if kind not in KIND_ORDER or (kind, meta.get("name")) in wanted:
                continue
            if kind in ROUTE_KINDS and keep_route:
                continue
            if kind in FLEET_KINDS and meta.get("labels", {}).get(labels.ENDPOINT_CONFIG) in kept_configs:
                continue
            if kind in FLEET_KINDS and meta.get("name") in routed and meta.get("name") not in wanted_names:
                deferred = True  # the observed route still sends to it: delete once the route has moved
                continue
            delete.append(ObjectRef.of({**child, "metadata": {"namespace": self.endpoint.namespace, **meta}}))
        delete.sort(key=lambda r: (-KIND_ORDER.get(r.kind, 99), r.name))
        return delete, deferred

    def _routed_services(self) -> set[str]:
        """Services the observed route sends traffic to."""
        names: set[str | None] = set()
        for child in self.children:
            if child.get("kind") == "HTTPRoute":
                for rule in child.get("spec", {}).get("rules", []):
                    names.update(
                        serverless.routed_service(ref)
                        for ref in rule.get("backendRefs", [])
                        if ref.get("weight", 1)
                    )
                    for f in rule.get("filters", []):
                        names.add(((f.get("requestMirror") or {}).get("backendRef") or {}).get("name"))
            elif child.get("kind") == "Ingress":
                for rule in child.get("spec", {}).get("rules", []):
                    for path in (rule.get("http") or {}).get("paths", []):
                        names.add(((path.get("backend") or {}).get("service") or {}).get("name"))
        return {name for name in names if name}

    # ---------------------------------------------------------------- status

    def _variant_statuses(self, item: _Live, route_ok: bool) -> list[VariantStatus]:
        previous = self.previous
        before: dict[tuple[str | None, str], float] = {}
        for config, variants in (
            (previous.endpoint_config_name, previous.production_variants),
            (previous.pending_endpoint_config_name, previous.pending_production_variants),
        ):
            for old in variants:
                before[(config, old.variant_name)] = old.current_weight
        result = []
        for v in item.fleet.production:
            readiness = self.readiness(v)
            desired = round(v.weight * item.share / 100, 4)
            current = desired if route_ok else before.get((item.fleet.config, v.name), 0.0)
            result.append(
                VariantStatus(
                    variant_name=v.name,
                    model_name=v.model.name,
                    current_weight=current,
                    desired_weight=desired,
                    current_instance_count=readiness.current,
                    desired_instance_count=readiness.desired,
                    ready_instance_count=readiness.ready,
                    **asyncinf.backlog_fields(v, self.inp.observed, readiness.ready),
                )
            )
        return result

    def status(
        self,
        decision: Decision,
        live: list[_Live],
        routing: Routing,
        deferred: bool,
        objects: list[Manifest],
        draining: list[Fleet],
    ) -> tuple[EndpointStatus, list[Event]]:
        inp, previous, endpoint = self.inp, self.previous, self.endpoint
        serving = live[0].fleet
        route_ok = self.route_in_place(routing)
        acceptance = self.acceptance(routing)
        fleets = [item.fleet for item in live]
        failures = tuple(self.failures(fleets))
        serving_names = {v.object_name for v in serving.variants}
        frontdoor = self.has_frontdoor(live)
        if frontdoor:
            serving_names.add(async_frontdoor_name(endpoint.name))
        serving_objects = [
            o for o in objects if o["metadata"]["name"] in serving_names or o["kind"] in ROUTE_KINDS
        ]
        extra = [
            *self.write_problems(),
            *autoscaler_problems(self.children, fleets, inp.settings, inp.observed.unavailable_kinds),
        ]
        if acceptance.refused:
            extra.append(acceptance.refused)
        queue_problems, queue_reason = self.async_problems(live, draining)
        extra += queue_problems
        scaler_problems = serverless.problems(
            any(v.serverless is not None for f in fleets for v in f.variants),
            inp.settings,
            inp.observed.unavailable_kinds,
        )
        extra += scaler_problems
        if frontdoor:
            extra += asyncinf.frontdoor_problems(inp.observed.pods, endpoint.name)
        serving_ready = serving.complete and all(self.readiness(v).is_ready for v in serving.variants)
        if frontdoor:
            serving_ready = serving_ready and asyncinf.frontdoor_ready(self.children, endpoint.name)
        facts = Facts(
            serving=serving,
            serving_ready=serving_ready,
            route_ok=route_ok,
            route_was_in_place=self.route_was_in_place,
            routing_error=routing.error,
            deferred=deferred,
            failures=failures,
            problems=problems_of(decision, fleets, failures, routing.error, extra),
            missing=self.missing(serving_objects),
            route_waiting=acceptance.waiting,
            apply_failed=bool(inp.observed.write_failures),
            queue_reason=queue_reason or ("ServerlessScalerMissing" if scaler_problems else None),
        )
        phase = phase_of(previous, decision, facts)
        public = inp.settings.routing.public_url.rstrip("/")
        pending = live[1] if len(live) > 1 else None
        status = EndpointStatus(
            observed_generation=endpoint.metadata.generation,
            phase=phase,
            url=f"{public}/endpoints/{endpoint.namespace}/{endpoint.name}/invocations",
            endpoint_config_name=decision.serving,
            pending_endpoint_config_name=decision.target,
            production_variants=self._variant_statuses(live[0], route_ok),
            pending_production_variants=self._variant_statuses(pending, route_ok) if pending else [],
            rollout=decision.rollout,
            failure_reason="; ".join(facts.problems) or None,
            last_rollback=decision.last_rollback,
            warm_from=multimodel.recorded_warm_from(previous, decision.serving),
            draining_endpoint_config_names=sorted(f.config for f in draining),
            conditions=conditions_of(
                previous, decision, facts, phase, inp.observed.now, endpoint.metadata.generation
            ),
        )
        backlog = self.backlog_condition(live, draining)
        if backlog is not None:
            status.conditions.append(backlog)
        served = decision.serving
        degraded, dropped = capture.capture_health(
            previous,
            inp.configs.get(served) if served else None,
            inp.observed.metrics.get(served) if served else None,
            inp.observed.now,
            endpoint.metadata.generation,
        )
        status.capture_dropped_total = dropped
        if degraded is not None:
            status.conditions.append(degraded)
        return status, status_events(previous, status)


def plan_endpoint(inp: PlanInput) -> Plan:
    """The objects an Endpoint should have, what must go, and its status. Pure and deterministic."""
    return _Planner(inp).plan()
