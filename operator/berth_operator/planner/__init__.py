"""The pure planner: (specs, observed state) -> desired objects, status and next rollout step."""

from .plan import plan_endpoint
from .types import Event, FleetMetrics, Manifest, ObjectRef, Observed, Plan, PlanInput

__all__ = ["Event", "FleetMetrics", "Manifest", "ObjectRef", "Observed", "Plan", "PlanInput", "plan_endpoint"]
