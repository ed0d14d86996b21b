"""Serverless variants on a real API server: said in the status while the KEDA HTTP add-on is
missing (the variant then stays warm), then an HTTPScaledObject the server's copy of the
add-on's CRD (schema and CEL) admits, and a route through the interceptor the HTTPRoute CRD
admits, once it is installed."""

from __future__ import annotations

from typing import Any

import pytest
from berth_operator.planner import serverless

from tests.cluster.support import Cluster
from tests.operator.builders import config, endpoint, model
from tests.support.crdcheck import load_crd
from tests.support.envtest import install_crds
from tests.support.testdata import KEDA_HTTPSCALEDOBJECT_CRD, data_file

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("needs_controller_manager")]

API_VERSION = serverless.HTTP_SCALED_OBJECT_API_VERSION


def cold(name: str, model_name: str) -> dict[str, Any]:
    return {
        "variantName": name,
        "modelName": model_name,
        "serverlessConfig": {"memorySizeInMB": 1024, "maxConcurrency": 8, "idleSeconds": 60},
    }


def test_http_add_on_missing_then_installed(cluster: Cluster) -> None:
    if cluster.kube.serves(API_VERSION, serverless.HTTP_SCALED_OBJECT_KIND):
        pytest.fail("the HTTP add-on's CRD is installed before this test: it must see the cluster without it")
    cluster.start_operator()
    cluster.create(model("m1"))
    cluster.create(config("cfg1", cold("blue", "m1")))
    cluster.create(endpoint("ep", "cfg1"))

    def said() -> str | None:
        reason = cluster.status().get("failureReason") or ""
        return reason if serverless.MSG_NO_HTTP_ADDON in reason else None

    cluster.wait(said, "the status says the KEDA HTTP add-on is missing")
    cluster.wait_in_service()
    [deployment] = cluster.children("Deployment")
    assert deployment["spec"]["replicas"] == 1  # nothing would start it at zero
    assert cluster.condition("Degraded")["reason"] == "ServerlessScalerMissing"

    install_crds(cluster.kube, [load_crd(data_file(KEDA_HTTPSCALEDOBJECT_CRD))])
    cluster.operator.stop()  # discovery is cached for a minute; a new process asks at once
    cluster.start_operator()

    def scaled() -> list[dict[str, Any]] | None:
        found = cluster.kube.list(
            serverless.HTTP_SCALED_OBJECT_KIND, cluster.namespace, api_version=API_VERSION
        )
        return [o for o in found if o["spec"]["replicas"]["min"] == 0] or None

    [scaled_object] = cluster.wait(scaled, "an HTTPScaledObject at min 0 (the fleet has served)")
    spec = scaled_object["spec"]
    # 1024 MB is half a CPU: 2 in flight per replica, maxConcurrency 8 is 4 replicas.
    assert spec["replicas"] == {"min": 0, "max": 4}
    assert spec["scalingMetric"] == {"concurrency": {"targetValue": 2}}
    assert spec["scaledownPeriod"] == 60
    [route] = cluster.children("HTTPRoute")
    default = route["spec"]["rules"][-1]["backendRefs"]
    assert [(r["name"], r["namespace"]) for r in default] == [("keda-add-ons-http-interceptor-proxy", "keda")]
    assert serverless.routed_service(default[0]) == deployment["metadata"]["name"]
    # This tier has no ReferenceGrant CRD (the Gateway API data holds HTTPRoute alone): the
    # status names it instead of claiming the route works.
    cluster.wait(
        lambda: serverless.MSG_NO_REFERENCE_GRANT in (cluster.status().get("failureReason") or "") or None,
        "the status names the missing ReferenceGrant CRD",
    )
    cluster.wait(
        lambda: cluster.status().get("phase") == "InService" or None, "InService through the interceptor"
    )
    [deployment] = cluster.children("Deployment")
    assert "berth-operator" not in [
        m.get("manager") for m in deployment["metadata"]["managedFields"] if "f:replicas" in str(m)
    ]  # the count is the add-on's now
    assert cluster.operator.forbidden() == []
