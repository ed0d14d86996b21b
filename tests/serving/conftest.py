"""Session-wide ONNX models for the serving tests (built once, a few hundred ms)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serving import models


class Models:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.logreg = models.build_logreg(root / "logreg.onnx")
        self.logreg_plain = models.build_logreg(root / "logreg_plain.onnx", zipmap=False)
        self.mlp = models.build_mlp(root / "mlp.onnx", sizes=(32, 64, 8))
        self.identity = models.build_identity(root / "identity.onnx")
        self.two_input = models.build_two_input(root / "two_input.onnx")
        self.fixed_batch = models.build_fixed_batch(root / "fixed_batch.onnx")


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return Models(tmp_path_factory.mktemp("serving-models"))
