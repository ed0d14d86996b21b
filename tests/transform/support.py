"""Helpers for the transform tests: datasets, the model's own answers (raw ONNX Runtime), and
`berth transform` as a real subprocess."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[2]
BERTH = [str(Path(sys.executable).with_name("berth"))]


def rows(count: int, features: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, features)).round(4).astype(np.float32)


def csv_bytes(array: np.ndarray) -> bytes:
    return b"".join((",".join(f"{v:.4f}" for v in row) + "\n").encode() for row in array.tolist())


def write_csv(path: Path, array: np.ndarray, *, gzipped: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = csv_bytes(array)
    path.write_bytes(gzip.compress(data) if gzipped else data)
    return path


def raw_outputs(model: Path, array: np.ndarray) -> list[Any]:
    """What the model itself answers for these rows: plain ONNX Runtime, not Berth."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: array})  # type: ignore[no-any-return]


def read_csv_out(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", ndmin=2)


def berth_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "JOB_COMPLETION_INDEX"}
    return {**env, **extra}


def run_berth(
    args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    # Bytes, decoded here: text mode would turn the progress line's carriage returns into newlines.
    result = subprocess.run(
        [*BERTH, *args], env=env or berth_env(), capture_output=True, timeout=timeout, cwd=REPO
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )
