"""Time as the planner writes and reads it: one precision for every timestamp it stores.

Timestamps are RFC 3339 with microseconds (Kubernetes' MicroTime format) and `now` is used as
given, so a stored step start and the clock compare like with like: a bake of 3 s lasts 3 s.
Whole seconds would cut up to a second off every wait (a 3 s bake once lasted about 2 s).
"""

from __future__ import annotations

from datetime import UTC, datetime


def stamp(moment: datetime) -> str:
    """`2026-12-01T10:00:00.123456Z`."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse(text: str) -> datetime:
    """Any RFC 3339 time (whole seconds or fractions, Z or an offset), as an aware datetime."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def seconds_since(text: str | None, now: datetime) -> float:
    """Seconds from the stored time to now (0 when nothing is stored)."""
    return (now - parse(text)).total_seconds() if text else 0.0
