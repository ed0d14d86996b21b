"""`berth invoke`: send one request to an endpoint and show which variant answered.

Credentials (docs/auth.md): `--token` / BERTH_TOKEN (a bearer token: a KubernetesRBAC endpoint
reviews it), `--api-key` / BERTH_API_KEY (sent as X-Berth-Api-Key to an APIKey endpoint), else
the bearer token of the current kubeconfig user when it has one (`token` or `tokenFile`).
Kubeconfig users that authenticate otherwise (exec plugins, auth providers, client certificates,
passwords) are not used: nothing is run, and a note says so. No credential is ever printed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from .planner.serverless import COLD_START_HEADER

DEFAULT_URL = "http://127.0.0.1:8080"
VARIANT_HEADER = "X-Berth-Variant"
TARGET_HEADER = "X-Berth-Target-Variant"
TARGET_MODEL_HEADER = "X-Berth-Target-Model"
MODEL_CACHE_HEADER = "X-Berth-Model-Cache"
API_KEY_HEADER = "X-Berth-Api-Key"
TOKEN_ENV = "BERTH_TOKEN"
API_KEY_ENV = "BERTH_API_KEY"


def read_data(data: str) -> bytes:
    """`@FILE` reads a file (`@-` standard input); anything else is the body itself."""
    if data == "@-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        path = Path(data[1:])
        try:
            return path.read_bytes()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint="--data") from exc
    return data.encode()


def invocation_url(base: str, namespace: str, name: str, path: str = "invocations") -> str:
    return f"{base.rstrip('/')}/endpoints/{namespace}/{name}/{path}"


def error_message(body: bytes) -> str:
    """The `error.message` of a Berth error answer, else the body as text."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        message = str(error.get("message", ""))
        known = error.get("knownEndpoints")
        if known:
            message += "; known endpoints: " + ", ".join(known)
        return message
    return json.dumps(payload)


@dataclass
class Credential:
    """The headers that carry the credential, and where it came from (for messages)."""

    headers: dict[str, str] = field(default_factory=dict)
    source: str = ""  # "" when nothing is sent
    note: str = ""  # why a kubeconfig's credentials were not used


def kubeconfig_paths(env: Mapping[str, str]) -> list[Path]:
    listed = env.get("KUBECONFIG")
    if listed:
        return [Path(part).expanduser() for part in listed.split(os.pathsep) if part]
    home = env.get("HOME")
    return [Path(home) / ".kube" / "config"] if home else []


def _documents(paths: list[Path]) -> list[dict[str, Any]]:
    found = []
    for path in paths:
        try:
            document = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(document, dict):
            found.append(document)
    return found


def _named(documents: list[dict[str, Any]], section: str, name: str) -> dict[str, Any] | None:
    """The first entry `name` of `section` across the files, as kubectl merges them."""
    for document in documents:
        for entry in document.get(section) or []:
            if (
                isinstance(entry, dict)
                and entry.get("name") == name
                and isinstance(entry.get(section[:-1]), dict)
            ):
                return dict(entry[section[:-1]])
    return None


def kubeconfig_token(env: Mapping[str, str]) -> tuple[str | None, str]:
    """The current kubeconfig user's bearer token and which user it is, or None and why not."""
    documents = _documents(kubeconfig_paths(env))
    current = next((str(d["current-context"]) for d in documents if d.get("current-context")), "")
    if not current:
        return None, ""
    context = _named(documents, "contexts", current) or {}
    user_name = str(context.get("user") or "")
    user = _named(documents, "users", user_name) if user_name else None
    if user is None:
        return None, ""
    if user.get("token"):
        return str(user["token"]).strip(), f"the token of kubeconfig user {user_name!r}"
    if user.get("tokenFile"):
        try:
            return Path(str(user["tokenFile"])).expanduser().read_text().strip(), (
                f"the token file of kubeconfig user {user_name!r}"
            )
        except OSError as error:
            return None, f"kubeconfig user {user_name!r}: cannot read its tokenFile ({error.strerror})"
    if user.get("exec") or user.get("auth-provider"):
        how = "an exec plugin" if user.get("exec") else "an auth provider"
        return None, (
            f"kubeconfig user {user_name!r} authenticates with {how}, which berth invoke does not run"
        )
    if user.get("client-certificate") or user.get("client-certificate-data"):
        return None, (
            f"kubeconfig user {user_name!r} authenticates with a client certificate, which cannot "
            "be passed on through a gateway"
        )
    return None, f"kubeconfig user {user_name!r} has no bearer token"


