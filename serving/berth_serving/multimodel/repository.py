"""The models under a multi-model prefix: which exist, what a client's name means, and
fetching one (with the same fetch code as `berth fetch-model`, its NAME.sha256 checked).

Blocking: the cache calls it from a worker thread.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from pathlib import Path

from berth_serving.errors import HTTPError
from berth_serving.fetch import (
    FetchError,
    ModelNotFound,
    RetryPolicy,
    list_prefix,
    read_small,
    resolve_model,
)
from berth_serving.multimodel.names import MODEL_SUFFIXES, model_key, name_problem

# A request waits on its model's load: retry a flaky store, but give up well inside the
# 60 s request timeout (fetch-model's own policy allows two minutes).
ON_DEMAND_RETRY = RetryPolicy(
    attempts=3, first_backoff_seconds=0.25, give_up_after_seconds=20, timeout_seconds=15
)
# A name missing from the listing is looked up again at most this often (a model uploaded
# after start becomes servable within it; a flood of unknown names costs one listing each).
LISTING_SECONDS = 10.0
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def digest_beside(uri: str, retry: RetryPolicy = ON_DEMAND_RETRY) -> str | None:
    """The SHA-256 in URI.sha256 (sha256sum's format is fine), None when there is no such
    object; FetchError when it holds no digest."""
    text = read_small(uri + ".sha256", retry=retry)
    if text is None:
        return None
    found = _SHA256.match(text.decode("ascii", "replace").strip())
    if found is None:
        raise FetchError(f"{uri}.sha256 holds no SHA-256 hex digest")
    return found.group(0).lower()


class UnknownModel(HTTPError):
    def __init__(self, name: str, prefix: str) -> None:
        super().__init__(404, f"no model {model_key(name)!r} (.onnx or .tar.gz) under {prefix}")


def normalized_prefix(uri: str) -> str:
    return uri if uri.endswith("/") else uri + "/"


class Repository:
    def __init__(self, prefix: str, scratch: Path, retry: RetryPolicy = ON_DEMAND_RETRY) -> None:
        self.prefix = normalized_prefix(prefix)
        self._scratch = scratch
        self._retry = retry
        self._lock = threading.Lock()
        self._files: dict[str, list[str]] | None = None  # key -> file names, when listable
        self._listable = True
        self._listed_at = float("-inf")

    # --- names -----------------------------------------------------------------------
    def index(self, refresh: bool = False) -> list[str] | None:
        """Every model file under the prefix, or None when the prefix cannot be listed (http)."""
        with self._lock:
            if refresh or self._files is None:
                self._list()
            if self._files is None:
                return None
            return sorted(name for names in self._files.values() for name in names)

    def resolve(self, requested: str) -> str:
        """The file a client's name means (`customer-17.tar.gz`, or its key `customer-17`).
        400 for a name that cannot name anything, 404 for one that names nothing."""
        problem = name_problem(requested)
        if problem is not None:
            raise HTTPError(400, f"bad model name {requested[:100]!r}: {problem}")
        key = model_key(requested)
        with self._lock:
            if self._files is None or (key not in self._files and self._stale()):
                self._list()
            if not self._listable:
                # No listing: the name is tried as given, then with each suffix, at fetch time.
                return requested
            assert self._files is not None
            names = self._files.get(key, [])
        if requested in names:
            return requested
        if not names:
            raise UnknownModel(requested, self.prefix)
        return names[0]  # a key naming both KEY.onnx and KEY.tar.gz: the .onnx (sorted first below)

    def _stale(self) -> bool:
        return time.monotonic() - self._listed_at >= LISTING_SECONDS

    def _list(self) -> None:
        self._listed_at = time.monotonic()
        files = list_prefix(self.prefix, self._retry)
        if files is None:
            self._listable, self._files = False, None
            return
        by_key: dict[str, list[str]] = {}
        for name in files:
            if name.endswith(MODEL_SUFFIXES) and name_problem(name) is None:
                by_key.setdefault(model_key(name), []).append(name)
        for names in by_key.values():
            names.sort(key=lambda name: (not name.endswith(".onnx"), name))
        self._files = by_key

    # --- fetching --------------------------------------------------------------------
    def fetch(self, name: str) -> tuple[Path, Path]:
        """The .onnx to load for a resolved name, and the scratch directory its copy is in
        (empty when a local .onnx is used in place). Remove that directory on unload."""
        candidates = (
            [name]
            if name.endswith(MODEL_SUFFIXES) or self._listable
            else [
                name,
                *(name + suffix for suffix in MODEL_SUFFIXES),
            ]
        )
        for candidate in candidates:
            dest = self.scratch_dir(candidate)
            try:
                path = resolve_model(self.prefix + candidate, dest, self.sha256(candidate), retry=self._retry)
                return path, dest
            except ModelNotFound:
                continue
        raise UnknownModel(name, self.prefix)

    def sha256(self, name: str) -> str | None:
        """The digest in NAME.sha256 beside the model, else None."""
        return digest_beside(self.prefix + name, self._retry)

    def scratch_dir(self, name: str) -> Path:
        # Hashed: a model's relative path may be deep or long; the directory name must not be.
        return self._scratch / hashlib.sha256(name.encode()).hexdigest()[:24]
