"""Invoke auth without a server: credentials from headers, review answers to decisions, the
review cache and its single flight (over a stand-in for the API server), the ASGI guard over a
stand-in app. The real API server's answers are in tests/cluster/test_invoke_auth.py."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from berth_serving.auth import AuthGuard, is_open
from berth_serving.auth.decision import (
    MAX_CREDENTIAL_BYTES,
    REVIEW_UNAVAILABLE,
    Allowed,
    Credentials,
    Identity,
    Refused,
    Target,
    access_outcome,
    access_review_body,
    api_key_of,
    bearer_of,
    identity_of,
    read_credentials,
    token_review_body,
)
from berth_serving.auth.guard import MAX_CALLER_LABELS, OTHER_CALLERS, SCOPE_CALLER, CallerCounts
from berth_serving.auth.kube import ACCESS_REVIEWS, TOKEN_REVIEWS, KubeReviewer, ReviewUnavailable

TARGET = Target("fraud-team", "fraud")


# --------------------------------------------------------------------------- credentials


def test_no_credential_headers_is_empty_credentials() -> None:
    assert read_credentials([(b"content-type", b"application/json")]) == Credentials()


def test_bearer_and_api_key_headers_are_read() -> None:
    found = read_credentials([(b"authorization", b"Bearer abc.def-ghi"), (b"x-berth-api-key", b"k1")])
    assert found == Credentials(b"abc.def-ghi", b"k1")
    assert read_credentials([(b"authorization", b"bearer   tok  ")]) == Credentials(b"tok", None)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        (
            [(b"authorization", b"Bearer one"), (b"authorization", b"Bearer two")],
            "more than one Authorization",
        ),
        ([(b"x-berth-api-key", b"one"), (b"x-berth-api-key", b"one")], "more than one X-Berth-Api-Key"),
        ([(b"authorization", b"Basic dXNlcjpwYXNz")], "Bearer"),
        ([(b"authorization", b"Bearer")], "empty"),
        ([(b"authorization", b"Bearer caf\xc3\xa9")], "printable ASCII"),
        ([(b"x-berth-api-key", b"k\xffey")], "printable ASCII"),
        ([(b"authorization", b"Bearer " + b"a" * (MAX_CREDENTIAL_BYTES + 1))], "longer than"),
    ],
)
def test_smuggled_or_malformed_credentials_are_401(headers: list[tuple[bytes, bytes]], says: str) -> None:
    refused = read_credentials(headers)
    assert isinstance(refused, Refused)
    assert refused.status == 401 and says in refused.message
    assert refused.challenge is not None and refused.challenge.startswith(b"Bearer")


def test_the_first_of_two_authorization_headers_is_not_taken_even_when_it_is_valid() -> None:
    # A proxy may check the last one while the server acts on the first (or the reverse).
    assert isinstance(
        read_credentials([(b"authorization", b"Bearer good"), (b"authorization", b"")]), Refused
    )


def test_api_key_from_either_header_not_both() -> None:
    assert api_key_of(Credentials(b"k", None)) == b"k"
    assert api_key_of(Credentials(None, b"k")) == b"k"
    both = api_key_of(Credentials(b"k", b"k"))
    assert isinstance(both, Refused) and both.status == 401 and "not in both" in both.message
    missing = api_key_of(Credentials())
    assert isinstance(missing, Refused) and missing.status == 401
    assert "X-Berth-Api-Key" in missing.message and missing.challenge == b'Bearer realm="berth"'


def test_rbac_without_a_bearer_says_what_is_needed() -> None:
    missing = bearer_of(Credentials(), TARGET)
    assert isinstance(missing, Refused) and missing.status == 401
    assert missing.message.startswith(
        "this endpoint needs a bearer token of a user allowed to invoke endpoints/fraud in namespace "
        "fraud-team (verb invoke, group berth.dev)"
    )
    with_key = bearer_of(Credentials(None, b"some-key"), TARGET)
    assert isinstance(with_key, Refused) and "takes no API keys" in with_key.message


def test_target_parse() -> None:
    assert Target.parse("ns/name") == Target("ns", "name")
    for bad in ("name", "/name", "ns/", "a/b/c", ""):
        with pytest.raises(ValueError, match="NAMESPACE/NAME"):
            Target.parse(bad)


# --------------------------------------------------------------------------- reviews


def test_token_review_and_access_review_bodies() -> None:
    assert token_review_body(b"tok") == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": "tok"},
    }
    identity = Identity("system:serviceaccount:a:b", "u-1", ("system:serviceaccounts",), {"k": ("v",)})
    assert access_review_body(identity, TARGET) == {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "namespace": "fraud-team",
                "verb": "invoke",
                "group": "berth.dev",
                "resource": "endpoints",
                "name": "fraud",
            },
            "user": "system:serviceaccount:a:b",
            "uid": "u-1",
            "groups": ["system:serviceaccounts"],
            "extra": {"k": ["v"]},
        },
    }


@pytest.mark.parametrize(
    "status",
    [
        {"authenticated": False, "error": "token has expired"},
        {"authenticated": True},
        {"authenticated": True, "user": {"username": ""}},
        {"authenticated": "true", "user": {"username": "x"}},
        {},
    ],
)
def test_a_token_review_that_names_nobody_is_401_without_its_error_text(status: dict[str, Any]) -> None:
    refused = identity_of(status, TARGET)
    assert isinstance(refused, Refused) and refused.status == 401
    assert "token has expired" not in refused.message  # the API server's words stay in the pod
    assert refused.challenge is not None and b"invalid_token" in refused.challenge


def test_a_token_review_names_the_user() -> None:
    status = {
        "authenticated": True,
        "user": {"username": "alice", "uid": "7", "groups": ["devs"], "extra": {"scopes": ["a", "b"]}},
    }
    assert identity_of(status, TARGET) == Identity("alice", "7", ("devs",), {"scopes": ("a", "b")})


def test_access_review_allowed_and_denied() -> None:
    alice = Identity("alice")
    assert access_outcome({"allowed": True}, alice, TARGET) == Allowed("alice")
    for status in ({"allowed": False}, {"allowed": True, "denied": True}, {}, {"allowed": "yes"}):
        denied = access_outcome(status, alice, TARGET)
        assert isinstance(denied, Refused) and denied.status == 403 and denied.caller == "alice"
        assert "resourceNames [fraud]" in denied.message and "verbs [invoke]" in denied.message


# --------------------------------------------------------------------------- the reviewer


class StandInAPI:
    """Answers reviews from a table of token -> user and user -> allowed; counts the calls.
    `gate`, when set, holds every call until it is set (to make concurrent misses overlap)."""

    def __init__(self, users: Mapping[str, str], allowed: set[str]) -> None:
        self.users = dict(users)
        self.allowed = set(allowed)
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.down = False
        self.closed = False

    async def create(self, path: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        self.calls.append(path)
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise ReviewUnavailable("connection refused")
        if path == TOKEN_REVIEWS:
            user = self.users.get(body["spec"]["token"])
            return {"authenticated": True, "user": {"username": user}} if user else {"authenticated": False}
        assert path == ACCESS_REVIEWS
        return {"allowed": body["spec"]["user"] in self.allowed}

    async def aclose(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reviewer(api: StandInAPI, clock: Clock, seconds: float = 10.0, entries: int = 100) -> KubeReviewer:
    return KubeReviewer(api, TARGET, seconds, max_entries=entries, clock=clock)


def test_answers_are_cached_positive_and_negative_until_the_ttl() -> None:
    api = StandInAPI({"t-alice": "alice", "t-bob": "bob"}, {"alice"})
    clock = Clock()
    kube = reviewer(api, clock)

    async def scenario() -> None:
        assert await kube.review(b"t-alice") == Allowed("alice")
        assert (await kube.review(b"t-bob")).status == 403
        assert (await kube.review(b"t-nobody")).status == 401
        calls = len(api.calls)
        assert calls == 5  # two reviews each for alice and bob, one for the bad token
        clock.now += 9.9
        for token in (b"t-alice", b"t-bob", b"t-nobody"):
            await kube.review(token)
        assert len(api.calls) == calls  # all three from the cache
        api.allowed = {"bob"}  # the bindings change
        clock.now += 0.2  # past the TTL
        assert (await kube.review(b"t-alice")).status == 403
        assert await kube.review(b"t-bob") == Allowed("bob")

    asyncio.run(scenario())
    assert kube.reviews == {"allowed": 2, "denied": 2, "unauthenticated": 1}


def test_the_cache_keeps_hashes_not_tokens_and_is_bounded_lru() -> None:
    api = StandInAPI({f"t{i}": f"u{i}" for i in range(10)}, {f"u{i}" for i in range(10)})
    kube = reviewer(api, Clock(), entries=3)

    async def scenario() -> None:
        for token in (b"t0", b"t1", b"t2"):
            await kube.review(token)
        await kube.review(b"t0")  # t0 used again: t1 is now the least recently used
        await kube.review(b"t3")
        calls = len(api.calls)
        await kube.review(b"t0")
        assert len(api.calls) == calls  # kept
        await kube.review(b"t1")
        assert len(api.calls) == calls + 2  # evicted, reviewed again

    asyncio.run(scenario())
    assert kube.entries == 3
    assert kube.cached(hashlib.sha256(b"t1").digest()) == Allowed("u1")  # kept under the token's hash
    assert kube.cached(b"t1") is None


def test_concurrent_misses_for_one_token_make_one_review() -> None:
    api = StandInAPI({"t": "alice"}, {"alice"})
    kube = reviewer(api, Clock())

    async def scenario() -> list[object]:
        api.gate = asyncio.Event()
        waiting = [asyncio.ensure_future(kube.review(b"t")) for _ in range(50)]
        other = asyncio.ensure_future(kube.review(b"other"))
        await asyncio.sleep(0)
        api.gate.set()
        return [*await asyncio.gather(*waiting), await other]

    answers = asyncio.run(scenario())
    assert answers[:50] == [Allowed("alice")] * 50
    assert api.calls.count(TOKEN_REVIEWS) == 2  # one for "t", one for "other"
    assert api.calls.count(ACCESS_REVIEWS) == 1


def test_a_waiter_that_goes_away_does_not_cancel_the_shared_review() -> None:
    api = StandInAPI({"t": "alice"}, {"alice"})
    kube = reviewer(api, Clock())

    async def scenario() -> object:
        api.gate = asyncio.Event()
        first = asyncio.ensure_future(kube.review(b"t"))
        second = asyncio.ensure_future(kube.review(b"t"))
        await asyncio.sleep(0)
        first.cancel()
        api.gate.set()
        return await second

    assert asyncio.run(scenario()) == Allowed("alice")


def test_a_token_with_spaces_or_control_characters_is_401_and_never_sent() -> None:
    api = StandInAPI({"a b": "alice"}, {"alice"})
    kube = reviewer(api, Clock())

    async def scenario() -> list[object]:
        answers = []
        for token in (b"a b", b"tok\x01en", b"tok\x7f"):
            credentials = read_credentials([(b"authorization", b"Bearer " + token)])
            assert isinstance(credentials, Credentials)
            answers.append(await kube.authenticate(credentials))
        return answers

    for answer in asyncio.run(scenario()):
        assert isinstance(answer, Refused) and answer.status == 401
        assert "printable ASCII with no spaces" in answer.message
    assert api.calls == []


def test_api_server_down_is_503_and_not_cached() -> None:
    api = StandInAPI({"t": "alice"}, {"alice"})
    api.down = True
    kube = reviewer(api, Clock())

    async def scenario() -> None:
        assert await kube.review(b"t") is REVIEW_UNAVAILABLE
        assert REVIEW_UNAVAILABLE.status == 503 and REVIEW_UNAVAILABLE.retry_after == 1
        api.down = False
        assert await kube.review(b"t") == Allowed("alice")  # asked again at once

    asyncio.run(scenario())


def test_a_bug_in_the_review_still_fails_closed() -> None:
    class Broken(StandInAPI):
        async def create(self, path: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
            raise KeyError("surprise")

    kube = reviewer(Broken({}, set()), Clock())
    assert asyncio.run(kube.review(b"t")) is REVIEW_UNAVAILABLE


def test_zero_cache_seconds_reviews_every_time() -> None:
    api = StandInAPI({"t": "alice"}, {"alice"})
    kube = reviewer(api, Clock(), seconds=0)

    async def scenario() -> None:
        await kube.review(b"t")
        await kube.review(b"t")

    asyncio.run(scenario())
    assert api.calls.count(TOKEN_REVIEWS) == 2


# --------------------------------------------------------------------------- which paths


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/ping"),
        ("GET", "/metrics"),
        ("GET", "/v2"),
        ("GET", "/v2/health/live"),
        ("GET", "/v2/health/ready"),
        ("GET", "/v2/models/iris"),
        ("GET", "/v2/models/iris/ready"),
        ("HEAD", "/ping"),
    ],
)
def test_probes_metrics_and_metadata_are_open(method: str, path: str) -> None:
    assert is_open(method, path)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/invocations"),
        ("POST", "/v2/models/iris/infer"),
        ("POST", "/v2/models/iris/versions/1/infer"),
        ("POST", "/async-invocations"),
        ("GET", "/async-invocations/abc"),
        ("POST", "/v2/repository/models/iris/load"),
        ("POST", "/ping"),
        ("PUT", "/v2/models/iris"),
        ("GET", "/invocations"),
        ("GET", "/models"),
        ("OPTIONS", "/invocations"),
        ("GET", "/pingx"),
        ("GET", "/metrics/../invocations"),
    ],
)
def test_everything_else_is_checked(method: str, path: str) -> None:
    assert not is_open(method, path)


def test_caller_labels_are_bounded() -> None:
    counts = CallerCounts("blue")
    for index in range(MAX_CALLER_LABELS + 50):
        counts.count(f"user-{index}", "allowed")
    counts.count("user-0", "denied")
    callers = {caller for caller, _ in counts.counts}
    assert len(callers) == MAX_CALLER_LABELS + 1
    assert counts.counts[(OTHER_CALLERS, "allowed")] == 50
    assert counts.counts[("user-0", "denied")] == 1


# --------------------------------------------------------------------------- the guard


class Recorder:
    """A stand-in serving app: answers 200 and keeps the scopes it was called with."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(dict(scope))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