def safe_for_kubeconfig_token(url: str) -> bool:
    """Whether a kubeconfig token (a credential for the whole cluster, perhaps) may go to `url`:
    over TLS, or to this machine. Plain HTTP to anywhere else would show it to the network."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "https":
        return True
    host = parsed.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def credential_for(
    token: str | None,
    api_key: str | None,
    url: str,
    env: Mapping[str, str],
    token_from: str = "--token",
    api_key_from: str = "--api-key",
) -> Credential:
    """The credential to send: the token or API key given, else the kubeconfig's bearer token."""
    if token and api_key:
        raise click.UsageError("give --token or --api-key, not both")
    if token:
        return Credential({"Authorization": f"Bearer {token.strip()}"}, f"the token of {token_from}")
    if api_key:
        return Credential({API_KEY_HEADER: api_key.strip()}, f"the API key of {api_key_from}")
    found, said = kubeconfig_token(env)
    if found is None:
        return Credential(note=said)
    if not safe_for_kubeconfig_token(url):
        host = urllib.parse.urlsplit(url).hostname
        return Credential(note=f"{said} is not sent over plain HTTP to {host}; pass --token to send it")
    return Credential({"Authorization": f"Bearer {found}"}, said)


def credential_hint(credential: Credential, status: int) -> str:
    """What to say after a 401 or 403, about the credential sent (never its value)."""
    if status == 401 and not credential.source:
        hint = (
            "this endpoint needs a credential: --token TOKEN (for example "
            '--token "$(kubectl create token SERVICEACCOUNT -n NAMESPACE)") or --api-key KEY'
        )
        return hint + (f" ({credential.note})" if credential.note else "")
    return f"sent: {credential.source}" if credential.source else ""


def _source(ctx: click.Context, parameter: str, variable: str) -> str:
    if ctx.get_parameter_source(parameter) == click.core.ParameterSource.ENVIRONMENT:
        return variable
    return "--" + parameter.replace("_", "-")


