"""A fleet: the variants of one EndpointConfig, resolved against Models and the catalog.

Variants that cannot be built (missing Model, unknown instance type) are left out and
named in `errors`; a missing EndpointConfig gives an empty fleet with `missing=True`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from berth_serving.asyncinf.keys import stream_key

from ..api import (
    AsyncInferenceConfig,
    Autoscaling,
    DataCapture,
    EndpointConfig,
    Model,
    ProductionVariant,
    ServerlessConfig,
    VariantOverride,
)
from ..settings import InstanceType, Settings
from . import serverless
from .multimodel import MSG_NO_ASYNC
from .names import variant_object_name


@dataclass(frozen=True)
class VariantPlan:
    endpoint: str
    config: str
    spec: ProductionVariant
    model: Model
    instance_type: InstanceType
    shadow: bool
    weight: float  # effective weight: variantOverrides.desiredWeight or initialVariantWeight
    replicas: int  # wanted replicas; with autoscaling the HPA's minReplicas
    autoscaling: Autoscaling | None
    production_names: tuple[str, ...] = ()  # every production variant of the config
    async_config: AsyncInferenceConfig | None = None  # the config's: this variant is an async fleet
    stream: str | None = None  # async: the Redis stream the variant's workers read
    # MultiModel: the old fleet's /models URL this variant's pods warm from ("" = start cold).
    warm_from: str = ""
    data_capture: DataCapture | None = None  # the config's: every variant captures alike

    @property
    def multi_model(self) -> bool:
        return self.model.spec.is_multi_model

    @property
    def serverless(self) -> ServerlessConfig | None:
        return self.spec.serverless_config

    @property
    def name(self) -> str:
        return self.spec.variant_name

    @property
    def object_name(self) -> str:
        return variant_object_name(self.endpoint, self.config, self.name)


@dataclass(frozen=True)
class Fleet:
    config: str
    variants: tuple[VariantPlan, ...] = ()
    errors: tuple[str, ...] = ()
    missing: bool = False  # the EndpointConfig does not exist (yet)
    # A variant names an instance type the catalog lacks, or an async config a MultiModel Model:
    # no waiting fixes it.
    invalid: bool = False
    warnings: tuple[str, ...] = ()  # problems worked around (reported, but the fleet still serves)

    @property
    def production(self) -> tuple[VariantPlan, ...]:
        return tuple(v for v in self.variants if not v.shadow)

    @property
    def shadows(self) -> tuple[VariantPlan, ...]:
        return tuple(v for v in self.variants if v.shadow)

    @property
    def is_async(self) -> bool:
        return any(v.async_config is not None for v in self.variants)

    @property
    def complete(self) -> bool:
        """Every variant of the config can be built."""
        return not self.missing and not self.errors and bool(self.production)


def resolve_fleet(
    endpoint: str,
    config_name: str,
    configs: Mapping[str, EndpointConfig],
    models: Mapping[str, Model],
    settings: Settings,
    overrides: list[VariantOverride],
    retained: Mapping[str, int] | None = None,
) -> Fleet:
    config = configs.get(config_name)
    if config is None:
        return Fleet(config_name, missing=True, errors=(f"EndpointConfig {config_name} not found",))
    by_name = {o.variant_name: o for o in overrides}
    variants: list[VariantPlan] = []
    errors: list[str] = []
    invalid = False  # an error no waiting fixes
    specs = [(v, False) for v in config.spec.production_variants]
    specs += [(v, True) for v in config.spec.shadow_production_variants]
    for spec, shadow in specs:
        where = f"EndpointConfig {config_name}: variant {spec.variant_name}"
        instance_type: InstanceType | None
        if spec.serverless_config is not None:
            instance_type = serverless.instance_type(spec.serverless_config)
        else:
            assert spec.instance_type is not None  # admission: one of the two
            instance_type = settings.instance_types.get(spec.instance_type)
        model = models.get(spec.model_name)
        if model is None:
            errors.append(f"{where}: Model {spec.model_name} not found")
            continue
        if instance_type is None:
            errors.append(f"{where}: {unknown_instance_type(spec.instance_type or '', settings)}")
            invalid = True
            continue
        if model.spec.is_multi_model and config.spec.async_inference_config is not None:
            errors.append(f"{where}: Model {model.name} {MSG_NO_ASYNC}")
            invalid = True
            continue
        override = by_name.get(spec.variant_name)
        weight = spec.initial_variant_weight
        if override is not None and override.desired_weight is not None and not shadow:
            weight = override.desired_weight
        variants.append(
            VariantPlan(
                endpoint=endpoint,
                config=config_name,
                spec=spec,
                model=model,
                instance_type=instance_type,
                shadow=shadow,
                weight=weight,
                replicas=_replicas(spec, override, (retained or {}).get(spec.variant_name)),
                autoscaling=spec.autoscaling,
                async_config=config.spec.async_inference_config,
                data_capture=config.spec.data_capture,
                stream=(
                    stream_key(config.namespace, endpoint, config_name, spec.variant_name)
                    if config.spec.async_inference_config is not None
                    else None
                ),
            )
        )
    names = tuple(v.variant_name for v in config.spec.production_variants)
    variants = [replace(v, production_names=names) for v in variants]
    warnings: tuple[str, ...] = ()
    production = [v for v in variants if not v.shadow]
    if production and not any(v.weight > 0 for v in production):
        # A route needs some weight somewhere: ignore overrides that would zero every variant.
        variants = [replace(v, weight=v.spec.initial_variant_weight) for v in variants]
        warnings = ("variantOverrides give every production variant weight 0: the config's weights apply",)
    return Fleet(config_name, tuple(variants), tuple(errors), invalid=invalid, warnings=warnings)


def unknown_instance_type(name: str, settings: Settings) -> str:
    known = ", ".join(sorted(settings.instance_types)) or "none"
    return f'unknown instanceType "{name}" (known: {known}; the catalog is the operator settings\' instanceTypes)'


def _replicas(spec: ProductionVariant, override: VariantOverride | None, retained: int | None) -> int:
    """Replicas to ask for; with autoscaling, the HPA's floor.

    During a rollout an autoscaled variant starts no smaller than the old fleet's variant of
    the same name had grown (retained): it is about to take that traffic. Without autoscaling
    the config (or variantOverrides) says how many. A serverless variant's floor is its
    provisioned concurrency's replicas (0: it scales to zero).
    """
    if spec.serverless_config is not None:
        return serverless.min_replicas(spec.serverless_config)
    if spec.autoscaling is not None:
        floor = max(spec.autoscaling.min_replicas, retained or 0)
        return min(floor, spec.autoscaling.max_replicas)
    if override is not None and override.desired_instance_count is not None:
        return override.desired_instance_count
    return spec.initial_instance_count
