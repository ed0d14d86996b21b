"""How a `berth serve` process is configured: flags, and the same settings as BERTH_* env.

The operator configures serving pods through environment variables, and local mode
starts `berth serve` processes the same way, so the names live here, in one place,
and nothing else spells them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from berth_serving.capture.settings import CaptureConfig, capture_to_json

DEFAULT_PORT = 8080
DEFAULT_MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
DEFAULT_TIMEOUT_SECONDS = 60.0
# The HTTP edge (berth_serving.httpedge): how long a body may take to arrive, how long an idle
# keep-alive connection is kept, how many connections are served at once.
DEFAULT_BODY_TIMEOUT_SECONDS = 60.0
DEFAULT_KEEP_ALIVE_SECONDS = 5.0
DEFAULT_MAX_CONNECTIONS = 1024
# Where the storage-initializer puts the model inside a serving pod.
MODEL_MOUNT_PATH = "/mnt/models"

# Invoke authentication (`--auth-mode`, berth_serving.auth): the values of Endpoint.spec.auth.mode.
AUTH_NONE = "None"
AUTH_KUBERNETES_RBAC = "KubernetesRBAC"
AUTH_API_KEY = "APIKey"
AUTH_MODES = (AUTH_NONE, AUTH_KUBERNETES_RBAC, AUTH_API_KEY)
# How a pod reaches the API server for its TokenReviews and SubjectAccessReviews: the
# ServiceAccount files every pod gets (the URL comes from KUBERNETES_SERVICE_HOST/PORT).
IN_CLUSTER_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
IN_CLUSTER_CA_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
DEFAULT_AUTH_CACHE_SECONDS = 10.0
# Multi-model: the share of the container's memory limit the loaded models may hold when
# cacheBytes is not given (the rest is the server's own and the models' inference arenas).
DEFAULT_CACHE_SHARE = 0.8

# Environment variable for each `berth serve` option (option name -> variable).
ENV = {
    "model_uri": "BERTH_MODEL_URI",
    "host": "BERTH_HOST",
    "port": "BERTH_PORT",
    "variant": "BERTH_VARIANT",
    "model_name": "BERTH_MODEL_NAME",
    "max_batch_size": "BERTH_MAX_BATCH_SIZE",
    "max_batch_delay_ms": "BERTH_MAX_BATCH_DELAY_MS",
    "max_payload_bytes": "BERTH_MAX_PAYLOAD_BYTES",
    "timeout_seconds": "BERTH_TIMEOUT_SECONDS",
    "intra_op_threads": "BERTH_INTRA_OP_THREADS",
    "graph_optimization_level": "BERTH_GRAPH_OPTIMIZATION_LEVEL",
    "providers": "BERTH_PROVIDERS",
    "max_queue_size": "BERTH_MAX_QUEUE_SIZE",
    "sha256": "BERTH_SHA256",
    "log_level": "BERTH_LOG_LEVEL",
    "access_log": "BERTH_ACCESS_LOG",
    "endpoint_config": "BERTH_ENDPOINT_CONFIG",
    "endpoint_variants": "BERTH_ENDPOINT_VARIANTS",
    "model_aliases": "BERTH_MODEL_ALIASES",
    "body_timeout_seconds": "BERTH_BODY_TIMEOUT_SECONDS",
    "keep_alive_seconds": "BERTH_KEEP_ALIVE_SECONDS",
    "max_connections": "BERTH_MAX_CONNECTIONS",
    "auth_mode": "BERTH_AUTH_MODE",
    "auth_endpoint": "BERTH_AUTH_ENDPOINT",
    "api_keys_dir": "BERTH_API_KEYS_DIR",
    "kube_api_url": "BERTH_KUBE_API_URL",
    "kube_token_file": "BERTH_KUBE_TOKEN_FILE",
    "kube_ca_file": "BERTH_KUBE_CA_FILE",
    "auth_cache_seconds": "BERTH_AUTH_CACHE_SECONDS",
    "auth_trust_loopback": "BERTH_AUTH_TRUST_LOOPBACK",
    "warmup_requests": "BERTH_WARMUP_REQUESTS",
    "multi_model": "BERTH_MULTI_MODEL",
    "cache_bytes": "BERTH_CACHE_BYTES",
    "max_loaded_models": "BERTH_MAX_LOADED_MODELS",
    "peers": "BERTH_PEERS",
    "pod_ip": "BERTH_POD_IP",
    "warm_from": "BERTH_WARM_FROM",
    "warm_models": "BERTH_WARM_MODELS",
    "pipeline": "BERTH_PIPELINE",
    "capture": "BERTH_CAPTURE",
}


@dataclass(frozen=True)
class WarmupRequest:
    """A request a replica answers before /ping says ready (Model.spec.warmupRequests)."""

    body: str
    content_type: str = "application/json"


def warmup_requests_to_json(requests: tuple[WarmupRequest, ...]) -> str:
    return json.dumps([{"contentType": r.content_type, "body": r.body} for r in requests])


def warmup_requests_from_json(text: str) -> tuple[WarmupRequest, ...]:
    """ValueError naming what is wrong: the env contract is a JSON list of {contentType, body}."""
    if not text.strip():
        return ()
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"warm-up requests are not JSON: {error}") from None
    if not isinstance(items, list):
        raise ValueError("warm-up requests must be a JSON list of {contentType, body}")
    found = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict) or not isinstance(item.get("body"), str):
            raise ValueError(f"warm-up request {i} needs a string body")
        content_type = item.get("contentType", "application/json")
        if not isinstance(content_type, str) or not content_type:
            raise ValueError(f"warm-up request {i}: contentType must be a non-empty string")
        found.append(WarmupRequest(item["body"], content_type))
    return tuple(found)


@dataclass(frozen=True)
class PipelineStage:
    """One stage of an inference pipeline (Model.spec.pipeline): an ONNX model run in this
    process (`model_uri`), or a container of the same pod honouring the serving contract,
    called over loopback (`url`, http://127.0.0.1:PORT)."""

    name: str
    model_uri: str = ""
    sha256: str = ""
    outputs: tuple[str, ...] = ()  # keep only these of the stage's outputs (all when empty)
    url: str = ""


def pipeline_to_json(stages: tuple[PipelineStage, ...]) -> str:
    return json.dumps(
        [
            {
                key: value
                for key, value in (
                    ("name", s.name),
                    ("modelUri", s.model_uri),
                    ("sha256", s.sha256),
                    ("outputs", list(s.outputs)),
                    ("url", s.url),
                )
                if value
            }
            for s in stages
        ]
    )


def pipeline_from_json(text: str) -> tuple[PipelineStage, ...]:
    """ValueError naming what is wrong: a JSON list of {name, modelUri | url, sha256?, outputs?}."""
    if not text.strip():
        return ()
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"the pipeline is not JSON: {error}") from None
    if not isinstance(items, list) or not 2 <= len(items) <= 15:
        raise ValueError("a pipeline is a JSON list of 2 to 15 stages")
    stages = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise ValueError(f"pipeline stage {i} must be an object")
        uri, url = item.get("modelUri", ""), item.get("url", "")
        if not isinstance(uri, str) or not isinstance(url, str) or bool(uri) == bool(url):
            raise ValueError(f"pipeline stage {i} needs exactly one of modelUri and url")
        outputs = item.get("outputs", [])
        if not isinstance(outputs, list) or not all(isinstance(o, str) and o for o in outputs):
            raise ValueError(f"pipeline stage {i}: outputs must be a list of output names")
        name = item.get("name") or f"stage-{i}"
        if not isinstance(name, str):
            raise ValueError(f"pipeline stage {i}: name must be a string")
        sha256 = item.get("sha256", "")
        if not isinstance(sha256, str):
            raise ValueError(f"pipeline stage {i}: sha256 must be a string")
        stages.append(PipelineStage(name, uri, sha256, tuple(outputs), url))
    names = [stage.name for stage in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"pipeline stage names must differ: {', '.join(names)}")
    return tuple(stages)


