"""Request bodies in (JSON, CSV, NPY) and responses out, for `/invocations`.

JSON accepts `{"instances": [...]}`, a bare list, or `{"inputs": {NAME: ...}}` for several
inputs (also a list of per-row objects `[{NAME: ...}, ...]`, and Open Inference Protocol
tensors `{"inputs": [{"name", "shape", "datatype", "data"}]}`). CSV is a row per record for a
single-input model; NPY is one array for a single-input model (its header is checked against
the body before anything is allocated).

`Accept` picks the answer's type: JSON when it is absent, `*/*`, `application/*` or JSON;
CSV for `text/csv` or `text/*`; NPY for `application/x-npy`; q-values are honoured and
`q=0` refuses a type. Anything else is a 406 naming the three types offered.

A single output answers `{"predictions": [...]}`, several `{"outputs": {NAME: [...]}}`. CSV
and NPY carry one tensor: for a model with several outputs the `X-Berth-Output` header must
name it, else the answer is a 406 saying so (choosing one silently would drop the others). An
`X-Berth-Output` naming no output is a 400; JSON answers carry every output whatever it says.
ZipMap outputs (skl2onnx classifiers: a list of {class: probability}) stay dicts in JSON and
become a [rows, classes] matrix (classes in sorted order) in CSV and NPY. NaN and infinity
travel in CSV (`nan`, `inf`) and NPY; JSON has neither, and a JSON answer writes them as null.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from berth_serving import numbers
from berth_serving.errors import HTTPError, bad_request
from berth_serving.signature import Signature
from berth_serving.tensors import as_matrix, dumps
from berth_serving.v2 import decode_json_tensors

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
OFFERED = f"{JSON}, {CSV} or {NPY}"
# Media ranges of an Accept header -> the answer type they select.
_ANSWER_TYPES = {
    JSON: JSON,
    "*/*": JSON,
    "application/*": JSON,
    CSV: CSV,
    "text/*": CSV,
    NPY: NPY,
    "application/npy": NPY,
}


def media_type(header: bytes | str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    if not header:
        return ""
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    return text.split(";", 1)[0].strip().lower()


def response_type(accept: bytes | str | None) -> str:
    """The answer's type from `Accept` (see the module docstring); HTTPError 406 when none of
    the types it accepts can be served."""
    if not accept or accept in (b"*/*", "*/*", b"application/json", JSON):
        return JSON
    text = accept.decode("latin-1") if isinstance(accept, bytes) else accept
    best, best_q = None, 0.0
    for part in text.split(","):
        kind, _, parameters = part.partition(";")
        answer = _ANSWER_TYPES.get(kind.strip().lower())
        if answer is None:
            continue
        q = _quality(parameters)
        if q > best_q:
            best, best_q = answer, q
    if best is None:
        asked = ", ".join(media_type(part) for part in text.split(",") if part.strip())
        raise HTTPError(406, f"cannot answer in {asked}; this server answers {OFFERED}")
    return best


def _quality(parameters: str) -> float:
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def carried_output(kind: str, wanted: str | None, output_names: Sequence[str]) -> str | None:
    """The output a CSV or NPY answer carries (None for JSON, which carries them all);
    HTTPError 400 for an unknown X-Berth-Output, 406 when several outputs leave it unsaid.
    Checked before the model runs."""
    if wanted is not None and wanted not in output_names:
        raise bad_request(f"unknown output {wanted!r}; the model has {', '.join(map(repr, output_names))}")
    if kind == JSON:
        return None
    if wanted is not None:
        return wanted
    if len(output_names) == 1:
        return output_names[0]
    raise HTTPError(
        406,
        f"{kind} carries one output and the model has {len(output_names)} "
        f"({', '.join(map(repr, output_names))}): name one in the X-Berth-Output header",
    )


def decode(content_type: str, body: bytes, signature: Signature) -> dict[str, Any]:
    """Body -> {input name: raw value}. Raises HTTPError 400 (bad body) or 415 (type)."""
    if content_type in (JSON, "", "application/*+json") or content_type.endswith("+json"):
        return _decode_json(body, signature)
    if content_type in (CSV, "application/csv"):
        return {_single_input(signature, "CSV"): _decode_csv(body)}
    if content_type in (NPY, "application/npy"):
        return {_single_input(signature, "NPY"): decode_npy(body)}
    raise HTTPError(415, f"unsupported content type {content_type!r}; use {OFFERED}")


def _single_input(signature: Signature, what: str) -> str:
    if len(signature.inputs) != 1:
        raise bad_request(f"{what} bodies feed single-input models only; send JSON {{'inputs': {{...}}}}")
    return signature.inputs[0].name


def _decode_json(body: bytes, signature: Signature) -> dict[str, Any]:
    if len(signature.inputs) == 1:
        # The usual body, rows of numbers for one float input, straight into its matrix (C);
        # any other body reads as below, and is checked and refused there as ever.
        spec = signature.inputs[0]
        rows = numbers.json_rows(body, spec.dtype) if spec.dtype is not None else None
        if rows is not None:
            return {spec.name: rows}
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


def decode_npy(body: bytes) -> np.ndarray:
    """A .npy body as an array over the body's own bytes. The header's shape and dtype must
    account for exactly the bytes that follow it: a header claiming (99999999999, 4) is a
    400, not an allocation. Object arrays (pickles) are refused."""
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as error:
        raise bad_request(f"body is not a valid .npy array: {error}") from None
    if dtype.hasobject:
        raise bad_request("body is a .npy array of Python objects, which this server does not read")
    offset = stream.tell()
    count = math.prod(shape)
    expected = count * dtype.itemsize
    if expected != len(body) - offset:
        raise bad_request(
            f"the .npy header says shape {shape} of {dtype} ({expected} bytes), "
            f"the body has {len(body) - offset} bytes after it"
        )
    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran else "C")


def encode(outputs: Mapping[str, Any], kind: str, carried: str | None = None) -> bytes:
    """Per-request outputs -> the response body in `kind` (JSON, CSV or NPY); CSV and NPY carry
    the output `carried` (see carried_output)."""
    if kind == JSON:
        if len(outputs) == 1:
            return dumps({"predictions": next(iter(outputs.values()))})
        return dumps({"outputs": outputs})
    array = as_matrix(outputs[carried] if carried is not None else next(iter(outputs.values())))
    if kind == NPY:
        if array.dtype == np.dtype(object):  # strings: a unicode array, not a pickle
            array = array.astype(str)
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()
    return _csv(array)


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