class KeyTable:
    """An authenticator over a fixed table (the guard does not care which mode is behind it)."""

    reviews = {"allowed": 0}

    def __init__(self, outcomes: Mapping[bytes | None, Any]) -> None:
        self.outcomes = outcomes

    def check(self, credentials: Credentials) -> Any:
        return None  # always the slow path here: the guard must await it

    async def authenticate(self, credentials: Credentials) -> Any:
        return self.outcomes[credentials.bearer]

    def describe(self) -> str:
        return "table"

    def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def call(
    guard: AuthGuard, method: str, path: str, headers: list[tuple[bytes, bytes]]
) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers}

    async def asgi_server() -> None:  # what uvicorn does with an ASGI 3 app
        await guard(scope, receive, send)

    asyncio.run(asgi_server())
    start, body = sent
    return start["status"], dict(start["headers"]), body["body"]


def guard_for(outcomes: Mapping[bytes | None, Any]) -> tuple[AuthGuard, Recorder]:
    app = Recorder()
    headers = ((b"x-berth-variant", b"blue"),)
    return AuthGuard(app, KeyTable(outcomes), variant="blue", answer_headers=headers), app


def test_allowed_requests_reach_the_app_with_the_caller_in_the_scope() -> None:
    guard, app = guard_for({b"good": Allowed("apikey:ci")})
    status, _, body = call(guard, "POST", "/invocations", [(b"authorization", b"Bearer good")])
    assert (status, body) == (200, b"ok")
    assert app.scopes[0][SCOPE_CALLER] == "apikey:ci"
    assert guard.callers.counts == {("apikey:ci", "allowed"): 1}


