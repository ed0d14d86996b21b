"""Models fetched once through the serving runtime's own `fetch_model`, cached by content.

The cache key is the URI and the expected sha256; for local files also their size and
modification time, so rebuilding a model file is picked up.

Only a model that was fetched whole and checked is kept: a fetch that fails leaves nothing,
and a file that is not a complete ONNX protobuf is handed to the replicas (so they fail with
the runtime's own error, as pods would) but never becomes a cache hit, so the next fetch
downloads it again. An entry whose file changed on disk is not served, and `evict` drops an
entry that a replica could not load (the fleet calls it; see deployment.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlparse

import orjson

if TYPE_CHECKING:
    from berth_serving.fetch import RetryPolicy

MARKER = ".berth-model"
# ModelProto fields ONNX Runtime cannot do without: ir_version, graph, opset_import.
REQUIRED_MODEL_FIELDS = {1: "ir_version", 7: "graph", 8: "opset_import"}


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "berth"


def local_path_of(uri: str) -> Path | None:
    """The file behind a local URI (`file:///abs` or a plain path), else None."""
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if "://" not in uri:
        return Path(uri)
    return None


def cache_key(uri: str, sha256: str | None) -> str:
    parts = [uri, sha256 or ""]
    local = local_path_of(uri)
    if local is not None:
        try:
            stat = local.stat()
            parts += [str(stat.st_size), str(stat.st_mtime_ns)]
        except OSError:
            parts.append("missing")
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
    name = Path(urlparse(uri).path).name or "model"
    return f"{digest}-{name}"[:80]


# --------------------------------------------------------------------------- the check


def onnx_framing_problem(path: Path) -> str | None:
    """Why `path` is not a complete ONNX ModelProto, or None when it is one.

    The cheapest honest check: the top-level protobuf framing, read by seeking from field to
    field (microseconds whatever the size; onnx is not a dependency of local mode and ONNX
    Runtime would load every weight). A cut file is caught, as its last field runs past the
    end or a required field is missing; so is a file that is no protobuf. Damage inside the
    graph is not: a replica that cannot load the model gets it evicted and fetched again."""
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            seen = _top_level_fields(stream, size)
    except _NotProtobuf as problem:
        return f"{path.name} is not a complete ONNX model: {problem}"
    except OSError as error:
        return f"cannot read {path}: {error.strerror or error}"
    missing = [name for number, name in REQUIRED_MODEL_FIELDS.items() if number not in seen]
    if missing:
        return f"{path.name} is not a complete ONNX model: no {', '.join(missing)}"
    return None


class _NotProtobuf(Exception):
    pass


def _varint(stream: BinaryIO) -> int | None:
    """A protobuf varint, or None at the end of the stream (before its first byte)."""
    value, shift = 0, 0
    while True:
        byte = stream.read(1)
        if not byte:
            if shift == 0:
                return None
            raise _NotProtobuf("it ends inside a number")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise _NotProtobuf("a number longer than 10 bytes")


def _top_level_fields(stream: BinaryIO, size: int) -> set[int]:
    seen: set[int] = set()
    while True:
        key = _varint(stream)
        if key is None:
            return seen
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise _NotProtobuf("field number 0")
        if wire_type == 0:
            if _varint(stream) is None:
                raise _NotProtobuf(f"it ends in field {number}")
        elif wire_type in (1, 2, 5):
            length = {1: 8, 5: 4}.get(wire_type)
            if length is None:
                length = _varint(stream)
                if length is None:
                    raise _NotProtobuf(f"it ends in field {number}")
            end = stream.tell() + length
            if end > size:
                raise _NotProtobuf(f"field {number} needs {end} bytes, the file has {size}")
            stream.seek(end)
        else:  # groups (3, 4) are not in ONNX's proto3; 6 and 7 are no wire types
            raise _NotProtobuf(f"wire type {wire_type} in field {number}")
        seen.add(number)


# --------------------------------------------------------------------------- the cache


class ModelCache:
    def __init__(self, root: Path, retry: RetryPolicy | None = None) -> None:
        self.root = root / "models"
        self._retry = retry  # None: fetch_model's own
        self._pending: dict[str, asyncio.Future[Path]] = {}

    async def get(self, uri: str, sha256: str | None) -> Path:
        """The local path of the model to serve; concurrent asks for one key share a fetch."""
        key = cache_key(uri, sha256)
        cached = self._lookup(key)
        if cached is not None:
            return cached
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self._fetch, key, uri, sha256))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(pending)

    def evict(self, uri: str, sha256: str | None) -> None:
        """Drop the entry of (uri, sha256): the next `get` fetches the model again."""
        self._replace(self.root / cache_key(uri, sha256), None)

    def _lookup(self, key: str) -> Path | None:
        """The cached model of `key` when it was checked and its file is unchanged on disk."""
        try:
            marker = orjson.loads((self.root / key / MARKER).read_bytes())
            path = Path(marker["path"])
            path = path if path.is_absolute() else self.root / key / path
            if marker.get("checked") is True and path.stat().st_size == marker["size"]:
                return path
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            pass  # no entry, an entry of an older Berth (no check recorded), or a damaged one
        return None

    def _fetch(self, key: str, uri: str, sha256: str | None) -> Path:
        from berth_serving.fetch import DEFAULT_RETRY, fetch_model

        final = self.root / key
        staging = self.root / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            retry = self._retry or DEFAULT_RETRY
            served = Path(fetch_model(uri, staging, sha256=sha256, retry=retry)).resolve()
            try:
                recorded = str(served.relative_to(staging.resolve()))
                in_place = final / recorded
            except ValueError:  # served in place (a local file): remember where
                recorded = str(served)
                in_place = served
            problem = onnx_framing_problem(served)
            marker = {"path": recorded, "size": served.stat().st_size, "checked": problem is None}
            if problem is not None:
                marker["problem"] = problem
            (staging / MARKER).write_bytes(orjson.dumps(marker))
            self._replace(final, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        # Unchecked models are served (the replica reports why they do not load) but never cached.
        return self._lookup(key) or in_place

    def _replace(self, final: Path, staging: Path | None) -> None:
        """Swap `staging` in as `final` (or just remove `final`), never leaving a half entry."""
        old = final.with_name(f".{final.name}.{os.getpid()}.old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        if staging is not None:
            staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
