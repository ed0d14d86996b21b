"""Names of the objects the planner makes: deterministic, valid, at most 63 characters.

Services need DNS-1035 labels (lowercase letters, digits and '-', starting with a letter,
at most 63 characters); label values need at most 63 characters too. Endpoint and config
names may be DNS subdomains of up to 253 characters, so long or unusual names are cut
and get a short hash of the full name, which keeps them unique and stable.
"""

from __future__ import annotations

import hashlib
import re

MAX_NAME = 63
HASH_LENGTH = 8
_NOT_ALLOWED = re.compile(r"[^a-z0-9-]+")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def short_hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:HASH_LENGTH]


def dns_label(*parts: str) -> str:
    """parts joined by '-' as a DNS-1035 label; cut and hashed when needed."""
    joined = "-".join(parts)
    cleaned = _NOT_ALLOWED.sub("-", joined.lower()).strip("-")
    if cleaned and not cleaned[0].isalpha():
        cleaned = "b-" + cleaned  # DNS-1035 labels start with a letter
    if cleaned == joined and len(cleaned) <= MAX_NAME:
        return cleaned
    head = cleaned[: MAX_NAME - HASH_LENGTH - 1].rstrip("-")
    return f"{head}-{short_hash(*parts)}" if head else f"b-{short_hash(*parts)}"


def label_value(value: str) -> str:
    """A label value naming value: itself when valid, else cut with a hash."""
    if len(value) <= MAX_NAME and _LABEL_VALUE.match(value):
        return value
    head = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[: MAX_NAME - HASH_LENGTH - 1].rstrip("-_.")
    return f"{head}-{short_hash(value)}" if head else short_hash(value)


def variant_object_name(endpoint: str, config: str, variant: str) -> str:
    """Deployment, Service, HPA and PDB of one variant of one config."""
    return dns_label(endpoint, config, variant)


def peers_service_name(endpoint: str, config: str, variant: str) -> str:
    """The headless Service through which a MultiModel variant's replicas find each other."""
    return dns_label(endpoint, config, variant, "peers")


def route_name(endpoint: str) -> str:
    """The HTTPRoute (or main Ingress) of an endpoint."""
    return dns_label(endpoint)


def canary_ingress_name(endpoint: str) -> str:
    return dns_label(endpoint, "canary")


def network_policy_name(endpoint: str) -> str:
    """The NetworkPolicy over every serving pod of an endpoint."""
    return dns_label(endpoint, "serving")


def async_frontdoor_name(endpoint: str) -> str:
    """Deployment and Service of an async Endpoint's front door (it queues the requests)."""
    return dns_label(endpoint, "async")


def async_routes_name(endpoint: str) -> str:
    """The ConfigMap with the front door's routes.json."""
    return dns_label(endpoint, "async-routes")


def async_ingress_name(endpoint: str) -> str:
    """routing.mode ingress: the Ingress of the front door's path."""
    return dns_label(endpoint, "async-invocations")
