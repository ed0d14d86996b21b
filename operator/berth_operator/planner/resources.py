"""The status of Models and EndpointConfigs: a Ready condition and observedGeneration.

    model_status(raw, now, pods) -> status
    config_status(raw, found_models, now) -> status

Pure: the operator reads the object (for a Model, the serving pods labelled with it; for an
EndpointConfig, which of its Models exist), calls these, and patches whatever differs from the
stored status.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ..api import Condition, EndpointConfig, EndpointConfigStatus, Model, ModelStatus, validation_message
from .conditions import condition, parsed_conditions
from .pipeline import refused_wiring
from .types import Manifest


def model_names_of(configs: Iterable[EndpointConfig]) -> set[str]:
    """Every Model that the configs' production and shadow variants serve."""
    return {
        variant.model_name
        for config in configs
        for variant in config.spec.production_variants + config.spec.shadow_production_variants
    }


def config_model_names(raw: Manifest) -> set[str] | None:
    """The Models an EndpointConfig refers to; None when its spec is invalid."""
    try:
        return model_names_of([EndpointConfig.model_validate(raw)])
    except ValidationError:
        return None


def model_status(raw: Manifest, now: datetime, pods: Iterable[Manifest] = ()) -> dict[str, Any]:
    """Ready True (Accepted) when the Model's spec is valid, else False (InvalidSpec) saying why;
    False (WiringRefused) while a server of the Model's pods refuses its pipeline's wiring."""
    try:
        Model.model_validate(raw)
    except ValidationError as exc:
        ready = _ready(raw, False, "InvalidSpec", validation_message(exc), now)
    else:
        refused = refused_wiring(pods)
        if refused is not None:
            ready = _ready(raw, False, "WiringRefused", refused, now)
        else:
            ready = _ready(raw, True, "Accepted", "", now)
    return ModelStatus(observed_generation=_generation(raw), conditions=[ready]).to_wire()


def config_status(raw: Manifest, found_models: Set[str], now: datetime) -> dict[str, Any]:
    """Ready True (ModelsFound) when every referenced Model exists; False with InvalidSpec or ModelNotFound."""
    try:
        config = EndpointConfig.model_validate(raw)
    except ValidationError as exc:
        ready = _ready(raw, False, "InvalidSpec", validation_message(exc), now)
    else:
        missing = sorted(model_names_of([config]) - set(found_models))
        if missing:
            noun = "Model" if len(missing) == 1 else "Models"
            ready = _ready(raw, False, "ModelNotFound", f"{noun} not found: {', '.join(missing)}", now)
        else:
            ready = _ready(raw, True, "ModelsFound", "", now)
    return EndpointConfigStatus(observed_generation=_generation(raw), conditions=[ready]).to_wire()


def _generation(raw: Manifest) -> int | None:
    generation = raw["metadata"].get("generation")
    return generation if isinstance(generation, int) else None


def _ready(raw: Manifest, status: bool, reason: str, message: str, now: datetime) -> Condition:
    return condition(_previous(raw), "Ready", status, reason, message, now, _generation(raw))


def _previous(raw: Manifest) -> list[Condition]:
    return parsed_conditions((raw.get("status") or {}).get("conditions"))
