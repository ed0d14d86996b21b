"""Invoke authentication of `berth serve` (`--auth-mode`), checked in the runtime itself.

- `None`: every request is served (said once in the log at start).
- `KubernetesRBAC`: `Authorization: Bearer TOKEN`, a TokenReview and a SubjectAccessReview for
  verb `invoke` on `endpoints/NAME` in group `berth.dev` in the Endpoint's namespace (kube.py).
- `APIKey`: `Authorization: Bearer KEY` or `X-Berth-Api-Key: KEY`, against the hashed keys of a
  mounted Secret (apikeys.py).

decision.py decides without I/O; guard.py is the ASGI wrapper in front of the serving app. No
credential is ever logged or kept: API keys as their sha256, review answers under the sha256 of
the token.
"""

from __future__ import annotations

import os

from berth_serving.auth.apikeys import KeyStore
from berth_serving.auth.decision import Credentials, Outcome, Refused, Target, api_key_of, api_key_outcome
from berth_serving.auth.guard import SCOPE_CALLER, ASGIApp, Authenticator, AuthGuard, is_open
from berth_serving.auth.kube import HttpReviewAPI, KubeReviewer, in_cluster_url
from berth_serving.config import AUTH_API_KEY, AUTH_KUBERNETES_RBAC, AUTH_MODES, AUTH_NONE, ServeConfig

__all__ = [
    "SCOPE_CALLER",
    "AuthConfigError",
    "AuthGuard",
    "auth_problem",
    "build_guard",
    "describe_off",
    "is_open",
]


class AuthConfigError(ValueError):
    """The auth flags cannot work; the message says which and why."""


class ApiKeyAuthenticator:
    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self._outcomes: dict[str | None, Outcome] = {}  # by matched key name: one object each

    def check(self, credentials: Credentials) -> Outcome:
        key = api_key_of(credentials)
        if isinstance(key, Refused):
            return key
        name = self.store.keys.match(key)
        outcome = self._outcomes.get(name)
        if outcome is None:
            outcome = self._outcomes[name] = api_key_outcome(name)
        return outcome

    async def authenticate(self, credentials: Credentials) -> Outcome:
        return self.check(credentials)

    def describe(self) -> str:
        return f"APIKey: {len(self.store.keys.keys)} keys from {self.store.directory}"

    def start(self) -> None:
        self.store.start()

    async def aclose(self) -> None:
        await self.store.aclose()


class KubeAuthenticator:
    def __init__(self, reviewer: KubeReviewer, url: str) -> None:
        self.reviewer = reviewer
        self.url = url
        self.reviews = reviewer.reviews
        self.check = reviewer.check
        self.authenticate = reviewer.authenticate

    def describe(self) -> str:
        return f"KubernetesRBAC: {self.reviewer.target.describe()}, reviewed by {self.url}"

    def start(self) -> None:
        pass

    async def aclose(self) -> None:
        await self.reviewer.aclose()


def auth_problem(config: ServeConfig) -> str | None:
    """Why the auth flags of `config` cannot work, or None. Checks the flags only, not files."""
    mode = config.auth_mode
    if mode not in AUTH_MODES:
        return f"--auth-mode must be one of {', '.join(AUTH_MODES)}, not {mode!r}"
    if config.auth_cache_seconds < 0:
        return "--auth-cache-seconds must be 0 or more"
    if mode == AUTH_KUBERNETES_RBAC:
        if not config.auth_endpoint:
            return "--auth-mode KubernetesRBAC needs --auth-endpoint NAMESPACE/NAME (the Endpoint callers must be allowed to invoke)"
        try:
            Target.parse(config.auth_endpoint)
        except ValueError as error:
            return str(error)
        if not (config.kube_api_url or in_cluster_url()):
            return (
                "--auth-mode KubernetesRBAC needs --kube-api-url outside a pod "
                "(KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set)"
            )
        if not config.kube_token_file:
            return "--auth-mode KubernetesRBAC needs --kube-token-file"
    if mode == AUTH_API_KEY and not config.api_keys_dir:
        return "--auth-mode APIKey needs --api-keys-dir DIR (a mounted Secret, one file per key)"
    return None


def describe_off() -> str:
    return "invoke auth is off (--auth-mode None): every request is served"


def build_guard(
    app: ASGIApp, config: ServeConfig, answer_headers: tuple[tuple[bytes, bytes], ...] = ()
) -> AuthGuard | None:
    """The guard in front of `app` for `config`, None when auth is off. AuthConfigError when the
    flags or the files they name cannot work (read here, once, at start)."""
    problem = auth_problem(config)
    if problem is not None:
        raise AuthConfigError(problem)
    authenticator: Authenticator
    if config.auth_mode == AUTH_NONE:
        return None
    if config.auth_mode == AUTH_API_KEY:
        store = KeyStore(config.api_keys_dir)
        try:
            store.load()
        except OSError as error:
            raise AuthConfigError(str(error)) from None
        authenticator = ApiKeyAuthenticator(store)
    else:
        url = config.kube_api_url or in_cluster_url() or ""
        if not os.access(config.kube_token_file, os.R_OK):
            raise AuthConfigError(
                f"--kube-token-file {config.kube_token_file} cannot be read: the pod needs its "
                "ServiceAccount token to make TokenReviews and SubjectAccessReviews"
            )
        if url.startswith("https:") and config.kube_ca_file and not os.path.isfile(config.kube_ca_file):
            raise AuthConfigError(f"--kube-ca-file {config.kube_ca_file} is not a file")
        api = HttpReviewAPI(url, config.kube_token_file, config.kube_ca_file)
        reviewer = KubeReviewer(api, Target.parse(config.auth_endpoint), config.auth_cache_seconds)
        authenticator = KubeAuthenticator(reviewer, url)
    return AuthGuard(
        app,
        authenticator,
        variant=config.variant or "default",
        answer_headers=answer_headers,
        trust_loopback=config.auth_trust_loopback,
    )
