"""constraint_violations.json: a window's statistics against the baseline's statistics and constraints.

Features are matched by position (captured CSV has no header: the window's feature i is the
baseline's feature i). Checks, in SageMaker's names: missing_column / extra_column (the feature
count changed), data_type_check, completeness_check, value_range, baseline_drift_check. A
feature that fails its type check (or is missing) is not checked further.
"""

from __future__ import annotations

from typing import Any

from berth_serving.monitor.constraints import allowed_range
from berth_serving.monitor.sketch import ks_distance

# The window's type is acceptable for the baseline's: a Fractional feature may see integers.
_ACCEPTS = {
    "Integral": {"Integral", "Unknown"},
    "Fractional": {"Integral", "Fractional", "Unknown"},
    "String": {"Integral", "Fractional", "String", "Unknown"},
    "Unknown": {"Integral", "Fractional", "String", "Unknown"},
}


def _violation(name: str, check: str, description: str) -> dict[str, str]:
    return {"feature_name": name, "constraint_check_type": check, "description": description}


def violations(
    window: dict[str, Any], baseline: dict[str, Any], constraints: dict[str, Any]
) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    expected = int(constraints["feature_count"])
    seen = int(window["dataset"]["feature_count"])
    total = int(window["dataset"]["item_count"])
    limits = constraints["features"]
    sketches = {f["name"]: f.get("quantiles") for f in baseline["features"]}
    observed = window["features"]
    if total == 0:
        return found
    for index in range(seen, expected):
        name = limits[index]["name"] if index < len(limits) else f"_c{index}"
        found.append(_violation(name, "missing_column", f"expected {expected} features, the data has {seen}"))
    for index in range(expected, seen):
        name = observed[index]["name"] if index < len(observed) else f"_c{index}"
        found.append(_violation(name, "extra_column", f"expected {expected} features, the data has {seen}"))
    for index, limit in enumerate(limits[: min(seen, expected)]):
        if index >= len(observed):
            break
        feature = observed[index]
        name = limit["name"]
        kind = feature["inferred_type"]
        if kind not in _ACCEPTS[limit["inferred_type"]]:
            found.append(
                _violation(name, "data_type_check", f"expected {limit['inferred_type']}, found {kind}")
            )
            continue
        completeness = limit.get("completeness")
        present = feature["count"] / total
        if completeness is not None and present < completeness:
            found.append(
                _violation(
                    name,
                    "completeness_check",
                    f"{present:.4f} of values present, at least {completeness} expected",
                )
            )
        if kind not in ("Integral", "Fractional") or feature.get("min") is None:
            continue
        allowed = allowed_range(limit)
        if allowed is not None and (feature["min"] < allowed[0] or feature["max"] > allowed[1]):
            # Counted by the scan when it knew the range; else every value beyond it counts.
            outside = feature.get("outside_range")
            share = outside / feature["count"] if outside is not None and feature["count"] else 1.0
            most = limit.get("max_outside_fraction") or 0.0
            if share > most:
                counted = f"{share:.4%} of values ({outside}) " if outside is not None else "values "
                found.append(
                    _violation(
                        name,
                        "value_range",
                        f"{counted}outside [{allowed[0]:g}, {allowed[1]:g}], at most {most:.4%} allowed; "
                        f"window range [{feature['min']:g}, {feature['max']:g}]",
                    )
                )
        distribution = limit.get("distribution")
        reference = sketches.get(name)
        if distribution and reference and feature.get("quantiles"):
            distance = ks_distance(reference, feature["quantiles"])
            threshold = float(distribution["threshold"])
            if distance > threshold:
                found.append(
                    _violation(
                        name,
                        "baseline_drift_check",
                        f"Kolmogorov-Smirnov distance {distance:.4f} > {threshold}",
                    )
                )
    return found
