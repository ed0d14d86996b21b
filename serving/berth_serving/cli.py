"""`berth serve` and `berth fetch-model` (also `python -m berth_serving ...`).

Every `serve` option can come from the BERTH_* variable named in config.ENV: that is how
the operator and local mode configure serving processes. Heavy imports (ONNX Runtime,
FastAPI, boto3) happen inside the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from berth_serving.capture.settings import capture_from_json
from berth_serving.config import (
    AUTH_MODES,
    AUTH_NONE,
    DEFAULT_AUTH_CACHE_SECONDS,
    DEFAULT_BODY_TIMEOUT_SECONDS,
    DEFAULT_KEEP_ALIVE_SECONDS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_PORT,
    DEFAULT_TIMEOUT_SECONDS,
    ENV,
    IN_CLUSTER_CA_FILE,
    IN_CLUSTER_TOKEN_FILE,
    ServeConfig,
    pipeline_from_json,
    warmup_requests_from_json,
)
from berth_serving.fetch import MAX_BYTES_ENV

_LEVELS = click.Choice(["disable", "basic", "extended", "all"], case_sensitive=False)
_LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)
_AUTH_MODES = click.Choice(AUTH_MODES, case_sensitive=False)


@click.command("serve", context_settings={"show_default": True})
@click.argument("model_uri", envvar=ENV["model_uri"], required=False, default="")
@click.option("--port", type=int, default=DEFAULT_PORT, envvar=ENV["port"], help="Port to listen on.")
@click.option("--host", default="0.0.0.0", envvar=ENV["host"], help="Address to bind.")
@click.option(
    "--variant", default="", envvar=ENV["variant"], help="Variant name for X-Berth-Variant and metrics."
)
@click.option(
    "--model-name", default="", envvar=ENV["model_name"], help="v2 model name (default: file stem)."
)
@click.option("--max-batch-size", type=click.IntRange(min=1), default=32, envvar=ENV["max_batch_size"])
@click.option(
    "--max-batch-delay-ms", type=click.FloatRange(min=0), default=2.0, envvar=ENV["max_batch_delay_ms"]
)
@click.option(
    "--max-payload-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PAYLOAD_BYTES,
    envvar=ENV["max_payload_bytes"],
)
@click.option(
    "--timeout-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT_SECONDS,
    envvar=ENV["timeout_seconds"],
)
@click.option(
    "--intra-op-threads",
    type=click.IntRange(min=0),
    default=0,
    envvar=ENV["intra_op_threads"],
    help="ONNX Runtime threads; 0 = one per CPU of the container's limit.",
)
@click.option(
    "--graph-optimization-level", type=_LEVELS, default="all", envvar=ENV["graph_optimization_level"]
)
@click.option(
    "--providers",
    default="",
    envvar=ENV["providers"],
    help="Execution providers, comma separated (cuda, tensorrt, cpu); CPU is always the fallback.",
)
@click.option("--max-queue-size", type=click.IntRange(min=1), default=1024, envvar=ENV["max_queue_size"])
@click.option("--sha256", default=None, envvar=ENV["sha256"], help="Expected sha256 of the model file.")
@click.option(
    "--access-log/--no-access-log", default=False, envvar=ENV["access_log"], help="Log every request."
)
@click.option("--log-level", type=_LOG_LEVELS, default="info", envvar=ENV["log_level"])
@click.option(
    "--endpoint-config",
    default="",
    envvar=ENV["endpoint_config"],
    help="EndpointConfig this replica serves (answered in X-Berth-Endpoint-Config).",
)
@click.option(
    "--endpoint-variants",
    default="",
    envvar=ENV["endpoint_variants"],
    help="Production variants of that config, comma separated (a X-Berth-Target-Variant naming none is a 400).",
)
@click.option(
    "--model-aliases",
    default="",
    envvar=ENV["model_aliases"],
    help="More v2 model names to answer for, comma separated (the Endpoint's name).",
)
@click.option(
    "--body-timeout-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_BODY_TIMEOUT_SECONDS,
    envvar=ENV["body_timeout_seconds"],
    help="Longest a request body may take to arrive (a body that stalls 10 s is cut off sooner).",
)
@click.option(
    "--keep-alive-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_KEEP_ALIVE_SECONDS,
    envvar=ENV["keep_alive_seconds"],
    help="How long an idle keep-alive connection is kept; above the idle timeout of a proxy in front.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_CONNECTIONS,
    envvar=ENV["max_connections"],
    help="Connections served at once; past it idle ones are closed, then requests get 503 (not /ping).",
)
@click.option(
    "--auth-mode",
    type=_AUTH_MODES,
    default=AUTH_NONE,
    envvar=ENV["auth_mode"],
    help="Who may invoke: None (anyone), KubernetesRBAC (a bearer token of a user allowed verb invoke "
    "on the endpoint), APIKey (a key of --api-keys-dir). /ping, /metrics, v2 health and metadata stay open.",
)
@click.option(
    "--auth-endpoint",
    default="",
    envvar=ENV["auth_endpoint"],
    metavar="NAMESPACE/NAME",
    help="KubernetesRBAC: the Endpoint callers must be allowed to invoke (endpoints.berth.dev).",
)
@click.option(
    "--api-keys-dir",
    default="",
    envvar=ENV["api_keys_dir"],
    metavar="DIR",
    help="APIKey: a mounted Secret, one file per key named as the key's name; each holds "
    "sha256:HEX (recommended) or the key. Read again when it changes.",
)
@click.option(
    "--kube-api-url",
    default="",
    envvar=ENV["kube_api_url"],
    help="KubernetesRBAC: the API server [default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT].",
)
@click.option(
    "--kube-token-file",
    default=IN_CLUSTER_TOKEN_FILE,
    envvar=ENV["kube_token_file"],
    help="KubernetesRBAC: this pod's token for the reviews (read again when it rotates).",
)
@click.option(
    "--kube-ca-file",
    default=IN_CLUSTER_CA_FILE,
    envvar=ENV["kube_ca_file"],
    help="KubernetesRBAC: the API server's CA (\"\" = the system's trust store).",
)
@click.option(
    "--auth-cache-seconds",
    type=click.FloatRange(min=0),
    default=DEFAULT_AUTH_CACHE_SECONDS,
    envvar=ENV["auth_cache_seconds"],
    help="KubernetesRBAC: how long a review's answer, allowed or refused, is reused for the same token.",
)
@click.option(
    "--auth-trust-loopback/--no-auth-trust-loopback",
    default=False,
    envvar=ENV["auth_trust_loopback"],
    help="Let requests from 127.0.0.1 and ::1 pass invoke auth (containers of this pod: the async worker).",
)
@click.option(
    "--warmup-requests",
    default="",
    envvar=ENV["warmup_requests"],
    metavar="JSON",
    help='Requests answered (each a 2xx) before /ping says ready: [{"contentType": ..., "body": ...}].',
)
@click.option(
    "--multi-model/--single-model",
    default=False,
    envvar=ENV["multi_model"],
    help="MODEL_URI is a prefix; each .onnx or .tar.gz under it is a model, loaded on its first request.",
)
@click.option(
    "--cache-bytes",
    type=click.IntRange(min=0),
    default=0,
    envvar=ENV["cache_bytes"],
    help="Multi-model: memory the loaded models may hold (0 = 80% of the container's memory limit).",
)
@click.option(
    "--max-loaded-models",
    type=click.IntRange(min=0),
    default=0,
    envvar=ENV["max_loaded_models"],
    help="Multi-model: most models loaded at once (0 = only memory counts).",
)
@click.option(
    "--peers",
    default="",
    envvar=ENV["peers"],
    help='Multi-model: the variant\'s replicas, "dns:NAME:PORT" or "HOST:PORT,...", for model affinity.',
)
@click.option(
    "--pod-ip", default="", envvar=ENV["pod_ip"], help="Multi-model: this replica's address among --peers."
)
@click.option(
    "--warm-from",
    default="",
    envvar=ENV["warm_from"],
    help="Multi-model: the old fleet's /models URL; its most used models load before /ping says ready.",
)
@click.option(
    "--warm-models",
    type=click.IntRange(min=0),
    default=0,
    envvar=ENV["warm_models"],
    help="Multi-model: how many of --warm-from's most used models to load.",
)
@click.option(
    "--pipeline",
    default="",
    envvar=ENV["pipeline"],
    metavar="JSON",
    help='An inference pipeline instead of MODEL_URI: [{"name", "modelUri" | "url", "sha256", "outputs"}, ...].',
)
@click.option(
    "--capture",
    default="",
    envvar=ENV["capture"],
    metavar="JSON",
    help='Data capture: {"destinationUri", "endpoint", "variant", "samplingPercentage", "captureModes", ...}.',
)
def serve(
    model_uri: str,
    pipeline: str,
    capture: str,
    sha256: str | None,
    providers: str,
    endpoint_variants: str,
    model_aliases: str,
    auth_mode: str,
    warmup_requests: str,
    **options: Any,
) -> None:
    """Serve the ONNX model at MODEL_URI (file, directory, file://, http(s)://, s3://, pvc://)."""
    try:
        warmups = warmup_requests_from_json(warmup_requests)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--warmup-requests") from None
    try:
        stages = pipeline_from_json(pipeline)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--pipeline") from None
    try:
        capture_config = capture_from_json(capture)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--capture") from None
    if bool(model_uri) == bool(stages):
        raise click.UsageError("give MODEL_URI or --pipeline (one of them)")
    if stages and options["multi_model"]:
        raise click.UsageError("--pipeline and --multi-model do not mix: a pipeline is one model")
    config = ServeConfig(
        capture=capture_config,
        pipeline=stages,
        warmup_requests=warmups,
        model_uri=model_uri,
        providers=_names(providers),
        endpoint_variants=_names(endpoint_variants),
        model_aliases=_names(model_aliases),
        auth_mode=next(mode for mode in AUTH_MODES if mode.lower() == auth_mode.lower()),
        **{**options, "graph_optimization_level": options["graph_optimization_level"].lower()},
    )
    if config.peers:
        from berth_serving.multimodel.peers import parse_peers

        try:
            parse_peers(config.peers)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--peers") from None
        if not config.pod_ip:
            raise click.UsageError("--peers needs --pod-ip: this replica's own address among them")
    if config.multi_model and config.warmup_requests:
        raise click.UsageError(
            "--warmup-requests needs a single model; a multi-model replica warms with --warm-from"
        )
    from berth_serving.auth import auth_problem

    problem = auth_problem(config)
    if problem is not None:
        raise click.UsageError(problem)
    from berth_serving.logs import setup_logging
    from berth_serving.server import run

    setup_logging(config.log_level)
    sys.exit(run(config, sha256 or None))


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


@click.command("fetch-model")
@click.argument("uri")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--sha256", default=None, envvar=ENV["sha256"], help="Expected sha256 of the downloaded file.")
@click.option(
    "--max-bytes",
    type=click.IntRange(min=1),
    default=None,
    envvar=MAX_BYTES_ENV,
    help="Most bytes the fetch may hold in DEST at once: the download, plus the unpacked files "
    "while the archive is still there (the model volume's sizeLimit). Default: no limit.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A node-local cache keyed by --sha256 (without one it is not used): copied from when it "
    "holds the model, filled after a download. An entry whose digest is wrong is downloaded anew.",
)
@click.option(
    "--sha256-beside",
    is_flag=True,
    default=False,
    help="Without --sha256: check the digest in URI.sha256 when that object exists (a model under "
    "a multi-model prefix, as the multi-model server does).",
)
def fetch_model(
    uri: str,
    dest: Path,
    sha256: str | None,
    max_bytes: int | None,
    cache_dir: Path | None,
    sha256_beside: bool,
) -> None:
    """Download the model at URI into DEST and print the path of the .onnx to serve."""
    from berth_serving.fetch import FetchError
    from berth_serving.fetch import fetch_model as fetch
    from berth_serving.termination import write_termination_message

    try:
        if sha256_beside and not sha256:
            from berth_serving.multimodel.repository import digest_beside

            sha256 = digest_beside(uri)
        path = fetch(uri, dest, sha256 or None, max_bytes=max_bytes, cache_dir=cache_dir)
    except FetchError as error:
        write_termination_message(str(error))
        click.echo(f"berth fetch-model: {error}", err=True)
        sys.exit(1)
    except Exception as error:  # a bug: the status gets one line, the log the traceback
        write_termination_message(f"fetch-model failed unexpectedly: {type(error).__name__}: {error}")
        raise
    click.echo(str(path))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The Berth serving runtime (the same commands as `berth serve` / `berth fetch-model`)."""


main.add_command(serve)
main.add_command(fetch_model)
