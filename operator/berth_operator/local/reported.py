"""What the planner observes in local mode: the status local processes and the router report.

The shapes are the ones kubelet, the Deployment controller and a Gateway's controller would
write, so the planner reads local processes exactly as it reads a cluster: readyReplicas from
/ping, a crashed replica as a CrashLoopBackOff waiting state with its last stderr line, a failed
model fetch as a terminated storage-initializer with the error as its message, and every
HTTPRoute accepted (the local router serves every route it is given).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from ..planner.pods import INIT_CONTAINER, SERVER_CONTAINER
from .deployment import LocalDeployment
from .replica import Replica

Manifest = dict[str, Any]

ROUTER = "berth.dev/local-router"  # the controllerName the local router reports routes with


def _time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def observed_deployment(applied: Manifest, fleet: LocalDeployment) -> Manifest:
    current = fleet.current()
    ready = sum(1 for r in current if r.ready)
    deployment = copy.deepcopy(applied)
    deployment["metadata"]["generation"] = fleet.generation
    # An autoscaled Deployment has no replicas of the planner's: the HPA (KEDA's, here the local
    # KEDA) writes the count it chose, and the planner reads it there.
    deployment["spec"].setdefault("replicas", fleet.spec.replicas)
    deployment["status"] = {
        "observedGeneration": fleet.generation,
        "replicas": len([r for r in fleet.replicas if r.state != "Stopped"]),
        "updatedReplicas": len(current),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(0, fleet.spec.replicas - ready),
    }
    return deployment


def _pod(fleet: LocalDeployment, name: str, phase: str, ready: bool) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": fleet.spec.namespace, "labels": dict(fleet.spec.labels)},
        "status": {
            "phase": phase,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True" if ready else "False"},
            ],
        },
    }


def _replica_pod(fleet: LocalDeployment, replica: Replica) -> Manifest:
    pod = _pod(fleet, replica.name, "Running" if replica.pid else "Pending", replica.ready)
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "ready": replica.ready,
        "restartCount": replica.restarts,
    }
    if replica.state == "CrashLoopBackOff":
        container["state"] = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off restarting failed container {SERVER_CONTAINER}: {replica.last_error}",
            }
        }
    elif replica.pid:
        container["state"] = {"running": {"startedAt": _time(replica.started_at)}}
    else:
        container["state"] = {"waiting": {"reason": "ContainerCreating"}}
    if replica.restarts:
        container["lastState"] = {
            "terminated": {
                "exitCode": replica.last_exit_code if replica.last_exit_code is not None else 1,
                "reason": "Error",
                "message": replica.last_error,
            }
        }
    pod["status"]["initContainerStatuses"] = [
        {
            "name": INIT_CONTAINER,
            "ready": True,
            "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
        }
    ]
    pod["status"]["containerStatuses"] = [container]
    return pod


def _initializing_pods(fleet: LocalDeployment) -> list[Manifest]:
    """Pods whose storage-initializer is still fetching, or failed to."""
    pods = []
    for index in range(fleet.spec.replicas):
        pod = _pod(fleet, f"{fleet.spec.name}-{fleet.spec.template_hash}-init{index}", "Pending", False)
        if fleet.fetch_state == "Failed":
            init: dict[str, Any] = {
                "name": INIT_CONTAINER,
                "ready": False,
                "restartCount": max(0, fleet.fetch_failures - 1),
                "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": fleet.fetch_error}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": fleet.fetch_error}},
            }
        else:
            init = {"name": INIT_CONTAINER, "ready": False, "restartCount": 0, "state": {"running": {}}}
        pod["status"]["initContainerStatuses"] = [init]
        pod["status"]["containerStatuses"] = [
            {
                "name": SERVER_CONTAINER,
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "PodInitializing"}},
            }
        ]
        pods.append(pod)
    return pods


def observed_pods(fleet: LocalDeployment) -> list[Manifest]:
    live = [r for r in fleet.replicas if r.state not in ("Terminating", "Stopped")]
    pods = [_replica_pod(fleet, r) for r in sorted(live, key=lambda r: r.name)]
    if fleet.fetch_state != "Fetched" and len(fleet.current()) < fleet.spec.replicas:
        pods += _initializing_pods(fleet)
    return pods


def observed_route(route: Manifest, since: float) -> Manifest:
    """The HTTPRoute with the status a Gateway writes once it serves it: every parent accepted it."""
    observed = copy.deepcopy(route)
    generation = observed["metadata"].setdefault("generation", 1)
    conditions = [
        {
            "type": type_,
            "status": "True",
            "reason": type_,
            "message": "served by the berth up router",
            "observedGeneration": generation,
            "lastTransitionTime": _time(since),
        }
        for type_ in ("Accepted", "ResolvedRefs")
    ]
    parents = [
        {"parentRef": dict(ref), "controllerName": ROUTER, "conditions": conditions}
        for ref in observed.get("spec", {}).get("parentRefs", [])
    ]
    observed["status"] = {"parents": parents}
    return observed
