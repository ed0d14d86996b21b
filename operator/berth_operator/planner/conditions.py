"""metav1.Conditions that keep lastTransitionTime while their status does not change."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from ..api import Condition
from .clock import stamp

Status = Literal["True", "False", "Unknown"]


def condition(
    previous: Sequence[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> Condition:
    value: Status = "True" if status else "False"
    before = next((c for c in previous if c.type == type_), None)
    since = before.last_transition_time if before is not None and before.status == value else stamp(now)
    return Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )


def parsed_conditions(stored: Iterable[Mapping[str, Any]] | None) -> list[Condition]:
    """The stored conditions that parse; one that does not cannot keep its lastTransitionTime."""
    previous = []
    for item in stored or []:
        try:
            previous.append(Condition.model_validate(item))
        except ValidationError:
            continue
    return previous
