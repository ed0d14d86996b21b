"""The decision of invoke authentication, without I/O: request headers in, the credential out;
review answers in, `Allowed(caller)` or `Refused(status, message)` out.

Nothing here reads the clock, a file or the network, so every branch is a plain unit test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

# A credential longer than this is refused without a review. Kubernetes ServiceAccount tokens are
# about 1 KB, OIDC tokens with many group claims a few KB; the HTTP edge lets a head of up to
# 64 KiB through, and nothing that long is sent on to the API server.
MAX_CREDENTIAL_BYTES = 16 * 1024
API_GROUP = "berth.dev"
RESOURCE = "endpoints"
VERB = "invoke"
API_KEY_HEADER = b"x-berth-api-key"
# A caller that sent no usable credential, in metrics.
ANONYMOUS = "-"

_REALM = b'Bearer realm="berth"'
CHALLENGE_MISSING = _REALM
CHALLENGE_INVALID_TOKEN = _REALM + b', error="invalid_token"'
CHALLENGE_INVALID_REQUEST = _REALM + b', error="invalid_request"'


@dataclass(frozen=True, slots=True)
class Allowed:
    """May invoke. `caller` names who: a Kubernetes username, or `apikey:NAME`."""

    caller: str


@dataclass(frozen=True, slots=True)
class Refused:
    """May not, and what the client is told. `caller` is known for a 403, not for a 401."""

    status: int  # 401 no or bad credential, 403 denied, 503 the check cannot be made now
    message: str
    challenge: bytes | None = None  # WWW-Authenticate, on a 401
    retry_after: int | None = None  # on a 503
    caller: str = ANONYMOUS

    @property
    def result(self) -> str:
        """The metric's name for this outcome."""
        return _RESULTS.get(self.status, "refused")


Outcome = Allowed | Refused
_RESULTS = {401: "unauthenticated", 403: "denied", 503: "unavailable"}


class Credentials(NamedTuple):
    """What a request carried: the token of `Authorization: Bearer`, the `X-Berth-Api-Key` value.
    A tuple: made on every checked request, and the cheapest object to make."""

    bearer: bytes | None = None
    api_key: bytes | None = None


def malformed(message: str) -> Refused:
    return Refused(401, message, CHALLENGE_INVALID_REQUEST)


_TWO_AUTHORIZATIONS = malformed("more than one Authorization header: send exactly one")
_TWO_API_KEYS = malformed("more than one X-Berth-Api-Key header: send exactly one")
_NOT_BEARER = malformed(
    "the Authorization header must be 'Bearer CREDENTIAL' (only the Bearer scheme is taken)"
)
_TOO_LONG = malformed(f"the credential is longer than {MAX_CREDENTIAL_BYTES} bytes")
_UNPRINTABLE = malformed("the credential must be printable ASCII with no spaces")


def read_credentials(headers: Iterable[tuple[bytes, bytes]]) -> Credentials | Refused:
    """The credential headers of a request (names lower case, as ASGI gives them).

    A header sent twice is refused rather than one of them picked: a proxy and the server could
    pick different ones (the first, the last, or both joined), and the check would then be made
    on a credential other than the one that is acted on. Every checked request runs this: the
    loop compares with literals, and the usual credential is judged by C calls only."""
    authorization: bytes | None = None
    api_key: bytes | None = None
    for name, value in headers:
        if name == b"authorization":
            if authorization is not None:
                return _TWO_AUTHORIZATIONS
            authorization = value
        elif name == b"x-berth-api-key":
            if api_key is not None:
                return _TWO_API_KEYS
            api_key = value
    bearer = None
    if authorization is not None:
        if authorization[:7].lower() == b"bearer ":
            bearer = authorization[7:].strip()
        else:
            scheme, _, rest = authorization.strip().partition(b" ")
            if scheme.lower() != b"bearer":
                return _NOT_BEARER
            bearer = rest.strip()
        if not (0 < len(bearer) <= MAX_CREDENTIAL_BYTES and bearer.isascii()):
            return _unusable(bearer)
    if api_key is not None:
        api_key = api_key.strip()
        if not (0 < len(api_key) <= MAX_CREDENTIAL_BYTES and api_key.isascii()):
            return _unusable(api_key)
    return Credentials(bearer, api_key)


def _unusable(credential: bytes) -> Refused:
    """Why a credential is refused from the request alone. Spaces and control characters are
    looked for only before a review (`unprintable`): a cached answer belongs to a token that
    passed, and such bytes can match no API key (the entries are checked when read)."""
    if len(credential) > MAX_CREDENTIAL_BYTES:
        return _TOO_LONG
    if not credential:
        return _EMPTY
    return _UNPRINTABLE


_EMPTY = malformed("the credential is empty")
_VISIBLE_ASCII = bytes(range(0x21, 0x7F))


def unprintable(credential: bytes) -> Refused | None:
    """A refusal when the credential holds anything but visible ASCII (a space, a control
    character): never a token, and not to be sent on."""
    return _UNPRINTABLE if credential.translate(None, _VISIBLE_ASCII) else None


