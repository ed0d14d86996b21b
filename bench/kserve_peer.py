"""The peer for bench/serving.py: KServe's Python model server wrapping the same ONNX Runtime
session (same options as berth serve: spinning off, threads from the CPU count). Runs in
its own virtualenv (kserve pins many packages): `python kserve_peer.py MODEL.onnx PORT`.
Quiet: no access log, no per-request latency log."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import kserve
import numpy as np
import onnxruntime as ort


class OnnxModel(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.ready = True

    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        batch = np.asarray(payload["instances"], dtype=np.float32)
        return {"predictions": self.session.run(None, {self.input_name: batch})[0].tolist()}


if __name__ == "__main__":
    path, port = sys.argv[1], int(sys.argv[2])
    server = kserve.ModelServer(http_port=port, enable_grpc=False, enable_latency_logging=False, workers=1)
    # After ModelServer: its constructor (re)configures logging.
    for name in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(name).disabled = True
    server.start([OnnxModel("model", path)])