def test_refusals_never_reach_the_app_and_have_the_paths_error_shape() -> None:
    denied = Refused(403, "no invoke for you", caller="mallory")
    guard, app = guard_for({b"bad": denied, None: Refused(401, "send a key", b'Bearer realm="berth"')})
    status, headers, body = call(guard, "POST", "/invocations", [(b"authorization", b"Bearer bad")])
    assert status == 403 and orjson.loads(body) == {"error": {"code": 403, "message": "no invoke for you"}}
    assert headers[b"x-berth-variant"] == b"blue" and headers[b"content-type"] == b"application/json"
    assert b"www-authenticate" not in headers
    status, headers, body = call(guard, "POST", "/v2/models/m/infer", [])
    assert status == 401 and orjson.loads(body) == {"error": "send a key"}
    assert headers[b"www-authenticate"] == b'Bearer realm="berth"'
    status, headers, _ = call(
        guard, "POST", "/invocations", [(b"authorization", b"Bearer x"), (b"authorization", b"Bearer good")]
    )
    assert status == 401 and b"invalid_request" in headers[b"www-authenticate"]
    assert app.scopes == []
    assert guard.callers.counts == {("mallory", "denied"): 1, ("-", "unauthenticated"): 2}


def test_503_carries_retry_after() -> None:
    guard, _ = guard_for({b"t": REVIEW_UNAVAILABLE})
    status, headers, _ = call(guard, "POST", "/invocations", [(b"authorization", b"Bearer t")])
    assert status == 503 and headers[b"retry-after"] == b"1"


def test_open_paths_pass_without_a_credential_and_without_a_caller() -> None:
    guard, app = guard_for({})
    for path in ("/ping", "/metrics", "/v2/health/ready", "/v2/models/m"):
        assert call(guard, "GET", path, [])[0] == 200
    assert [scope["path"] for scope in app.scopes] == [
        "/ping",
        "/metrics",
        "/v2/health/ready",
        "/v2/models/m",
    ]
    assert all(SCOPE_CALLER not in scope for scope in app.scopes)
    assert guard.callers.counts == {}
