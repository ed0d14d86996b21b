"""A seeded random walk through edits, readiness changes, failures and time: invariants hold at every step.

- the route never sends traffic to a Service without a Deployment;
- a Service's weight only grows while its Deployment is ready (traffic moves only to ready fleets);
- default-rule weights always sum to 1000;
- planning twice on the same input gives the same plan;
- every object is admitted.
"""

from __future__ import annotations

import copy
import random

import pytest
from berth_operator.planner import FleetMetrics, PlanInput, plan_endpoint

from .support import Cluster, config, endpoint, model, variant
from .validation import assert_admitted

CONFIGS = ("cfg1", "cfg2", "cfg3")


def walk_cluster(policy: dict[str, object]) -> Cluster:
    configs = {
        "cfg1": config("cfg1", variant("blue", "m1", initialInstanceCount=2)),
        "cfg2": config("cfg2", variant("blue", "m2"), variant("green", "m2", initialVariantWeight=2)),
        "cfg3": config("cfg3", variant("red", "m3"), shadows=(variant("shadow", "m3"),)),
    }
    deployment_config = {
        "blueGreen": {
            "trafficRouting": policy,
            "terminationWaitSeconds": 7,
            "maximumExecutionTimeoutSeconds": 60,
        },
        "autoRollback": {"maxErrorRatePercent": 5},
    }
    models = {m: model(m) for m in ("m1", "m2", "m3")}
    return Cluster(endpoint("cfg1", deploymentConfig=deployment_config), configs, models)


def ready(cluster: Cluster, service: str) -> bool:
    deployment = cluster.objects.get(("Deployment", service))
    if deployment is None:
        return False
    status = deployment.get("status") or {}
    return int(status.get("readyReplicas", 0)) >= int(deployment["spec"].get("replicas", 1))


@pytest.mark.parametrize(
    ("policy", "seed"),
    [
        ({"type": "AllAtOnce", "waitIntervalSeconds": 3}, 1),
        ({"type": "Canary", "waitIntervalSeconds": 4, "canarySize": {"value": 20}}, 2),
        ({"type": "Linear", "waitIntervalSeconds": 2, "linearStepSize": {"value": 34}}, 3),
        ({"type": "Canary", "waitIntervalSeconds": 0, "canarySize": {"value": 50}}, 4),
    ],
)
def test_random_walk(policy: dict[str, object], seed: int) -> None:
    rng = random.Random(seed)
    cluster = walk_cluster(policy)
    cluster.auto_ready = False
    before: dict[str, int] = {}
    seen: set[str] = set()
    for _ in range(160):
        action = rng.random()
        if action < 0.06:
            cluster.edit(endpointConfigName=rng.choice(CONFIGS))
        elif action < 0.40:
            cluster.make_ready()
        elif action < 0.45:
            name = rng.choice(sorted(n for k, n in cluster.objects if k == "Deployment") or ["none"])
            if ("Deployment", name) in cluster.objects:  # a replica is lost
                cluster.objects[("Deployment", name)]["status"] = {"readyReplicas": 0}
        elif action < 0.48:
            cluster.metrics = {
                rng.choice(CONFIGS): FleetMetrics(requests=100, errors_5xx=rng.choice([0, 50]))
            }
        elif action < 0.50:
            cluster.metrics = {}
        cluster.advance(rng.choice([0.5, 1, 2, 5]))

        phase = cluster.endpoint.status.phase if cluster.endpoint.status else None
        inp = PlanInput(
            cluster.endpoint, cluster.configs, cluster.models, cluster.settings, cluster.observed()
        )
        untouched = copy.deepcopy(inp.observed)
        first = plan_endpoint(inp)
        assert plan_endpoint(inp) == first  # pure: same input, same plan
        assert inp.observed == untouched  # and the input is not changed
        # Before the first service there is no traffic to protect; a rollback leaves a failing fleet.
        protected = before and phase not in (None, "Creating", "Failed")
        if protected and not any(e.reason == "RolledBack" for e in first.events):
            for service, weight in first_weights(first).items():
                if weight > before.get(service, 0):
                    assert ready(cluster, service), f"traffic moved to {service}, which is not ready"
        cluster.apply(first)
        seen.update(e.reason for e in first.events)
        after = cluster.weights()
        for service in after:
            assert ("Deployment", service) in cluster.objects, f"route sends to deleted {service}"
        if after:
            assert sum(after.values()) == 1000
        before = after
    assert_admitted(list(cluster.objects.values()))
    assert {"RolloutStarted", "TrafficShifted"} <= seen, seen  # the walk did exercise rollouts


def first_weights(plan: object) -> dict[str, int]:
    route = next((o for o in plan.objects if o["kind"] == "HTTPRoute"), None)  # type: ignore[attr-defined]
    if route is None:
        return {}
    return {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][-1]["backendRefs"]}
