"""The Berth API (berth.dev/v1alpha1) as pydantic models: the one source of truth.

One module per kind (model, endpointconfig, endpoint, transformjob), each with its admission
messages and CEL rules, and `meta` for what they share. The CRD schemas in `crds/` are
generated from these classes (`berth crds`), and the operator, `berth render` and local mode
all parse manifests through them, so a manifest that the cluster refuses is refused with the
same words everywhere.

Defaults live here and are applied when a manifest is read, never written back into a stored
spec: Argo CD and Flux then see no drift.
"""

from .endpoint import (
    MSG_OVERRIDE_NAMES_UNIQUE,
    AutoRollback,
    BlueGreen,
    CapacitySize,
    DeploymentConfig,
    Endpoint,
    EndpointSpec,
    EndpointStatus,
    Phase,
    RollbackRecord,
    RolloutStatus,
    TrafficRouting,
    VariantOverride,
    VariantStatus,
)
from .endpointconfig import (
    MSG_AUTOSCALING_BOUNDS,
    MSG_AUTOSCALING_TARGET,
    MSG_CONFIG_IMMUTABLE,
    MSG_VARIANT_NAMES_UNIQUE,
    MSG_WEIGHTS_POSITIVE,
    Autoscaling,
    EndpointConfig,
    EndpointConfigSpec,
    EndpointConfigStatus,
    ProductionVariant,
)
from .meta import (
    API_VERSION,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    GROUP,
    MODEL_URI,
    SHA256_HEX,
    STORAGE_URI,
    VERSION,
    ApiModel,
    Condition,
    EnvVar,
    LocalObjectReference,
    ObjectMeta,
    Resource,
    ResourceRequirements,
    conditions_field,
    validation_message,
    validation_problems,
)
from .model import (
    MSG_MODEL_IMMUTABLE,
    Model,
    ModelSpec,
    ModelStatus,
    RuntimeSettings,
)
from .transformjob import (
    MSG_JOIN_NEEDS_LINES,
    MSG_NPY_NEEDS_NO_SPLIT,
    MSG_OUTPUT_NOT_INPUT,
    MSG_TRANSFORM_IMMUTABLE,
    TransformInput,
    TransformJob,
    TransformJobSpec,
    TransformJobStatus,
    TransformOutput,
    TransformPhase,
)

RESOURCE_KINDS: dict[str, type[Resource]] = {
    cls.KIND: cls for cls in (Model, EndpointConfig, Endpoint, TransformJob)
}

__all__ = [
    "API_VERSION",
    "DNS_LABEL",
    "DNS_SUBDOMAIN",
    "GROUP",
    "MODEL_URI",
    "MSG_AUTOSCALING_BOUNDS",
    "MSG_AUTOSCALING_TARGET",
    "MSG_CONFIG_IMMUTABLE",
    "MSG_JOIN_NEEDS_LINES",
    "MSG_MODEL_IMMUTABLE",
    "MSG_NPY_NEEDS_NO_SPLIT",
    "MSG_OUTPUT_NOT_INPUT",
    "MSG_OVERRIDE_NAMES_UNIQUE",
    "MSG_TRANSFORM_IMMUTABLE",
    "MSG_VARIANT_NAMES_UNIQUE",
    "MSG_WEIGHTS_POSITIVE",
    "RESOURCE_KINDS",
    "SHA256_HEX",
    "STORAGE_URI",
    "VERSION",
    "ApiModel",
    "AutoRollback",
    "Autoscaling",
    "BlueGreen",
    "CapacitySize",
    "Condition",
    "DeploymentConfig",
    "Endpoint",
    "EndpointConfig",
    "EndpointConfigSpec",
    "EndpointConfigStatus",
    "EndpointSpec",
    "EndpointStatus",
    "EnvVar",
    "LocalObjectReference",
    "Model",
    "ModelSpec",
    "ModelStatus",
    "ObjectMeta",
    "Phase",
    "ProductionVariant",
    "Resource",
    "ResourceRequirements",
    "RollbackRecord",
    "RolloutStatus",
    "RuntimeSettings",
    "TrafficRouting",
    "TransformInput",
    "TransformJob",
    "TransformJobSpec",
    "TransformJobStatus",
    "TransformOutput",
    "TransformPhase",
    "VariantOverride",
    "VariantStatus",
    "conditions_field",
    "validation_message",
    "validation_problems",
]
