"""Models fetched once through the serving runtime's own `fetch_model`, cached by content.

The cache key is the URI and the expected sha256; for local files also their size and
modification time, so rebuilding a model file is picked up.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

MARKER = ".berth-model"


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


class ModelCache:
    def __init__(self, root: Path) -> None:
        self.root = root / "models"
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

    def _lookup(self, key: str) -> Path | None:
        marker = self.root / key / MARKER
        try:
            path = Path(marker.read_text().strip())
        except OSError:
            return None
        path = path if path.is_absolute() else self.root / key / path
        return path if path.exists() else None

    def _fetch(self, key: str, uri: str, sha256: str | None) -> Path:
        from berth_serving.fetch import fetch_model

        final = self.root / key
        staging = self.root / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            served = Path(fetch_model(uri, staging, sha256=sha256)).resolve()
            try:
                recorded = str(served.relative_to(staging.resolve()))
            except ValueError:  # served in place (a local file): remember where
                recorded = str(served)
            (staging / MARKER).write_text(recorded)
            shutil.rmtree(final, ignore_errors=True)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        cached = self._lookup(key)
        if cached is None:
            raise RuntimeError(f"model cache: {uri} fetched but not found under {final}")
        return cached
