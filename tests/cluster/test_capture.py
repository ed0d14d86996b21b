"""Data capture on a real API server: the serving pods are told BERTH_CAPTURE, and the operator
reads their berth_capture_dropped_total (served on their loopback pod IPs) into CaptureDegraded."""

from __future__ import annotations

import json

import pytest

from tests.cluster.support import Cluster
from tests.operator.builders import config, endpoint, model, variant
from tests.operator.metrics_server import FleetMetricsServer
from tests.support import kubelet as pods

pytestmark = pytest.mark.timeout(180)
CONFIG_LABEL = "berth.dev/endpoint-config"


def capturing_config(name: str) -> dict:
    cfg = config(name, variant("blue", "m1"))
    cfg["spec"]["dataCapture"] = {"samplingPercentage": 100, "destinationUri": "s3://bucket/capture/"}
    return cfg


def test_drops_on_the_serving_pods_make_capture_degraded(cluster: Cluster) -> None:
    with FleetMetricsServer(capture_drops_per_scrape=3) as metrics:
        cluster.kubelet.behave(pods.ready(metrics=metrics.scrape), {CONFIG_LABEL: "c1"})
        cluster.start_operator()
        cluster.create(model("m1"))
        cluster.create(capturing_config("c1"))
        cluster.create(endpoint("ep", "c1"))
        cluster.wait_in_service()
        [deployment] = cluster.children("Deployment")
        [server] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "server"]
        told = json.loads(next(e["value"] for e in server["env"] if e["name"] == "BERTH_CAPTURE"))
        assert (told["endpoint"], told["variant"], told["source"]) == ("ep", "blue", "realtime")
        degraded = cluster.wait(
            lambda: (c := cluster.condition("CaptureDegraded")).get("status") == "True" and c,
            "CaptureDegraded True",
            timeout=90,
        )
        assert metrics.scrapes >= 1, "the operator never scraped the serving pod"
    assert degraded["reason"] == "EventsDropped"
    assert "captured events dropped" in degraded["message"]
    assert cluster.status()["captureDroppedTotal"] >= 3
    assert cluster.operator.forbidden() == []
