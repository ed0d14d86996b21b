"""`berth async-frontdoor` and `berth async-worker`.

The front door takes the invoke-auth settings of `berth serve` from the same BERTH_*
variables (config.ENV), so the planner gives its container the same auth env and volumes as
a serving container. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from berth_serving.asyncinf.keys import REDIS_URL_ENV
from berth_serving.config import (
    AUTH_MODES,
    AUTH_NONE,
    DEFAULT_AUTH_CACHE_SECONDS,
    DEFAULT_BODY_TIMEOUT_SECONDS,
    DEFAULT_MAX_PAYLOAD_BYTES,
    ENV,
    IN_CLUSTER_CA_FILE,
    IN_CLUSTER_TOKEN_FILE,
    ServeConfig,
)

_LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)
# The guard's metric names its "variant": the front door is none.
FRONTDOOR_LABEL = "async-frontdoor"


def _auth_options(command: Any) -> Any:
    """The invoke-auth options of `berth serve`, read from the same variables."""
    options = [
        click.option("--auth-mode", type=click.Choice(AUTH_MODES, case_sensitive=False), default=AUTH_NONE,
                     envvar=ENV["auth_mode"], help="Who may invoke, as for `berth serve`."),
        click.option("--auth-endpoint", default="", envvar=ENV["auth_endpoint"], metavar="NAMESPACE/NAME"),
        click.option("--api-keys-dir", default="", envvar=ENV["api_keys_dir"], metavar="DIR"),
        click.option("--kube-api-url", default="", envvar=ENV["kube_api_url"]),
        click.option("--kube-token-file", default=IN_CLUSTER_TOKEN_FILE, envvar=ENV["kube_token_file"]),
        click.option("--kube-ca-file", default=IN_CLUSTER_CA_FILE, envvar=ENV["kube_ca_file"]),
        click.option("--auth-cache-seconds", type=click.FloatRange(min=0), default=DEFAULT_AUTH_CACHE_SECONDS,
                     envvar=ENV["auth_cache_seconds"]),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


@click.command("async-frontdoor", context_settings={"show_default": True})
@click.option(
    "--routes",
    "routes_path",
    required=True,
    help="The routes file (routes.json); read again when it changes.",
)
@click.option("--redis-url", envvar=REDIS_URL_ENV, required=True, help=f"The queue (env {REDIS_URL_ENV}).")
@click.option("--host", default="0.0.0.0")
@click.option("--port", type=int, default=8080)
@click.option("--max-payload-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_PAYLOAD_BYTES,
              envvar=ENV["max_payload_bytes"], help="Largest inline body (larger inputs: X-Berth-Input-Location).")  # fmt: skip
@click.option(
    "--body-timeout-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_BODY_TIMEOUT_SECONDS,
    envvar=ENV["body_timeout_seconds"],
    help="Longest an inline body may take to arrive.",
)
@click.option("--log-level", type=_LOG_LEVELS, default="info", envvar=ENV["log_level"])
@_auth_options
def frontdoor_command(
    routes_path: str, redis_url: str, host: str, port: int, max_payload_bytes: int, body_timeout_seconds: float,
    log_level: str, auth_mode: str, **auth: Any,
) -> None:  # fmt: skip
    """Queue async invocations of an endpoint on Redis Streams and tell their state."""
    from berth_serving.auth import auth_problem

    config = ServeConfig(
        model_uri="",
        variant=FRONTDOOR_LABEL,
        auth_mode=next(mode for mode in AUTH_MODES if mode.lower() == auth_mode.lower()),
        **auth,
    )
    problem = auth_problem(config)
    if problem is not None:
        raise click.UsageError(problem)
    from berth_serving.asyncinf.server import FrontDoorOptions, run
    from berth_serving.logs import setup_logging

    setup_logging(log_level)
    options = FrontDoorOptions(routes_path, redis_url, host, port, max_payload_bytes, body_timeout_seconds)
    sys.exit(run(options, config))


@click.command("async-worker", context_settings={"show_default": True})
@click.option("--redis-url", envvar=REDIS_URL_ENV, required=True, help=f"The queue (env {REDIS_URL_ENV}).")
@click.option("--stream", required=True, help="The variant's stream key.")
@click.option("--consumer", required=True, help="This worker's name in the group (the pod's name).")
@click.option("--invoke-url", required=True, help="The replica's /invocations (its /ping is polled first).")
@click.option(
    "--max-concurrency", type=click.IntRange(min=1), required=True, help="Messages answered at once."
)
@click.option("--variant", required=True)
@click.option("--endpoint-config", required=True)
@click.option("--success-webhook", default="", help="CloudEvents of answered inferences go here.")
@click.option("--error-webhook", default="", help="CloudEvents of failed inferences go here.")
@click.option(
    "--max-attempts", type=click.IntRange(min=1), default=3, help="Deliveries before a message fails."
)
@click.option("--claim-idle-seconds", type=click.FloatRange(min=0.5), default=60.0,
              help="A message no worker touched for this long is taken over (its worker died).")  # fmt: skip
@click.option("--metrics-port", type=click.IntRange(min=0), default=9091, help="0: no metrics server.")
@click.option("--metrics-host", default="0.0.0.0")
@click.option("--log-level", type=_LOG_LEVELS, default="info", envvar=ENV["log_level"])
def worker_command(log_level: str, **options: Any) -> None:
    """Answer queued async invocations beside one replica."""
    if not options["invoke_url"].startswith("http://"):
        raise click.BadParameter(
            "must be http://HOST:PORT/invocations (the replica on loopback)", param_hint="--invoke-url"
        )
    for flag in ("success_webhook", "error_webhook"):
        if options[flag] and not options[flag].startswith(("http://", "https://")):
            raise click.BadParameter(
                "must be an http:// or https:// URL", param_hint="--" + flag.replace("_", "-")
            )
    from berth_serving.asyncinf.worker import WorkerOptions, run
    from berth_serving.logs import setup_logging

    setup_logging(log_level)
    sys.exit(run(WorkerOptions(**options)))
