"""`berth invoke`: send one request to an endpoint and show which variant answered."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import click

DEFAULT_URL = "http://127.0.0.1:8080"
VARIANT_HEADER = "X-Berth-Variant"
TARGET_HEADER = "X-Berth-Target-Variant"


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


def invocation_url(base: str, namespace: str, name: str) -> str:
    return f"{base.rstrip('/')}/endpoints/{namespace}/{name}/invocations"


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


@click.command("invoke")
@click.argument("name")
@click.option("-d", "--data", required=True, help="Request body: JSON text, @FILE, or @- for standard input.")
@click.option(
    "--content-type", default="application/json", show_default=True, help="Content-Type of the body."
)
@click.option("--accept", default=None, help="Accept header (response type: application/json, text/csv...).")
@click.option("--variant", default=None, help="Send to this production variant (X-Berth-Target-Variant).")
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
def invoke_command(
    name: str,
    data: str,
    content_type: str,
    accept: str | None,
    variant: str | None,
    base_url: str,
    namespace: str,
    timeout: float,
) -> None:
    """Send a request to endpoint NAME and print the answer and the variant that gave it.

    Example: berth invoke quickstart --data '{"instances": [[0.1, 0.2, 0.3, 0.4]]}'
    """
    url = invocation_url(base_url, namespace, name)
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    if variant:
        headers[TARGET_HEADER] = variant
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
        sys.exit(1)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        click.echo(f"error: cannot reach {url}: {reason} (is `berth up` running? see --url)", err=True)
        sys.exit(1)
    elapsed_ms = (time.perf_counter() - started) * 1000
    click.echo(body.decode("utf-8", "replace").rstrip("\n"))
    answered_by = answer_headers.get(VARIANT_HEADER, "unknown")
    click.echo(f"variant: {answered_by}  ({status}, {elapsed_ms:.1f} ms)", err=True)
