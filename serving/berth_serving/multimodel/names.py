"""How a multi-model endpoint names its models: one spelling for routers, caches and metrics.

A model is the path of its file relative to the prefix (`customer-17.tar.gz`,
`eu/fraud.onnx`). Clients name it that way in X-Berth-Target-Model (and SageMaker's
X-Amzn-SageMaker-Target-Model), or by its key, the path without the suffix, on v2
(`/v2/models/customer-17/infer`). Both spellings reach the same cache entry and replica.
"""

from __future__ import annotations

from collections.abc import Iterable

TARGET_MODEL_HEADERS = (b"x-berth-target-model", b"x-amzn-sagemaker-target-model")
CACHE_HEADER = b"x-berth-model-cache"
MODEL_SUFFIXES = (".tar.gz", ".onnx")
MAX_NAME_LENGTH = 1024


def model_key(name: str) -> str:
    """The name without its .onnx / .tar.gz suffix (the v2 name, the routing key)."""
    for suffix in MODEL_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def name_problem(name: str) -> str | None:
    """Why a client's model name cannot name anything under a prefix, else None. A name is
    a relative path: no empty, '.' or '..' segment, no backslash or control character."""
    if not name or len(name) > MAX_NAME_LENGTH:
        return f"a model name is 1 to {MAX_NAME_LENGTH} characters"
    if not name.isprintable() or "\\" in name:
        return "a model name is printable and has no backslash"
    if name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
        return "a model name is a relative path with no empty, '.' or '..' segment"
    return None


def target_model(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The model a request names in its headers, else None."""
    for key, value in headers:
        if key in TARGET_MODEL_HEADERS:
            return value.decode("latin-1")
    return None
