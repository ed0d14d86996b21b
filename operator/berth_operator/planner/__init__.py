"""The pure planner: (specs, observed state) -> desired objects, status and next rollout step.

Also the status of Models and EndpointConfigs (`model_status`, `config_status`).
"""

from .plan import plan_endpoint
from .resources import config_status, model_status
from .types import Event, FleetMetrics, Manifest, ObjectRef, Observed, Plan, PlanInput

__all__ = [
    "Event",
    "FleetMetrics",
    "Manifest",
    "ObjectRef",
    "Observed",
    "Plan",
    "PlanInput",
    "config_status",
    "model_status",
    "plan_endpoint",
]
