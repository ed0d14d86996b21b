"""Statistics of the `rows` view (vals VARCHAR[]), per feature, in one DuckDB scan.

statistics.json:
{"version": 0, "dataset": {"item_count": rows, "unparsed_events": n, "feature_count": n},
 "features": [{"name", "inferred_type": Integral | Fractional | String | Unknown, "count" (present
   values), "missing" (empty or absent), "min", "max", "mean", "stddev", "distinct" (approximate),
   "quantiles": 101 values at 0, 0.01, ..., 1 (numeric features), "outside_range" (a window's
   values outside its constraints' range, when the run checks one)}]}
A value is missing when it is empty or absent (a row shorter than the others); a feature is
Integral when every present value is an integer, Fractional when every one is a number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import duckdb

from berth_serving.monitor.sketch import LEVELS

VERSION = 0


Range = tuple[float, float] | None
PER_FEATURE = 10  # aggregates per feature in the scan's one row


def _outside(d: str, allowed: Range) -> str:
    if allowed is None or not all(math.isfinite(bound) for bound in allowed):
        return "NULL"
    return f"count(*) FILTER (WHERE {d} < {allowed[0]!r} OR {d} > {allowed[1]!r})"


def _aggregates(count: int, ranges: Sequence[Range]) -> str:
    levels = "[" + ", ".join(f"{level:.2f}" for level in LEVELS) + "]"
    parts = ["count(*) FILTER (WHERE NOT bad)", "coalesce(max(len(vals)), 0)", "count(*) FILTER (WHERE bad)"]
    for i in range(1, count + 1):
        v, d = f"v{i}", f"d{i}"
        parts += [
            f"count({v})",
            f"count(*) FILTER (WHERE {d} = trunc({d}) AND abs({d}) < 9.2e18 AND strpos({v}, '.') = 0)",
            f"count({d})",
            f"min({d})",
            f"max({d})",
            f"avg({d})",
            f"stddev_samp({d})",
            f"approx_quantile({d}, {levels})",
            f"approx_count_distinct({v})",
            _outside(d, ranges[i - 1] if i - 1 < len(ranges) else None),
        ]
    columns = ", ".join(
        f"nullif(trim(vals[{i}]), '') AS v{i}, try_cast(nullif(trim(vals[{i}]), '') AS DOUBLE) AS d{i}"
        for i in range(1, count + 1)
    )
    inner = f"SELECT vals, bad{', ' + columns if columns else ''} FROM rows"
    return f"SELECT {', '.join(parts)} FROM ({inner})"


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _scan(
    db: duckdb.DuckDBPyConnection, names: list[str], ranges: Sequence[Range]
) -> tuple[int, int, int, list[dict[str, Any]]]:
    row = db.execute(_aggregates(len(names), ranges)).fetchone()
    assert row is not None
    total, width, unparsed = int(row[0]), int(row[1]), int(row[2])
    features = []
    for index, name in enumerate(names):
        at = 3 + PER_FEATURE * index
        present, ints, nums, low, high, mean, std, quantiles, distinct, outside = row[at : at + PER_FEATURE]
        if present == 0:
            kind = "Unknown"
        elif ints == present:
            kind = "Integral"
        elif nums == present:
            kind = "Fractional"
        else:
            kind = "String"
        feature: dict[str, Any] = {
            "name": name,
            "inferred_type": kind,
            "count": int(present),
            "missing": total - int(present),
            "distinct": int(distinct),
        }
        if kind in ("Integral", "Fractional"):
            sketch = [_number(q) for q in quantiles]
            # The T-Digest's ends are estimates; the exact min and max are known.
            sketch[0], sketch[-1] = _number(low), _number(high)
            feature.update(
                min=_number(low),
                max=_number(high),
                mean=_number(mean),
                stddev=_number(std) or 0.0,
                quantiles=sketch,
            )
            if outside is not None:
                feature["outside_range"] = int(outside)
        features.append(feature)
    return total, width, unparsed, features


def compute(db: duckdb.DuckDBPyConnection, names: list[str], ranges: Sequence[Range] = ()) -> dict[str, Any]:
    """statistics.json's content; features beyond `names` (longer rows) are named _cN. With
    `ranges` (by position), each numeric feature also counts its values outside its range.

    `rows` has vals VARCHAR[] and bad BOOLEAN (an event that held no rows of features: counted
    as unparsed, its vals NULL)."""
    total, width, unparsed, features = _scan(db, names, ranges)
    if width > len(names):
        names = names + [f"_c{i}" for i in range(len(names), width)]
        total, width, unparsed, features = _scan(db, names, ranges)
    return {
        "version": VERSION,
        "dataset": {"item_count": total, "unparsed_events": unparsed, "feature_count": width},
        "features": features,
    }
