"""Where async inference keeps its state in Redis, and the routes file of the front door.

One home for these names: the front door and the workers (serving side), the planner (the
KEDA trigger names the stream) and the operator (backlog in status) all read them here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

PREFIX = "berth:async:"
CONSUMER_GROUP = "workers"  # one group per stream: the variant's workers share its messages
ROUTES_FILE_KEY = "routes.json"  # the key in the front door's ConfigMap
ROUTES_MOUNT = "/etc/berth/async"  # where the front door's pod mounts that ConfigMap
REDIS_URL_ENV = "BERTH_REDIS_URL"  # both commands read the URL from here when no flag gives it
# X-Berth-Request-TTL-Seconds and X-Berth-Invocation-Timeout-Seconds: defaults and most. A
# replica of an async variant needs a request timeout of at least MAX_INVOCATION_TIMEOUT_SECONDS
# (its own --timeout-seconds would cut a longer invocation short with a 504).
DEFAULT_TTL_SECONDS = 21600
MAX_TTL_SECONDS = 21600
DEFAULT_INVOCATION_TIMEOUT_SECONDS = 900
MAX_INVOCATION_TIMEOUT_SECONDS = 3600


def stream_key(namespace: str, endpoint: str, config: str, variant: str) -> str:
    """A stream per variant of a config: during a rollout the old fleet drains its own."""
    return f"{PREFIX}stream:{namespace}/{endpoint}/{config}/{variant}"


def counts_key(stream: str) -> str:
    """A hash of outcome counters (succeeded, failed, expired, redelivered) of one stream."""
    return f"{PREFIX}counts:{stream.removeprefix(PREFIX + 'stream:')}"


def inference_key(namespace: str, endpoint: str, inference_id: str) -> str:
    """A hash per inference: state, reason, locations. Ids are per endpoint (idempotency)."""
    return f"{PREFIX}inference:{namespace}/{endpoint}/{inference_id}"


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)


class RouteVariant(_Model):
    """One fleet the front door may queue for: a variant of a config, with its share."""

    variant_name: str = Field(alias="variantName")
    endpoint_config_name: str = Field(alias="endpointConfigName")
    weight: float = Field(ge=0)
    stream: str
    output_uri: str = Field(alias="outputUri")
    failure_uri: str = Field(alias="failureUri")


class Routes(_Model):
    """The front door's routes file: the planner writes it (a ConfigMap), local mode too."""

    namespace: str
    endpoint: str
    variants: list[RouteVariant]
