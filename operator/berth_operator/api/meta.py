"""What every Berth kind shares: the group and version, field patterns, the pydantic base
classes, metav1 shapes (Condition, ObjectMeta, EnvVar...) and the admission error format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

GROUP = "berth.dev"
VERSION = "v1alpha1"
API_VERSION: Final = "berth.dev/v1alpha1"  # a literal, so that mypy accepts it as the Literal default below

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
MODEL_URI = r"^(s3|https?|pvc|file)://.+"
SHA256_HEX = r"^[a-f0-9]{64}$"
STORAGE_URI = r"^(s3|file)://.+"


def validation_problems(error: ValidationError) -> list[str]:
    """One "field.path[0].name: message" per problem, in the manifest's camelCase words."""
    return [f"{_location(e) or '(top)'}: {_message(e)}" for e in error.errors()]


def validation_message(error: ValidationError) -> str:
    """The problems of a refused object on one line, for a status message or failureReason."""
    return "; ".join(validation_problems(error))


def _location(error: Mapping[str, Any]) -> str:
    text = ""
    for part in error["loc"]:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _message(error: Mapping[str, Any]) -> str:
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields and wrong types are refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
        strict=True,  # like the API server: "2" is not an integer, true is not a number
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest (camelCase, unset optionals left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def conditions_field(description: str) -> Any:
    """status.conditions: a list map keyed by type, as kubebuilder's +listType=map +listMapKey=type."""
    return Field(
        default_factory=list,
        description=description,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class Condition(ApiModel):
    """A metav1.Condition."""

    type: str = Field(description="Condition type: Ready, Progressing or Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="A CamelCase word that says why, for machines.")
    message: str = Field(default="", description="A sentence that says why, for people.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation that the condition was computed from."
    )


class ObjectMeta(BaseModel):
    """The part of metav1.ObjectMeta that Berth reads; everything else is kept as it is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None
    resource_version: str | None = Field(default=None, alias="resourceVersion")


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace."""

    name: str = Field(description="Name of an object in the same namespace.", min_length=1, max_length=253)


class ResourceRequirements(ApiModel):
    """Container requests and limits (quantities such as "500m", "2Gi" or 1)."""

    requests: dict[str, int | str] = Field(
        default_factory=dict, max_length=16, description="Minimum resources."
    )
    limits: dict[str, int | str] = Field(
        default_factory=dict, max_length=16, description="Maximum resources."
    )


class EnvVar(ApiModel):
    """A container environment variable (core/v1 EnvVar)."""

    name: str = Field(min_length=1, max_length=256, description="Variable name.")
    value: str | None = Field(default=None, max_length=32768, description="Literal value.")
    value_from: dict[str, Any] | None = Field(
        default=None,
        max_length=1,
        description="Source for the value (secretKeyRef, configMapKeyRef, fieldRef...); passed through unchanged.",
    )


class Resource(ApiModel):
    """A berth.dev object: apiVersion, kind, metadata, spec and status."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SHORT_NAME: ClassVar[str]

    api_version: Literal["berth.dev/v1alpha1"] = API_VERSION
    kind: str
    metadata: ObjectMeta

    @field_validator("kind")
    @classmethod
    def _kind_matches(cls, value: str) -> str:
        if value != cls.KIND:
            raise ValueError(f"kind must be {cls.KIND}")
        return value

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace
