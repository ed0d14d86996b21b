"""Golden files: expected planner output kept as YAML under tests/planner/golden/.

Regenerate after an intended change with

    BERTH_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/planner

and review the diff (`git diff tests/planner/golden`) before committing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

GOLDEN_DIR = Path(__file__).parent / "golden"


def dump(objects: list[dict[str, Any]]) -> str:
    return "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in objects)


def assert_golden(name: str, objects: list[dict[str, Any]]) -> None:
    assert objects, "a golden file of nothing proves nothing"
    path = GOLDEN_DIR / f"{name}.yaml"
    text = dump(objects)
    if os.environ.get("BERTH_UPDATE_GOLDEN") == "1":
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with BERTH_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text()
    assert text == expected, (
        f"{path} differs from the planner's output; if intended, regenerate (see golden.py)"
    )
