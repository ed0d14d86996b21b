"""constraints.json: what a window's data must satisfy, suggested from the baseline statistics and
meant to be edited by a person.

{"version": 0, "feature_count": n,
 "features": [{"name", "inferred_type", "completeness": minimum present fraction,
   "min", "max", "range_tolerance": a fraction of max - min allowed beyond either end,
   "max_outside_fraction": the share of a window's values allowed outside that range (a large
     window of the same distribution has a few values beyond a smaller baseline's extremes;
     absent means none may be),
   "distribution": {"measure": "ks", "threshold": 0.1}}]}
Remove a key (or set it to null) to turn its check off for that feature.
"""

from __future__ import annotations

import math
from typing import Any

COMPLETENESS_MARGIN = 0.05  # suggested completeness: the baseline's present fraction minus this
RANGE_TOLERANCE = 0.1  # values may exceed the baseline's range by 10% of its width
# At most 0.1% of a window outside that widened range: a normal feature of a 1,000-row baseline
# puts ~0.01% of the same distribution there, a broken upstream far more.
MAX_OUTSIDE_FRACTION = 0.001
KS_THRESHOLD = 0.1  # two-sample Kolmogorov-Smirnov statistic, from the quantile sketches
VERSION = 0
TYPES = ("Integral", "Fractional", "String", "Unknown")


class ConstraintsError(ValueError):
    """A statistics or constraints file that cannot be used."""


def suggest(statistics: dict[str, Any]) -> dict[str, Any]:
    features = []
    total = statistics["dataset"]["item_count"]
    for feature in statistics["features"]:
        present = feature["count"] / total if total else 0.0
        entry: dict[str, Any] = {
            "name": feature["name"],
            "inferred_type": feature["inferred_type"],
            "completeness": max(0.0, math.floor((present - COMPLETENESS_MARGIN) * 1000) / 1000),
        }
        if feature["inferred_type"] in ("Integral", "Fractional"):
            entry.update(
                min=feature["min"],
                max=feature["max"],
                range_tolerance=RANGE_TOLERANCE,
                max_outside_fraction=MAX_OUTSIDE_FRACTION,
                distribution={"measure": "ks", "threshold": KS_THRESHOLD},
            )
        features.append(entry)
    return {"version": VERSION, "feature_count": statistics["dataset"]["feature_count"], "features": features}


def allowed_range(limit: dict[str, Any]) -> tuple[float, float] | None:
    """[min - slack, max + slack] of a feature's constraints, or None when its range check is off."""
    low, high = limit.get("min"), limit.get("max")
    if low is None or high is None:
        return None
    slack = (limit.get("range_tolerance") or 0.0) * (high - low)
    return float(low - slack), float(high + slack)


def check_statistics(statistics: Any, what: str) -> dict[str, Any]:
    if not isinstance(statistics, dict) or not isinstance(statistics.get("features"), list):
        raise ConstraintsError(f"{what} is not a statistics.json (no features list)")
    for feature in statistics["features"]:
        if not isinstance(feature, dict) or not isinstance(feature.get("name"), str):
            raise ConstraintsError(f"{what}: every feature needs a name")
    return statistics


def check_constraints(constraints: Any, what: str) -> dict[str, Any]:
    if not isinstance(constraints, dict) or not isinstance(constraints.get("features"), list):
        raise ConstraintsError(f"{what} is not a constraints.json (no features list)")
    if not isinstance(constraints.get("feature_count"), int):
        raise ConstraintsError(f"{what}: feature_count must be an integer")
    for feature in constraints["features"]:
        if not isinstance(feature, dict) or not isinstance(feature.get("name"), str):
            raise ConstraintsError(f"{what}: every feature needs a name")
        if feature.get("inferred_type") not in TYPES:
            raise ConstraintsError(
                f"{what}: {feature['name']}: inferred_type must be one of {', '.join(TYPES)}"
            )
        for key in ("completeness", "min", "max", "range_tolerance", "max_outside_fraction"):
            value = feature.get(key)
            if value is not None and not isinstance(value, int | float):
                raise ConstraintsError(f"{what}: {feature['name']}: {key} must be a number")
        distribution = feature.get("distribution")
        if distribution is not None and (
            not isinstance(distribution, dict) or not isinstance(distribution.get("threshold"), int | float)
        ):
            raise ConstraintsError(f"{what}: {feature['name']}: distribution needs a numeric threshold")
    return constraints
