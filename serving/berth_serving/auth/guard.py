"""The ASGI wrapper that checks every invoke request before the serving app sees it, and the
metric of who invoked.

Which requests: every one except reads (GET, HEAD) of the paths in OPEN_PATHS and under
OPEN_PREFIXES. Any other method or path is checked, so a route added later (async invocations,
multi-model loading) is closed until someone opens it here on purpose.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, Metric

from berth_serving.auth.decision import Allowed, Credentials, Outcome, Refused, read_credentials
from berth_serving.errors import HTTPError, error_body, error_headers, is_v2_path

log = logging.getLogger("berth.serving.auth")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Open to anyone who can reach the pod, for reads only. /ping and /v2/health/*: the kubelet's
# probes carry no credential. /metrics: Prometheus scrapes it (what it shows is counts, never
# payloads). /v2 and /v2/models/NAME[/ready]: the server's and the model's metadata (names,
# dtypes, shapes), which clients such as tritonclient read before they infer; no data passes.
# The NetworkPolicy the operator writes keeps all of them inside the cluster.
OPEN_PATHS = frozenset({"/ping", "/metrics", "/v2"})
OPEN_PREFIXES = ("/v2/health/", "/v2/models/")
OPEN_METHODS = frozenset({"GET", "HEAD"})
# Where the app finds who is calling (data capture metadata, later): a key of the ASGI scope.
SCOPE_CALLER = "berth.caller"

# The metric names, spelled here once (metrics.py holds the serving app's own).
INVOCATIONS_BY_CALLER = "berth_invocations_by_caller"  # a counter: berth_invocations_by_caller_total
INVOCATIONS_BY_CALLER_TOTAL = INVOCATIONS_BY_CALLER + "_total"
AUTH_REVIEWS = "berth_invoke_auth_reviews"  # berth_invoke_auth_reviews_total: API server round trips
AUTH_REVIEWS_TOTAL = AUTH_REVIEWS + "_total"
# Distinct callers with a label of their own; the rest are counted as OTHER_CALLERS, so a flood
# of API keys or users cannot grow /metrics without bound.
MAX_CALLER_LABELS = 100
OTHER_CALLERS = "other"
ALLOWED = "allowed"
# With trust_loopback: the peers that pass without a credential (only this pod's containers can
# be them), and their name in the metric.
LOOPBACK_PEERS = frozenset({"127.0.0.1", "::1"})
LOOPBACK_CALLER = "loopback"
# Set by a proxy on the same host (local mode's router) on every request it forwards: such a
# request comes from the loopback too, but for a caller elsewhere, so it is never trusted so.
PROXIED_HEADER = b"x-berth-proxied"


def is_open(method: str, path: str) -> bool:
    """True for the requests served without a credential."""
    return method in OPEN_METHODS and _open_path(path)


def _open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class Authenticator(Protocol):
    """One mode's check (APIKey, KubernetesRBAC)."""

    def check(self, credentials: Credentials) -> Outcome | None:
        """The answer when it needs no I/O (an API key, a cached review), else None."""
        ...

    async def authenticate(self, credentials: Credentials) -> Outcome:
        """The answer, asking whoever must be asked."""
        ...

    def describe(self) -> str:
        """What the start-up log line says about this mode."""
        ...

    def start(self) -> None:
        """Begin background work (on the event loop)."""
        ...

    async def aclose(self) -> None: ...


class CallerCounts:
    """Invoke requests by caller and result, event loop only, bounded in labels."""

    def __init__(self, variant: str, limit: int = MAX_CALLER_LABELS) -> None:
        self.variant = variant
        self.limit = limit
        self._by_result: dict[str, dict[str, int]] = {ALLOWED: {}}
        self.allowed = self._by_result[ALLOWED]  # the hot one: one dict operation per request
        self._callers: set[str] = set()

    def count(self, caller: str, result: str = ALLOWED) -> None:
        if caller not in self._callers:
            if len(self._callers) >= self.limit:
                caller = OTHER_CALLERS
            else:
                self._callers.add(caller)
        by_caller = self._by_result.setdefault(result, {})
        by_caller[caller] = by_caller.get(caller, 0) + 1

    @property
    def counts(self) -> dict[tuple[str, str], int]:
        """(caller, result) -> requests, a copy."""
        return {
            (caller, result): count
            for result, by_caller in list(self._by_result.items())
            for caller, count in list(by_caller.items())
        }


