"""Request bodies in (JSON, CSV, NPY) and responses out, for `/invocations`.

JSON accepts `{"instances": [...]}`, a bare list, or `{"inputs": {NAME: ...}}` for several
inputs (also a list of per-row objects `[{NAME: ...}, ...]`). CSV is a row per record for a
single-input model; NPY is one array for a single-input model. A single output answers
`{"predictions": [...]}`, several `{"outputs": {NAME: [...]}}`. CSV and NPY answers carry
one tensor: the output named by the `X-Berth-Output` header, else the model's first output.
ZipMap outputs (skl2onnx classifiers: a list of {class: probability}) stay dicts in JSON and
become a [rows, classes] matrix (classes in sorted order) in CSV and NPY.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from berth_serving.errors import HTTPError, bad_request
from berth_serving.signature import Signature

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def media_type(header: bytes | str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    if not header:
        return ""
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    return text.split(";", 1)[0].strip().lower()


def response_type(accept: bytes | str | None) -> str:
    """The answer's type from `Accept`: CSV or NPY when asked for, JSON otherwise."""
    if not accept:
        return JSON
    text = accept.decode("latin-1") if isinstance(accept, bytes) else accept
    for part in text.split(","):
        kind = media_type(part)
        if kind in (JSON, CSV, NPY):
            return kind
    return JSON


def decode(content_type: str, body: bytes, signature: Signature) -> dict[str, Any]:
    """Body -> {input name: raw value}. Raises HTTPError 400 (bad body) or 415 (type)."""
    if content_type in (JSON, "", "application/*+json") or content_type.endswith("+json"):
        return _decode_json(body, signature)
    if content_type in (CSV, "application/csv"):
        return {_single_input(signature, "CSV"): _decode_csv(body)}
    if content_type in (NPY, "application/npy"):
        return {_single_input(signature, "NPY"): _decode_npy(body)}
    raise HTTPError(415, f"unsupported content type {content_type!r}; use {JSON}, {CSV} or {NPY}")


def _single_input(signature: Signature, what: str) -> str:
    if len(signature.inputs) != 1:
        raise bad_request(f"{what} bodies feed single-input models only; send JSON {{'inputs': {{...}}}}")
    return signature.inputs[0].name


def _decode_json(body: bytes, signature: Signature) -> dict[str, Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise bad_request(f"body is not valid JSON: {error}") from None
    if isinstance(document, dict):
        if "instances" in document:
            return _from_instances(document["instances"], signature)
        inputs = document.get("inputs")
        if isinstance(inputs, dict):
            return inputs
        if isinstance(inputs, list):  # Open Inference Protocol tensors, posted to /invocations
            from berth_serving.v2 import decode_json_tensors

            return decode_json_tensors(inputs)
    elif isinstance(document, list):
        return _from_instances(document, signature)
    raise bad_request('expected {"instances": [...]}, a list, or {"inputs": {NAME: ...}}')


def _from_instances(instances: Any, signature: Signature) -> dict[str, Any]:
    if not isinstance(instances, list):
        raise bad_request('"instances" must be a list')
    if instances and isinstance(instances[0], dict):
        # One object per row: [{"a": [...], "b": [...]}, ...] -> columns.
        try:
            return {name: [row[name] for row in instances] for name in signature.input_names}
        except (KeyError, TypeError):
            raise bad_request(f"each instance needs every input; {signature.expected()}") from None
    if len(signature.inputs) != 1:
        raise bad_request(
            f'model has several inputs: send {{"inputs": {{NAME: ...}}}}; {signature.expected()}'
        )
    return {signature.inputs[0].name: instances}


def _decode_csv(body: bytes) -> list[list[float]]:
    try:
        text = body.decode("utf-8")
        rows = [[float(cell) for cell in line.split(",")] for line in text.splitlines() if line.strip()]
    except (UnicodeDecodeError, ValueError):
        raise bad_request("CSV body must be rows of numbers separated by commas") from None
    if not rows:
        raise bad_request("CSV body is empty")
    return rows


def _decode_npy(body: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise bad_request(f"body is not a valid .npy array: {error}") from None
    if not isinstance(array, np.ndarray):
        raise bad_request("body is not a single .npy array")
    return array


def _json_default(value: Any) -> Any:
    # orjson hands over what it cannot write natively: non-contiguous or float16 arrays, numpy scalars.
    if isinstance(value, np.ndarray):
        return value.astype(np.float32).tolist() if value.dtype == np.float16 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialize {type(value).__name__}")


def dumps(document: Any) -> bytes:
    return orjson.dumps(document, default=_json_default, option=_JSON_OPTIONS)


def encode(outputs: Mapping[str, Any], kind: str, wanted: str | None = None) -> bytes:
    """Per-request outputs -> the response body in `kind` (JSON, CSV or NPY)."""
    if kind == JSON:
        if len(outputs) == 1:
            return dumps({"predictions": next(iter(outputs.values()))})
        return dumps({"outputs": outputs})
    array = as_matrix(_pick(outputs, wanted))
    if kind == NPY:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()
    return _csv(array)


def _pick(outputs: Mapping[str, Any], wanted: str | None) -> Any:
    if wanted:
        if wanted not in outputs:
            raise bad_request(f"unknown output {wanted!r}; the model has {', '.join(map(repr, outputs))}")
        return outputs[wanted]
    return next(iter(outputs.values()))


def as_matrix(value: Any) -> np.ndarray:
    """An output as an array; ZipMap's list of {class: probability} becomes [rows, classes]."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, list) and value and isinstance(value[0], dict):
        classes = sorted(value[0])
        return np.asarray([[row[c] for c in classes] for row in value], dtype=np.float32)
    return np.asarray(value)


def _csv(array: np.ndarray) -> bytes:
    if array.ndim == 0:
        array = array.reshape(1, 1)
    elif array.ndim == 1:
        array = array.reshape(-1, 1)
    elif array.ndim > 2:
        array = array.reshape(array.shape[0], -1)
    rows, columns = array.shape
    if rows == 0:
        return b"\n"
    # One %-format over the whole matrix: as f"{v:.9g}" / str(v) per value, without the per-row Python work.
    line = ",".join(["%.9g" if array.dtype.kind == "f" else "%s"] * columns) + "\n"
    return ((line * rows) % tuple(array.ravel().tolist())).encode()
