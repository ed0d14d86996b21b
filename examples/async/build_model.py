"""Build the async example's model: the quickstart's champion, written here as model.onnx.

python examples/async/build_model.py [--force]
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "quickstart"))

from build_model import MODELS, build  # noqa: E402  (the quickstart's builder, found on the path above)


def main() -> None:
    path = HERE / "model.onnx"
    if path.exists() and "--force" not in sys.argv[1:]:
        print(f"{path} exists (--force rebuilds)")
        return
    params = MODELS["champion"]
    build(path, params["seed"], params["c"])
    print(f"built {path}")


if __name__ == "__main__":
    main()
