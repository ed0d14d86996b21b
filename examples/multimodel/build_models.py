"""Build the multi-model example's models under models/: no download, same bytes every run.

Each is a per-customer fraud score, sigmoid(x . w + b), over four features of a card payment
(amount in hundreds, hour of day / 24, distance from home in 100 km, merchant risk 0..1), with
its own weights from its own seed, so each model answers the same payment differently and
you can tell which one answered:

    models/customer-1.onnx ... customer-6.onnx   plain .onnx files
    models/customer-7.tar.gz                     an archive holding one .onnx
    models/customer-7.tar.gz.sha256              its digest, checked when it loads
    models/eu/merchant-risk.onnx                 a name with a folder in it

Existing files are kept (--force rebuilds).

    python examples/multimodel/build_models.py [--force] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
N_FEATURES = 4
PLAIN = [f"customer-{i}" for i in range(1, 7)]
ARCHIVED = "customer-7"
NESTED = "eu/merchant-risk"


def model_bytes(seed: int) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = rng.normal(0.8, 0.6, size=(N_FEATURES, 1)).astype(np.float32)
    bias = np.array([rng.normal(-2.0, 0.5)], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["logit_raw"]),
            helper.make_node("Add", ["logit_raw", "b"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["fraud_probability"]),
        ],
        f"fraud-{seed}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", N_FEATURES])],
        [helper.make_tensor_value_info("fraud_probability", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="berth-example"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def archive_bytes(onnx_bytes: bytes) -> bytes:
    """A .tar.gz holding model.onnx, with fixed metadata so the digest is the same every run."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.USTAR_FORMAT) as archive:
        info = tarfile.TarInfo("model.onnx")
        info.size, info.mtime, info.mode = len(onnx_bytes), 0, 0o644
        archive.addfile(info, io.BytesIO(onnx_bytes))
    raw = buffer.getvalue()
    return raw[:4] + b"\0\0\0\0" + raw[8:]  # gzip's own mtime, zeroed


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def build(out_dir: Path, force: bool) -> list[Path]:
    wanted: dict[Path, bytes | None] = {}
    for seed, name in enumerate(PLAIN, start=1):
        wanted[out_dir / f"{name}.onnx"] = (
            None if not force and (out_dir / f"{name}.onnx").exists() else model_bytes(seed)
        )
    archive = out_dir / f"{ARCHIVED}.tar.gz"
    if force or not archive.exists():
        wanted[archive] = archive_bytes(model_bytes(len(PLAIN) + 1))
    nested = out_dir / f"{NESTED}.onnx"
    wanted[nested] = None if not force and nested.exists() else model_bytes(100)
    built = []
    for path, data in wanted.items():
        if data is None:
            print(f"{path} exists (--force rebuilds)")
            continue
        write(path, data)
        built.append(path)
        print(f"built {path}")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    write(archive.with_name(archive.name + ".sha256"), f"{digest}  {archive.name}\n".encode())
    return built


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the files exist")
    parser.add_argument("--out-dir", type=Path, default=HERE / "models", help="where to write the models")
    args = parser.parse_args()
    build(args.out_dir, args.force)


if __name__ == "__main__":
    main()