@click.command("invoke")
@click.argument("name")
@click.option("-d", "--data", default=None, help="Request body: JSON text, @FILE, or @- for standard input.")
@click.option(
    "--content-type", default="application/json", show_default=True, help="Content-Type of the body."
)
@click.option("--accept", default=None, help="Accept header (response type: application/json, text/csv...).")
@click.option("--variant", default=None, help="Send to this production variant (X-Berth-Target-Variant).")
@click.option(
    "--target-model",
    default=None,
    help="A multi-model endpoint: the model to run, its path under the prefix (X-Berth-Target-Model).",
)
@click.option(
    "--url",
    "base_url",
    envvar="BERTH_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="Base URL of the gateway or of `berth up` (env BERTH_URL).",
)
@click.option("-n", "--namespace", default="default", show_default=True, help="Namespace of the Endpoint.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the answer.")
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    default=None,
    help='Bearer token for a KubernetesRBAC endpoint, e.g. "$(kubectl create token NAME)" (env '
    "BERTH_TOKEN). Default: the current kubeconfig user's token, if it has a plain one.",
)
@click.option(
    "--api-key",
    envvar=API_KEY_ENV,
    default=None,
    help="Key for an APIKey endpoint (X-Berth-Api-Key; env BERTH_API_KEY).",
)
@click.option(
    "--endpoint-url",
    default=None,
    help="The endpoint's own base URL instead of --url's /endpoints/NAMESPACE/NAME/ (a port-forward "
    "to its Service, or to its async front door).",
)
@click.option(
    "--async", "asynchronous", is_flag=True, help="Queue an async invocation (POST .../async-invocations)."
)
@click.option(
    "--input-location",
    default=None,
    help="--async: the input in storage (s3:// or file://) instead of --data.",
)
@click.option(
    "--inference-id", default=None, help="--async: X-Berth-Inference-Id (the same id is queued once)."
)
@click.option(
    "--request-ttl", type=click.IntRange(1, 21600), default=None, help="--async: seconds it may wait queued."
)
@click.option(
    "--invocation-timeout", type=click.IntRange(1, 3600), default=None, help="--async: seconds it may run."
)
@click.option("--wait", is_flag=True, help="--async: poll until it is answered and print the answer.")
@click.option(
    "--wait-timeout", default=900.0, show_default=True, help="--wait: give up after this many seconds."
)
@click.pass_context
def invoke_command(
    ctx: click.Context,
    name: str,
    data: str,
    content_type: str,
    accept: str | None,
    variant: str | None,
    target_model: str | None,
    base_url: str,
    namespace: str,
    timeout: float,
    token: str | None,
    api_key: str | None,
    endpoint_url: str | None,
    asynchronous: bool,
    input_location: str | None,
    inference_id: str | None,
    request_ttl: int | None,
    invocation_timeout: int | None,
    wait: bool,
    wait_timeout: float,
) -> None:
    """Send a request to endpoint NAME and print the answer and the variant that gave it.

    Example: berth invoke quickstart --data '{"instances": [[0.1, 0.2, 0.3, 0.4]]}'

    Async: berth invoke NAME --async --data @big.csv --content-type text/csv --wait
    """
    path = "async-invocations" if asynchronous else "invocations"
    url = (
        f"{endpoint_url.rstrip('/')}/{path}"
        if endpoint_url
        else invocation_url(base_url, namespace, name, path)
    )
    if not asynchronous and (input_location or inference_id or request_ttl or invocation_timeout or wait):
        raise click.UsageError(
            "--input-location, --inference-id, --request-ttl, --invocation-timeout and --wait need --async"
        )
    if (data is None) == (input_location is None):
        raise click.UsageError("give --data" + (" or --input-location (not both)" if asynchronous else ""))
    credential = credential_for(
        token,
        api_key,
        url,
        os.environ,
        _source(ctx, "token", TOKEN_ENV),
        _source(ctx, "api_key", API_KEY_ENV),
    )
    headers = {"Content-Type": content_type, **credential.headers}
    if accept:
        headers["Accept"] = accept
    if variant:
        headers[TARGET_HEADER] = variant
    if target_model:
        headers[TARGET_MODEL_HEADER] = target_model
    if asynchronous:
        invocation = AsyncInvocation(
            url=url,
            body=read_data(data) if data is not None else None,
            headers=headers,
            input_location=input_location,
            inference_id=inference_id,
            ttl_seconds=request_ttl,
            timeout_seconds=invocation_timeout,
            wait=wait,
            wait_timeout=wait_timeout,
            request_timeout=timeout,
        )
        sys.exit(invoke_async(invocation, lambda status: credential_hint(credential, status)))
    assert data is not None
    request = urllib.request.Request(url, data=read_data(data), headers=headers, method="POST")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body, status, answer_headers = response.read(), response.status, response.headers
    except urllib.error.HTTPError as exc:
        body = exc.read()
        answered_by = exc.headers.get(VARIANT_HEADER)
        where = f" (variant {answered_by})" if answered_by else ""
        click.echo(f"error: {exc.code} {exc.reason}{where}: {error_message(body)}", err=True)
        if exc.code in (401, 403):
            hint = credential_hint(credential, exc.code)
            if hint:
                click.echo(hint, err=True)
        sys.exit(1)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        click.echo(f"error: cannot reach {url}: {reason} (is `berth up` running? see --url)", err=True)
        sys.exit(1)
    elapsed_ms = (time.perf_counter() - started) * 1000
    click.echo(body.decode("utf-8", "replace").rstrip("\n"))
    answered_by = answer_headers.get(VARIANT_HEADER, "unknown")
    cold = answer_headers.get(COLD_START_HEADER)
    held = f", held {cold} ms for a cold start" if cold else ""
    cache = answer_headers.get(MODEL_CACHE_HEADER)
    cached = f", model cache {cache}" if cache else ""
    click.echo(f"variant: {answered_by}  ({status}, {elapsed_ms:.1f} ms{held}{cached})", err=True)


# --------------------------------------------------------------------------- --async