# --------------------------------------------------------------------------- API keys


API_KEY_NEEDED = "this endpoint needs an API key: send 'Authorization: Bearer KEY' or 'X-Berth-Api-Key: KEY'"


def api_key_of(credentials: Credentials) -> bytes | Refused:
    """The key an APIKey endpoint checks, from either header (not both)."""
    bearer, header = credentials.bearer, credentials.api_key
    if bearer is not None and header is not None:
        return malformed("send the API key in Authorization or in X-Berth-Api-Key, not in both")
    key = bearer if bearer is not None else header
    if key is None:
        return Refused(401, API_KEY_NEEDED, CHALLENGE_MISSING)
    return key


_WRONG_KEY = Refused(
    401, "the API key is not one of this endpoint's keys; " + API_KEY_NEEDED, CHALLENGE_INVALID_TOKEN
)


def api_key_outcome(name: str | None) -> Outcome:
    """The answer once the key was compared with the endpoint's keys (`name`: the one it matched)."""
    if name is None:
        return _WRONG_KEY
    return Allowed(f"apikey:{name}")


# --------------------------------------------------------------------------- Kubernetes RBAC


@dataclass(frozen=True)
class Target:
    """The Endpoint that callers must be allowed to invoke."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> Target:
        """NAMESPACE/NAME; ValueError with the reason otherwise."""
        namespace, slash, name = text.strip().partition("/")
        if not slash or not namespace or not name or "/" in name:
            raise ValueError(f"--auth-endpoint must be NAMESPACE/NAME, not {text!r}")
        return cls(namespace, name)

    def describe(self) -> str:
        return f"endpoints/{self.name} in namespace {self.namespace} (verb {VERB}, group {API_GROUP})"

    def needed(self) -> str:
        return f"this endpoint needs a bearer token of a user allowed to invoke {self.describe()}"

    def resource_attributes(self) -> dict[str, str]:
        return {
            "namespace": self.namespace,
            "verb": VERB,
            "group": API_GROUP,
            "resource": RESOURCE,
            "name": self.name,
        }


@dataclass(frozen=True)
class Identity:
    """Who a TokenReview says the token belongs to: what the SubjectAccessReview asks about."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def bearer_of(credentials: Credentials, target: Target) -> bytes | Refused:
    """The token a KubernetesRBAC endpoint reviews."""
    if credentials.bearer is not None:
        return credentials.bearer
    return no_bearer(credentials, target)


def no_bearer(credentials: Credentials, target: Target) -> Refused:
    message = target.needed() + " (send 'Authorization: Bearer TOKEN')"
    if credentials.api_key is not None:
        message += "; it takes no API keys"
    return Refused(401, message, CHALLENGE_MISSING)


def token_review_body(token: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token.decode("ascii")},
    }


def identity_of(status: Mapping[str, Any], target: Target) -> Identity | Refused:
    """A TokenReview's status: who the token is, or a 401. The review's own error text (which may
    say why: expired, wrong audience) goes to no client: it is the API server's business."""
    user = status.get("user") if status.get("authenticated") is True else None
    if not isinstance(user, Mapping) or not user.get("username"):
        return Refused(
            401,
            "the bearer token was not accepted by the Kubernetes API server (expired, revoked, or not "
            "a token of this cluster); " + target.needed(),
            CHALLENGE_INVALID_TOKEN,
        )
    raw_extra = user.get("extra")
    extra: Mapping[str, Any] = raw_extra if isinstance(raw_extra, Mapping) else {}
    return Identity(
        username=str(user["username"]),
        uid=str(user.get("uid") or ""),
        groups=tuple(str(group) for group in user.get("groups") or ()),
        extra={str(key): tuple(str(v) for v in values or ()) for key, values in extra.items()},
    )


def access_review_body(identity: Identity, target: Target) -> dict[str, Any]:
    spec: dict[str, Any] = {"resourceAttributes": target.resource_attributes(), "user": identity.username}
    if identity.uid:
        spec["uid"] = identity.uid
    if identity.groups:
        spec["groups"] = list(identity.groups)
    if identity.extra:
        spec["extra"] = {key: list(values) for key, values in identity.extra.items()}
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


def access_outcome(status: Mapping[str, Any], identity: Identity, target: Target) -> Outcome:
    """A SubjectAccessReview's status: allowed, or a 403 that says what to grant."""
    if status.get("allowed") is True and status.get("denied") is not True:
        return Allowed(identity.username)
    return Refused(
        403,
        f"user {identity.username!r} may not invoke {target.describe()}: grant it with a Role "
        f"(apiGroups [{API_GROUP}], resources [{RESOURCE}], resourceNames [{target.name}], "
        f"verbs [{VERB}]) and a RoleBinding",
        caller=identity.username,
    )


REVIEW_UNAVAILABLE = Refused(
    503,
    "cannot check the credential now: the Kubernetes API server did not answer the review; retry",
    retry_after=1,
)
