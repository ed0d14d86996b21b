"""`berth fetch-model --cache-dir`: a node-local cache keyed by sha256, never trusted blindly."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from berth_serving.fetch import FetchError, fetch_model

from tests.serving.models import build_identity


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, str]:
    path = build_identity(tmp_path / "store" / "model.onnx")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_miss_fills_the_cache_and_a_hit_needs_no_source(source: tuple[Path, str], tmp_path: Path) -> None:
    path, digest = source
    cache = tmp_path / "cache"
    first = fetch_model(f"file://{path}", tmp_path / "pod1", digest, cache_dir=cache)
    assert (cache / digest / "model.onnx").read_bytes() == path.read_bytes()
    assert not [p for p in (cache / digest).iterdir() if p.name.startswith(".")]  # no temporary left
    path.unlink()  # the second pod on the node never reads the store
    second = fetch_model(f"file://{path}", tmp_path / "pod2", digest, cache_dir=cache)
    assert second.read_bytes() == first.read_bytes()


def test_a_corrupted_entry_is_dropped_and_downloaded_anew(source: tuple[Path, str], tmp_path: Path) -> None:
    path, digest = source
    cache = tmp_path / "cache"
    (cache / digest).mkdir(parents=True)
    (cache / digest / "model.onnx").write_bytes(b"not the model")
    fetched = fetch_model(f"file://{path}", tmp_path / "pod", digest, cache_dir=cache)
    assert fetched.read_bytes() == path.read_bytes()
    assert (cache / digest / "model.onnx").read_bytes() == path.read_bytes()  # repaired


def test_a_corrupted_entry_without_a_source_fails_rather_than_serve_it(
    source: tuple[Path, str], tmp_path: Path
) -> None:
    path, digest = source
    cache = tmp_path / "cache"
    (cache / digest).mkdir(parents=True)
    (cache / digest / "model.onnx").write_bytes(b"not the model")
    path.unlink()
    with pytest.raises(FetchError, match="model not found"):
        fetch_model(f"file://{path}", tmp_path / "pod", digest, cache_dir=cache)
    assert not list((tmp_path / "pod").glob("*.onnx"))


def test_without_a_sha256_the_cache_is_not_used(source: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = source
    cache = tmp_path / "cache"
    fetch_model(f"file://{path}", tmp_path / "pod", None, cache_dir=cache)
    assert not cache.exists()


def test_a_digest_that_is_no_key_is_refused(source: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = source
    with pytest.raises(FetchError, match="64 hex digits"):
        fetch_model(f"file://{path}", tmp_path / "pod", "../../etc", cache_dir=tmp_path / "cache")


def test_concurrent_fetches_share_one_valid_entry(source: tuple[Path, str], tmp_path: Path) -> None:
    path, digest = source
    cache = tmp_path / "cache"
    errors: list[BaseException] = []

    def fetch(i: int) -> None:
        try:
            fetched = fetch_model(f"file://{path}", tmp_path / f"pod{i}", digest, cache_dir=cache)
            assert fetched.read_bytes() == path.read_bytes()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert [p.name for p in (cache / digest).iterdir()] == ["model.onnx"]
    assert hashlib.sha256((cache / digest / "model.onnx").read_bytes()).hexdigest() == digest