INFERENCE_ID_HEADER = "X-Berth-Inference-Id"
FINISHED_STATES = ("Succeeded", "Failed")
POLL_FIRST_SECONDS = 0.2
POLL_MOST_SECONDS = 2.0


@dataclass(frozen=True)
class AsyncInvocation:
    url: str  # .../async-invocations
    body: bytes | None
    headers: dict[str, str]
    input_location: str | None = None
    inference_id: str | None = None
    ttl_seconds: int | None = None
    timeout_seconds: int | None = None
    wait: bool = False
    wait_timeout: float = 900.0
    request_timeout: float = 60.0


def _call(
    url: str, method: str, body: bytes | None, headers: dict[str, str], timeout: float
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def read_answer(location: str) -> bytes:
    """The object at an outputLocation (file:// or s3://; s3 needs the serving extra's boto3)."""
    if location.startswith("file://"):
        return Path(location[len("file://") :]).read_bytes()
    try:
        from berth_serving.asyncinf.storage import read_bytes
    except ImportError as error:
        raise click.ClickException(
            f"reading {location} needs boto3 (pip install 'berth[serving]'): {error}"
        ) from None
    return read_bytes(location)


def invoke_async(call: AsyncInvocation, hint: Any) -> int:
    """Queue one async invocation; with `wait`, poll until it is answered and print the answer
    (exit 0) or the failure reason (exit 1). The exit code."""
    headers = dict(call.headers)
    if call.input_location:
        headers["X-Berth-Input-Location"] = call.input_location
    if call.inference_id:
        headers[INFERENCE_ID_HEADER] = call.inference_id
    if call.ttl_seconds:
        headers["X-Berth-Request-TTL-Seconds"] = str(call.ttl_seconds)
    if call.timeout_seconds:
        headers["X-Berth-Invocation-Timeout-Seconds"] = str(call.timeout_seconds)
    try:
        status, body = _call(call.url, "POST", call.body, headers, call.request_timeout)
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"error: cannot reach {call.url}: {getattr(exc, 'reason', exc)} (see --url)", err=True)
        return 1
    if status != 202:
        click.echo(f"error: {status}: {error_message(body)}", err=True)
        said = hint(status) if status in (401, 403) else ""
        if said:
            click.echo(said, err=True)
        return 1
    queued = json.loads(body)
    inference_id = str(queued["inferenceId"])
    if not call.wait:
        click.echo(json.dumps(queued, indent=2))
        return 0
    click.echo(f"queued {inference_id}; output {queued['outputLocation']}", err=True)
    auth = {key: value for key, value in call.headers.items() if key in ("Authorization", API_KEY_HEADER)}
    status_url = f"{call.url.rstrip('/')}/{urllib.parse.quote(inference_id)}"
    started = time.monotonic()
    interval = POLL_FIRST_SECONDS
    state: dict[str, Any] = {}
    while time.monotonic() - started < call.wait_timeout:
        try:
            code, answer = _call(status_url, "GET", None, auth, call.request_timeout)
        except (urllib.error.URLError, OSError) as exc:
            click.echo(
                f"warning: cannot reach {status_url}: {getattr(exc, 'reason', exc)}; retrying", err=True
            )
            code, answer = 0, b""
        if code == 200:
            state = json.loads(answer)
            if state.get("state") in FINISHED_STATES:
                break
        elif code not in (0, 503):
            click.echo(f"error: {code} for {status_url}: {error_message(answer)}", err=True)
            return 1
        time.sleep(interval)
        interval = min(POLL_MOST_SECONDS, interval * 1.5)
    seconds = time.monotonic() - started
    if state.get("state") == "Succeeded":
        click.echo(read_answer(str(state["outputLocation"])).decode("utf-8", "replace").rstrip("\n"))
        variant = state.get("variant") or "unknown"
        click.echo(f"inference {inference_id}: Succeeded  (variant {variant}, {seconds:.1f} s)", err=True)
        return 0
    if state.get("state") == "Failed":
        click.echo(f"error: inference {inference_id} Failed: {state.get('reason', '')}", err=True)
        click.echo(f"failure: {state.get('failureLocation', '')}", err=True)
        return 1
    now = state.get("state", "unknown")
    click.echo(f"error: inference {inference_id} is still {now} after {call.wait_timeout:g} s", err=True)
    return 1
