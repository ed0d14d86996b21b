"""A small asynchronous Kubernetes client on aiohttp, built from the credentials kopf logged in with.

Only what the operator needs: get, list (label selector, also filtered here because some
API emulators ignore selectors), server-side apply with one field manager, create, merge-patch,
status patch, delete, core v1 Events, and whether the cluster serves a kind at all (discovery).
Every call is a coroutine on the operator's event loop; nothing blocks.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from .api import API_VERSION, RESOURCE_KINDS
from .planner.labels import selects

if TYPE_CHECKING:
    import kopf

log = logging.getLogger(__name__)

Manifest = dict[str, Any]
FIELD_MANAGER = "berth-operator"  # the one field manager that owns every field Berth sets
DISCOVERY_TTL_SECONDS = 60.0  # a CRD installed later (Gateway API) is noticed within a minute


@dataclass(frozen=True)
class ResourceKind:
    """Where a kind lives in the API: /apis/GROUP/VERSION/[namespaces/NS/]PLURAL."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def base(self) -> str:
        return f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        parts = [self.base]
        if self.namespaced and namespace is not None:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.plural)
        if name is not None:
            parts.append(quote(name, safe=""))
        if subresource is not None:
            parts.append(subresource)
        return "/".join(parts)


RESOURCES: dict[tuple[str, str], ResourceKind] = {
    (kind.api_version, kind.kind): kind
    for kind in (
        *(ResourceKind(API_VERSION, cls.KIND, cls.PLURAL) for cls in RESOURCE_KINDS.values()),
        ResourceKind("batch/v1", "Job", "jobs"),
        ResourceKind("batch/v1", "CronJob", "cronjobs"),
        ResourceKind("apps/v1", "Deployment", "deployments"),
        ResourceKind("v1", "Service", "services"),
        ResourceKind("v1", "ConfigMap", "configmaps"),
        ResourceKind("v1", "Pod", "pods"),
        ResourceKind("v1", "Event", "events"),
        ResourceKind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
        ResourceKind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
        ResourceKind("networking.k8s.io/v1", "Ingress", "ingresses"),
        ResourceKind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
        ResourceKind("keda.sh/v1alpha1", "ScaledObject", "scaledobjects"),
        ResourceKind("v1", "ServiceAccount", "serviceaccounts"),
        ResourceKind(
            "rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", namespaced=False
        ),
        ResourceKind("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes"),
        ResourceKind("gateway.networking.k8s.io/v1beta1", "ReferenceGrant", "referencegrants"),
        ResourceKind("http.keda.sh/v1alpha1", "HTTPScaledObject", "httpscaledobjects"),
    )
}


def resource_kind(api_version: str, kind: str) -> ResourceKind:
    try:
        return RESOURCES[(api_version, kind)]
    except KeyError:
        raise ValueError(f"unknown kind {kind} ({api_version})") from None


def kind_of(obj: Mapping[str, Any]) -> ResourceKind:
    return resource_kind(obj["apiVersion"], obj["kind"])


def berth_kind(kind: str) -> ResourceKind:
    """Where one of Berth's own kinds (Endpoint, Model...) lives, from the API types."""
    return RESOURCES[(API_VERSION, kind)]


