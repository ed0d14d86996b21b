"""metadata.generation in local mode, counted as the API server counts it: 1 for a new object,
one more for each change of its spec (a status or metadata change does not count)."""

from __future__ import annotations

from typing import TypeVar

from ..api import Endpoint, MonitoringSchedule

R = TypeVar("R", Endpoint, MonitoringSchedule)  # what local mode versions


def with_generation(previous: R | None, new: R) -> R:
    """`new`, its generation following `previous` (the same object as last read), or 1."""
    generation = 1
    if previous is not None:
        generation = previous.metadata.generation or 1
        if previous.spec != new.spec:
            generation += 1
    meta = new.metadata.model_copy(update={"generation": generation})
    return new.model_copy(update={"metadata": meta})
