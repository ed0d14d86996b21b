"""Label keys and label sets of the objects the planner makes.

The operator finds an Endpoint's children by `berth.dev/endpoint=<endpoint_label(name)>`;
a Deployment's selector names endpoint, config and variant.
"""

from __future__ import annotations

from collections.abc import Mapping

from .names import label_value

NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
PART_OF = "app.kubernetes.io/part-of"
MANAGED_BY = "app.kubernetes.io/managed-by"
ENDPOINT = "berth.dev/endpoint"
ENDPOINT_CONFIG = "berth.dev/endpoint-config"
VARIANT = "berth.dev/variant"
MODEL = "berth.dev/model"
BERTH_COMPONENT = "berth.dev/component"  # what is not a variant's own: the async front door, peers Services

APP_NAME = "berth-serving"
PART_OF_VALUE = "berth"
MANAGED_BY_VALUE = "berth-operator"


def endpoint_label(endpoint: str) -> str:
    """The value of berth.dev/endpoint for an Endpoint name (names over 63 chars are hashed)."""
    return label_value(endpoint)


def endpoint_selector(endpoint: str) -> str:
    """Label selector listing every child of an Endpoint."""
    return f"{ENDPOINT}={endpoint_label(endpoint)}"


def endpoint_labels(endpoint: str, component: str) -> dict[str, str]:
    return {
        NAME: APP_NAME,
        INSTANCE: label_value(endpoint),
        COMPONENT: component,
        PART_OF: PART_OF_VALUE,
        MANAGED_BY: MANAGED_BY_VALUE,
        ENDPOINT: endpoint_label(endpoint),
    }


def selector_labels(endpoint: str, config: str, variant: str) -> dict[str, str]:
    return {
        ENDPOINT: endpoint_label(endpoint),
        ENDPOINT_CONFIG: label_value(config),
        VARIANT: label_value(variant),
    }


def variant_labels(endpoint: str, config: str, variant: str, model: str) -> dict[str, str]:
    return {
        **endpoint_labels(endpoint, "variant"),
        **selector_labels(endpoint, config, variant),
        MODEL: label_value(model),
    }


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """An equality label selector (a Service's or a Deployment's) matches these labels."""
    return all(labels.get(key) == value for key, value in selector.items())