class ApiError(Exception):
    """A non-2xx answer of the API server."""

    def __init__(self, status: int, method: str, path: str, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status
        self.body = body
        self.message = str(message or "").strip()
        self.reason = str(body.get("reason") or "") if isinstance(body, dict) else ""

    def describe(self) -> str:
        """What a person reading the Endpoint's status needs: the code, the reason, the server's words."""
        reason = f" {self.reason}" if self.reason else ""
        return f"{self.status}{reason}: {self.message or 'no message from the API server'}"


def describe_error(error: BaseException) -> str:
    """One line for a log or a status, also for errors whose str() is empty (a TimeoutError)."""
    if isinstance(error, ApiError):
        return error.describe()
    if isinstance(error, TimeoutError):
        return "timed out talking to the API server"
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def matches_labels(obj: Mapping[str, Any], selector: Mapping[str, str]) -> bool:
    return selects(selector, obj.get("metadata", {}).get("labels") or {})


class KubeClient:
    """One aiohttp session per credentials; re-created when kopf logs in again."""

    def __init__(self, info: kopf.ConnectionInfo, *, timeout: float = 30.0) -> None:
        self.server = info.server.rstrip("/")
        self._info = info
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._served: dict[str, tuple[float, frozenset[str]]] = {}  # group/version -> (when, plurals)
        self.requests = 0  # every request this client made, for the benchmark and tests

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:  # a straggling reconcile after shutdown must not open a new session
            raise aiohttp.ClientConnectionError("the Kubernetes client is closed")
        if self._session is None or self._session.closed:
            info = self._info
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=32, ssl=info.as_ssl_context()),
                headers={**info.as_http_headers(), "User-Agent": "berth-operator"},
                proxy=info.proxy_url,
                trust_env=info.trust_env,
                timeout=self._timeout,
            )
        return self._session

    async def close(self) -> None:
        self._closed = True
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        session = self._ensure_session()
        self.requests += 1
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with session.request(
            method, self.server + path, data=data, params=params, headers=headers
        ) as response:
            text = await response.text()
            try:
                payload = json.loads(text) if text else None
            except ValueError:
                payload = text
            if response.status >= 400:
                raise ApiError(response.status, method, path, payload)
            return payload

    # ------------------------------------------------------------------ verbs

    async def get(self, kind: ResourceKind, namespace: str, name: str) -> Manifest | None:
        """The object, or None when it does not exist."""
        try:
            result: Manifest = await self.request("GET", kind.path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def list_objects(
        self, kind: ResourceKind, namespace: str | None, labels: Mapping[str, str] | None = None
    ) -> list[Manifest]:
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
        result = await self.request("GET", kind.path(namespace), params=params)
        items: list[Manifest] = result.get("items") or []
        # Lists come without apiVersion/kind per item; the planner needs them.
        for item in items:
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
        return [item for item in items if not labels or matches_labels(item, labels)]

    async def create(self, obj: Manifest) -> Manifest:
        kind = kind_of(obj)
        namespace = obj["metadata"].get("namespace")
        result: Manifest = await self.request("POST", kind.path(namespace), body=obj)
        return result

    async def merge_patch(
        self,
        kind: ResourceKind,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        subresource: str | None = None,
    ) -> Manifest:
        result: Manifest = await self.request(
            "PATCH",
            kind.path(namespace, name, subresource),
            body=patch,
            content_type="application/merge-patch+json",
        )
        return result

    async def apply(self, obj: Manifest) -> Manifest:
        """Server-side apply as Berth's one field manager: creates the object or makes the fields we
        set what we say, takes them over from anyone else (force), and removes the fields we set
        before and no longer do. Unknown fields are refused, not dropped (fieldValidation=Strict)."""
        kind = kind_of(obj)
        meta = obj["metadata"]
        params = {"fieldManager": FIELD_MANAGER, "force": "true", "fieldValidation": "Strict"}
        result: Manifest = await self.request(
            "PATCH",
            kind.path(meta.get("namespace"), meta["name"]),
            body=obj,  # JSON is YAML
            params=params,
            content_type="application/apply-patch+yaml",
        )
        return result

    async def serves(self, kind: ResourceKind) -> bool:
        """Whether the cluster serves this kind (its CRD is installed), asked at most once a minute."""
        now = time.monotonic()
        known = self._served.get(kind.api_version)
        if known is None or now - known[0] > DISCOVERY_TTL_SECONDS:
            try:
                document = await self.request("GET", kind.base)
                plurals = frozenset(r.get("name", "") for r in (document or {}).get("resources", []))
            except ApiError as exc:
                if exc.status != 404:
                    raise
                plurals = frozenset()
            known = (now, plurals)
            self._served[kind.api_version] = known
        return kind.plural in known[1]

    def forget_discovery(self) -> None:
        """Ask again next time (a create answered 404: a CRD may have gone)."""
        self._served.clear()

    async def patch_status(
        self, kind: ResourceKind, namespace: str, name: str, status: Mapping[str, Any]
    ) -> Manifest | None:
        """The object with its new status; None when it is gone (deleted while its reconcile
        ran: there is no status left to write, and a deleted object is not an error)."""
        try:
            return await self.merge_patch(kind, namespace, name, {"status": status}, subresource="status")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def delete(self, kind: ResourceKind, namespace: str, name: str) -> bool:
        """Delete (background propagation); False when it was already gone."""
        try:
            await self.request("DELETE", kind.path(namespace, name), body={"propagationPolicy": "Background"})
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def warning_events(self, namespace: str, kind: str, name: str) -> list[tuple[str, str]]:
        """(reason, message) of the Warning events about one object, oldest first."""
        selector = f"involvedObject.kind={kind},involvedObject.name={name},type=Warning"
        result = await self.request(
            "GET", RESOURCES[("v1", "Event")].path(namespace), params={"fieldSelector": selector}
        )
        items = [
            i
            for i in (result or {}).get("items") or []
            if (i.get("involvedObject") or {}).get("name") == name and i.get("type") == "Warning"
        ]
        items.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        return [(str(e.get("reason") or ""), str(e.get("message") or "").strip()) for e in items]

    async def post_event(
        self, involved: Mapping[str, Any], type_: str, reason: str, message: str, count: int = 1
    ) -> str | None:
        """A core v1 Event about `involved`; its name, or None when it could not be posted (events are
        best effort: failures are logged, never raised)."""
        meta = involved["metadata"]
        namespace = meta.get("namespace", "default")
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        name = f"{meta['name']}.{_event_suffix()}"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"namespace": namespace, "name": name},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta["name"],
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "berth-operator"},
            "reportingComponent": "berth.dev/operator",
            "reportingInstance": "berth-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "eventTime": now,
            "action": reason,
            "count": count,
        }
        try:
            await self.create(event)
        except (TimeoutError, ApiError, aiohttp.ClientError) as exc:
            log.warning("could not post event %s on %s: %s", reason, meta["name"], describe_error(exc))
            return None
        return name

    async def count_event(self, namespace: str, name: str, count: int) -> None:
        """Raise the count of an Event posted before (a repeat of the same event); best effort."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            await self.merge_patch(
                RESOURCES[("v1", "Event")], namespace, name, {"count": count, "lastTimestamp": now}
            )
        except (TimeoutError, ApiError, aiohttp.ClientError) as exc:
            log.info("could not count event %s: %s", name, describe_error(exc))


_event_counter = 0


def _event_suffix() -> str:
    # Unique per process and time, like the API server's generated names.
    global _event_counter
    _event_counter += 1
    return f"{int(datetime.now(UTC).timestamp() * 1e6):x}{_event_counter:x}"
