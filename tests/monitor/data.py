"""Generated datasets and capture files for the monitor tests and the benchmark."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

FEATURES = 5  # _c0.._c3 Fractional (normal), _c4 Integral (0..9)


def table(rows: int, seed: int, shift: dict[int, float] | None = None) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    numbers = rng.normal(0.0, 1.0, size=(rows, FEATURES - 1))
    for column, amount in (shift or {}).items():
        numbers[:, column] += amount
    counts = rng.integers(0, 10, size=rows)
    return [[f"{x:.4f}" for x in row] + [str(int(c))] for row, c in zip(numbers, counts, strict=True)]


def write_csv(path: Path, rows: list[list[str]], header: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([",".join(f"f{i}" for i in range(len(rows[0])))] if header else []) + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def event(data: str, when: datetime, encoding: str = "CSV", content_type: str = "text/csv") -> str:
    return json.dumps(
        {
            "captureData": {
                "endpointInput": {
                    "observedContentType": content_type,
                    "mode": "INPUT",
                    "data": data,
                    "encoding": encoding,
                },
                "endpointOutput": {
                    "observedContentType": "application/json",
                    "mode": "OUTPUT",
                    "data": '{"predictions":[0]}',
                    "encoding": "JSON",
                },
            },
            "eventMetadata": {
                "eventId": str(uuid.uuid4()),
                "inferenceId": str(uuid.uuid4()),
                "inferenceTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "variant": "blue",
                "source": "realtime",
            },
            "eventVersion": "0",
        }
    )


def write_captures(
    variant_dir: Path, rows: list[list[str]], start: datetime, spread: timedelta, files: int = 2
) -> list[Path]:
    """Events of one CSV row each, stamped evenly over [start, start + spread), in the hour folders."""
    by_file: dict[Path, list[str]] = {}
    step = spread / max(len(rows), 1)
    for index, row in enumerate(rows):
        when = start + step * index
        folder = variant_dir / when.strftime("%Y/%m/%d/%H")
        path = folder / f"part-{index % files}.jsonl"
        by_file.setdefault(path, []).append(event(",".join(row), when))
    for path, lines in by_file.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    return sorted(by_file)


T0 = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)