@dataclass(frozen=True)
class ServeConfig:
    """Everything `berth serve` needs; `to_env()` is how pods and local mode pass it on."""

    model_uri: str
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    variant: str = ""
    model_name: str = ""
    max_batch_size: int = 32
    max_batch_delay_ms: float = 2.0
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    intra_op_threads: int = 0
    graph_optimization_level: str = "all"
    providers: tuple[str, ...] = field(default_factory=tuple)
    max_queue_size: int = 1024
    log_level: str = "info"
    access_log: bool = False
    # The EndpointConfig this replica serves (the X-Berth-Endpoint-Config answer header).
    endpoint_config: str = ""
    # Every production variant of that config: a X-Berth-Target-Variant naming none of them is a 400.
    endpoint_variants: tuple[str, ...] = field(default_factory=tuple)
    # More names the v2 routes answer for besides model_name (the Endpoint's own name).
    model_aliases: tuple[str, ...] = field(default_factory=tuple)
    # A client on a slow link needs longer for a large payload than the default allows.
    body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS
    # Keep above the idle timeout of the proxy or load balancer in front, or it may reuse a
    # connection just as this server closes it.
    keep_alive_seconds: float = DEFAULT_KEEP_ALIVE_SECONDS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # Who may invoke (berth_serving.auth): None, KubernetesRBAC (a TokenReview and a
    # SubjectAccessReview for verb invoke on endpoints/NAME in group berth.dev) or APIKey.
    auth_mode: str = AUTH_NONE
    # KubernetesRBAC: the Endpoint the SubjectAccessReview asks about, NAMESPACE/NAME.
    auth_endpoint: str = ""
    # APIKey: a mounted Secret, one file per key (the file name is the key's name).
    api_keys_dir: str = ""
    # The API server; "" = the in-cluster one (https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT).
    kube_api_url: str = ""
    kube_token_file: str = IN_CLUSTER_TOKEN_FILE
    # "" = the system's trust store.
    kube_ca_file: str = IN_CLUSTER_CA_FILE
    # How long a review's answer (allowed or not) is reused for the same token.
    auth_cache_seconds: float = DEFAULT_AUTH_CACHE_SECONDS
    # Requests from 127.0.0.1 or ::1 pass the guard: only containers of the same pod reach the
    # pod's loopback (the async worker sidecar calls /invocations with no credential).
    auth_trust_loopback: bool = False
    # Answered (each a 2xx) after the model loads and before /ping says ready.
    warmup_requests: tuple[WarmupRequest, ...] = field(default_factory=tuple)
    # Multi-model endpoints (berth_serving.multimodel): model_uri is a prefix, each .onnx or
    # .tar.gz under it a model loaded on its first request.
    multi_model: bool = False
    # Memory the loaded models may hold; 0 = 80% of the container's memory limit.
    cache_bytes: int = 0
    # At most this many loaded at once; 0 = only the memory counts.
    max_loaded_models: int = 0
    # The variant's other replicas, for model-affinity routing: "dns:NAME:PORT" (a headless
    # Service, resolved again every few seconds) or "HOST:PORT,HOST:PORT". "" = serve every
    # model here (local mode: its router does the affinity).
    peers: str = ""
    # This replica's own address among the peers (the pod IP, from the downward API).
    pod_ip: str = ""
    # A rollout's new fleet: GET this URL (the old fleet's /models) and load its most used
    # `warm_models` models before /ping says ready.
    warm_from: str = ""
    warm_models: int = 0
    # An inference pipeline: these stages run serially instead of the model at model_uri.
    pipeline: tuple[PipelineStage, ...] = field(default_factory=tuple)
    # Data capture (berth_serving.capture): sampled requests and answers written as JSON Lines.
    capture: CaptureConfig | None = None

    def to_env(self) -> dict[str, str]:
        """BERTH_* variables for every setting that differs from the default."""
        defaults = ServeConfig(model_uri=self.model_uri)
        env = {ENV["model_uri"]: self.model_uri}
        for name, var in ENV.items():
            if name in ("model_uri", "sha256"):
                continue
            value = getattr(self, name)
            if value == getattr(defaults, name):
                continue
            if name == "warmup_requests":
                env[var] = warmup_requests_to_json(value)
            elif name == "pipeline":
                env[var] = pipeline_to_json(value)
            elif name == "capture":
                env[var] = capture_to_json(value)
            elif isinstance(value, tuple):
                env[var] = ",".join(value)
            elif isinstance(value, bool):
                env[var] = "true" if value else "false"
            else:
                env[var] = str(value)
        return env