class AuthGuard:
    """Checks the credential of each request that is not open, then calls `app` (with the
    caller in the scope) or answers 401/403/503 itself."""

    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        *,
        variant: str = "default",
        answer_headers: tuple[tuple[bytes, bytes], ...] = (),
        trust_loopback: bool = False,
    ) -> None:
        self.app = app
        self.trust_loopback = trust_loopback
        self.authenticator = authenticator
        self.answer_headers = answer_headers
        self.callers = CallerCounts(variant)
        self._exported: list[Any] = []

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The ASGI call, as a plain function that returns what the server awaits: on the hot path
        (a POST with a valid credential, answered from a key or the cache) that is the serving
        app's own coroutine, so the guard adds no coroutine frame that every resumption of the
        app passes through (one did: about 2% of the event loop at c64). The server must be told
        this is ASGI 3 (uvicorn's `interface="asgi3"`): it cannot tell from a plain function.
        Every line here is paid by every request, so the open-path test starts with the method."""
        if scope["type"] != "http" or (scope["method"] in OPEN_METHODS and _open_path(scope["path"])):
            return self.app(scope, receive, send)
        if self.trust_loopback and _peer(scope) in LOOPBACK_PEERS and not _proxied(scope):
            return self._act(scope, receive, send, _LOOPBACK)
        credentials = read_credentials(scope["headers"])
        if isinstance(credentials, Refused):
            return self._refuse(scope, send, credentials)
        outcome = self.authenticator.check(credentials)
        if outcome is None:
            return self._reviewed(scope, receive, send, credentials)
        return self._act(scope, receive, send, outcome)

    def _act(self, scope: Scope, receive: Receive, send: Send, outcome: Outcome) -> Awaitable[None]:
        if isinstance(outcome, Allowed):
            caller = outcome.caller
            scope[SCOPE_CALLER] = caller
            allowed = self.callers.allowed
            if caller in allowed:
                allowed[caller] += 1
            else:
                self.callers.count(caller)
            return self.app(scope, receive, send)
        return self._refuse(scope, send, outcome)

    async def _reviewed(self, scope: Scope, receive: Receive, send: Send, credentials: Credentials) -> None:
        outcome = await self.authenticator.authenticate(credentials)
        await self._act(scope, receive, send, outcome)

    async def _refuse(self, scope: Scope, send: Send, refused: Refused) -> None:
        self.callers.count(refused.caller, refused.result)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "invoke refused",
                extra={"fields": {"code": refused.status, "path": scope["path"], "caller": refused.caller}},
            )
        error = HTTPError(refused.status, refused.message, retry_after=refused.retry_after)
        body = error_body(error, is_v2_path(scope["path"]))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *self.answer_headers,
            *error_headers(error),
        ]
        if refused.challenge is not None:
            headers.append((b"www-authenticate", refused.challenge))
        await send({"type": "http.response.start", "status": refused.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    # --- lifecycle and metrics ------------------------------------------------------------
    def start(self) -> None:
        self.authenticator.start()

    async def aclose(self) -> None:
        await self.authenticator.aclose()

    def export_to(self, registry: Any) -> None:
        """Add this guard's metrics to a prometheus_client registry (once per registry)."""
        if any(registry is done for done in self._exported):
            return
        registry.register(_Exporter(self))
        self._exported.append(registry)

    def families(self) -> Iterator[Metric]:
        variant = self.callers.variant
        callers = CounterMetricFamily(
            INVOCATIONS_BY_CALLER,
            "Invoke requests by caller (a Kubernetes user or apikey:NAME; '-' when none was "
            f"established; past {self.callers.limit} callers '{OTHER_CALLERS}') and by the "
            "result of the check (allowed, unauthenticated, denied, unavailable).",
            labels=["variant", "caller", "result"],
        )
        for (caller, result), count in sorted(self.callers.counts.items()):
            callers.add_metric([variant, caller, result], count)
        yield callers
        reviews = getattr(self.authenticator, "reviews", None)
        if isinstance(reviews, dict):
            family = CounterMetricFamily(
                AUTH_REVIEWS,
                "Reviews asked of the Kubernetes API server (cache misses), by their answer.",
                labels=["variant", "result"],
            )
            for result, count in sorted(dict(reviews).items()):
                family.add_metric([variant, result], count)
            yield family


_LOOPBACK = Allowed(LOOPBACK_CALLER)


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


class _Exporter:
    def __init__(self, guard: AuthGuard) -> None:
        self._guard = guard

    def collect(self) -> Iterator[Metric]:
        return self._guard.families()


def _proxied(scope: Scope) -> bool:
    return any(name == PROXIED_HEADER for name, _ in scope["headers"])
