"""KubernetesRBAC: a caller's bearer token goes to the API server in a TokenReview, the user it
names in a SubjectAccessReview for verb `invoke` on `endpoints/NAME` in group `berth.dev`.

Answers are cached by the sha256 of the token (the token itself is kept nowhere), allowed and
refused alike, for `cache_seconds`, at most CACHE_ENTRIES of them (least recently used out
first): a warm check is a hash and a dict lookup. Requests with the same uncached token share one
review (single flight). When the API server cannot be asked (down, slow, erroring, refusing this
pod's own token) the answer is 503 with Retry-After and is not cached: closed, never open.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson

from berth_serving.auth.decision import (
    REVIEW_UNAVAILABLE,
    Credentials,
    Outcome,
    Refused,
    Target,
    access_outcome,
    access_review_body,
    bearer_of,
    identity_of,
    no_bearer,
    token_review_body,
    unprintable,
)

log = logging.getLogger("berth.serving.auth")
_sha256 = hashlib.sha256

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
CACHE_ENTRIES = 10_000
# A review that takes longer fails closed (503): the client retries, the API server is not
# queued up on.
REVIEW_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 2.0
# Reviews in flight to the API server at once: a flood of distinct tokens waits for these
# rather than opening a connection each.
MAX_REVIEW_CONNECTIONS = 16
# How often this pod's own token file is read again: projected ServiceAccount tokens are
# rewritten by the kubelet before they expire (at 80% of their life, an hour by default).
TOKEN_CHECK_SECONDS = 5.0
# One warning per this many seconds while reviews cannot be made, not one per request.
WARNING_INTERVAL_SECONDS = 10.0


class ReviewUnavailable(Exception):
    """The API server could not be asked; the message is for the log (no token in it)."""


class ReviewAPI(Protocol):
    async def create(self, path: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """POST a review object; its `status`. ReviewUnavailable when there is no answer."""
        ...

    async def aclose(self) -> None: ...


def in_cluster_url(env: Mapping[str, str] | None = None) -> str | None:
    """https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT, or None outside a pod."""
    env = os.environ if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"https://{host}:{port}"


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Trust `ca_file` (the cluster's CA), or the system's trust store when it is ""."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()


def _read_token(path: str) -> str:
    with open(path, encoding="ascii") as stream:
        return stream.read().strip()


class HttpReviewAPI:
    """The API server over one keep-alive connection pool (HTTP/1.1, httpx), as this pod's
    ServiceAccount (the token file, read again as it rotates)."""

    def __init__(
        self,
        url: str,
        token_file: str,
        ca_file: str,
        *,
        timeout_seconds: float = REVIEW_TIMEOUT_SECONDS,
        token_check_seconds: float = TOKEN_CHECK_SECONDS,
    ) -> None:
        self.url = url.rstrip("/")
        self.token_file = token_file
        self._tls = tls_context(ca_file) if url.startswith("https:") else None
        self._timeout_seconds = timeout_seconds
        self._token_check_seconds = token_check_seconds
        self._token = ""
        self._token_read = -float("inf")
        self._client: Any = None

    def _open(self) -> Any:
        import httpx  # only KubernetesRBAC needs it: the other modes do not pay its import

        transport = httpx.AsyncHTTPTransport(
            verify=self._tls if self._tls is not None else True,
            http2=False,
            limits=httpx.Limits(
                max_connections=MAX_REVIEW_CONNECTIONS, max_keepalive_connections=MAX_REVIEW_CONNECTIONS
            ),
            retries=1,  # a connection the server closed while idle
        )
        self._client = httpx.AsyncClient(
            base_url=self.url,
            transport=transport,
            timeout=httpx.Timeout(self._timeout_seconds, connect=CONNECT_TIMEOUT_SECONDS),
            # Not through HTTPS_PROXY (set for model downloads, perhaps): the API server is in the cluster.
            trust_env=False,
        )
        return self._client

    async def _bearer(self, force: bool = False) -> str:
        now = time.monotonic()
        if force or now - self._token_read >= self._token_check_seconds:
            try:
                token = await asyncio.to_thread(_read_token, self.token_file)
            except (OSError, UnicodeDecodeError) as error:
                raise ReviewUnavailable(f"cannot read the token file {self.token_file}: {error}") from None
            if token != self._token and self._token:
                log.info("reviewer token file changed", extra={"fields": {"file": self.token_file}})
            self._token, self._token_read = token, now
        return self._token

    async def create(self, path: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        import httpx

        client = self._client or self._open()
        content = orjson.dumps(body)
        for attempt in (1, 2):
            token = await self._bearer(force=attempt == 2)
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            try:
                response = await client.post(path, content=content, headers=headers)
            except (httpx.HTTPError, ssl.SSLError, OSError) as error:
                raise ReviewUnavailable(f"{self.url}{path}: {type(error).__name__}: {error}") from None
            if response.status_code == 401 and attempt == 1:
                continue  # this pod's token may have just rotated: read it again, once
            break
        if response.status_code not in (200, 201):
            raise ReviewUnavailable(
                f"{self.url}{path}: {response.status_code} {_status_message(response.content)}"
                + (" (this pod's ServiceAccount needs create on it)" if response.status_code == 403 else "")
            )
        try:
            document = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise ReviewUnavailable(f"{self.url}{path}: an answer that is not JSON") from None
        status = document.get("status") if isinstance(document, dict) else None
        return status if isinstance(status, dict) else {}

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _status_message(content: bytes) -> str:
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content[:200].decode("utf-8", "replace")
    return str(document.get("message", ""))[:300] if isinstance(document, dict) else ""


class KubeReviewer:
    """Token -> Allowed | Refused, through the API server, cached and single-flighted."""

    def __init__(
        self,
        api: ReviewAPI,
        target: Target,
        cache_seconds: float,
        *,
        max_entries: int = CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.target = target
        self.cache_seconds = cache_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[float, Outcome]] = OrderedDict()
        self._pending: dict[bytes, asyncio.Future[Outcome]] = {}
        self._warned_at = -float("inf")
        # Reviews made (cache misses), by what they answered: for /metrics.
        self.reviews: dict[str, int] = {}

    def check(self, credentials: Credentials) -> Outcome | None:
        """The answer without asking the API server: a refusal the request alone decides, or a
        cached review; None when a review is needed."""
        token = credentials.bearer
        if token is None:
            return no_bearer(credentials, self.target)
        return self.cached(_sha256(token).digest())

    async def authenticate(self, credentials: Credentials) -> Outcome:
        token = bearer_of(credentials, self.target)
        if isinstance(token, Refused):
            return token
        return await self.review(token)

    @property
    def entries(self) -> int:
        return len(self._cache)

    def cached(self, key: bytes) -> Outcome | None:
        """The unexpired answer for the token whose sha256 is `key`."""
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return entry[1]

    async def review(self, token: bytes) -> Outcome:
        key = hashlib.sha256(token).digest()
        outcome = self.cached(key)
        if outcome is not None:
            return outcome
        refused = unprintable(token)
        if refused is not None:
            return refused
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._review(token, key))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        # Shielded: a client that goes away does not cancel the review the others wait for.
        return await asyncio.shield(pending)

    async def _review(self, token: bytes, key: bytes) -> Outcome:
        try:
            outcome = await self._ask(token)
        except ReviewUnavailable as error:
            self._warn(str(error))
            outcome = REVIEW_UNAVAILABLE
        except Exception as error:  # a bug: still closed, and said once in the log
            log.exception("invoke review failed", extra={"fields": {"error": type(error).__name__}})
            outcome = REVIEW_UNAVAILABLE
        result = "allowed" if not isinstance(outcome, Refused) else outcome.result
        self.reviews[result] = self.reviews.get(result, 0) + 1
        if outcome is not REVIEW_UNAVAILABLE and self.cache_seconds > 0:
            self._remember(key, outcome)
        return outcome

    async def _ask(self, token: bytes) -> Outcome:
        identity = identity_of(await self.api.create(TOKEN_REVIEWS, token_review_body(token)), self.target)
        if isinstance(identity, Refused):
            return identity
        status = await self.api.create(ACCESS_REVIEWS, access_review_body(identity, self.target))
        return access_outcome(status, identity, self.target)

    def _remember(self, key: bytes, outcome: Outcome) -> None:
        self._cache[key] = (self._clock() + self.cache_seconds, outcome)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    def _warn(self, reason: str) -> None:
        now = self._clock()
        if now - self._warned_at >= WARNING_INTERVAL_SECONDS:
            self._warned_at = now
            log.warning(
                "cannot review an invoke token: answering 503",
                extra={
                    "fields": {"error": reason, "endpoint": f"{self.target.namespace}/{self.target.name}"}
                },
            )

    async def aclose(self) -> None:
        await self.api.aclose()
