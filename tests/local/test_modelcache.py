"""berth up's model cache: only a whole, checked model becomes a cache hit; an entry that
changed on disk, or that a replica could not load, is fetched again.

Sources are real: file:// models and an HTTP server on 127.0.0.1 that cuts bodies short
(tests/serving/flaky_http.py). The last test runs real `berth serve` replicas."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from berth_operator.local.deployment import DeploymentSpec, LocalDeployment
from berth_operator.local.modelcache import MARKER, ModelCache, cache_key, onnx_framing_problem
from berth_serving.fetch import FetchError, RetryPolicy

from tests.serving.flaky_http import FlakyServer, flaky_server, short, whole
from tests.serving.models import build_mlp

pytestmark = pytest.mark.timeout(120)
FAST = RetryPolicy(attempts=2, first_backoff_seconds=0.01, max_backoff_seconds=0.02, timeout_seconds=5)


@pytest.fixture
def flaky() -> Iterator[FlakyServer]:
    with flaky_server() as server:
        yield server


@pytest.fixture
def good(model_dir: Path) -> bytes:
    return (model_dir / "logreg.onnx").read_bytes()


def entries(cache_dir: Path) -> list[str]:
    models = cache_dir / "models"
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def get(cache: ModelCache, uri: str, sha256: str | None = None) -> Path:
    return asyncio.run(cache.get(uri, sha256))


def test_a_cut_download_is_never_cached(flaky: FlakyServer, good: bytes, tmp_path: Path) -> None:
    url = flaky.plan("/m.onnx", short(good, len(good) // 2))
    cache = ModelCache(tmp_path / "cache", retry=FAST)
    with pytest.raises(FetchError, match=f"stopped after {len(good) // 2} of {len(good)} bytes"):
        get(cache, url)
    assert entries(tmp_path / "cache") == []  # no entry, no staging left
    flaky.plan("/m.onnx", whole(good))
    assert get(cache, url).read_bytes() == good
    fetched = flaky.requests("/m.onnx")
    assert get(cache, url).read_bytes() == good
    assert flaky.requests("/m.onnx") == fetched  # a hit now


def test_a_file_that_is_not_a_whole_model_is_served_but_never_kept(
    flaky: FlakyServer, good: bytes, tmp_path: Path
) -> None:
    """The object itself is cut (the transfer is complete): the replicas get it and say why it
    does not load, as pods would, but it is not kept: the next fetch downloads it again."""
    url = flaky.plan("/m.onnx", whole(good[: len(good) // 2]))
    cache = ModelCache(tmp_path / "cache", retry=FAST)
    assert get(cache, url).read_bytes() == good[: len(good) // 2]
    assert get(cache, url).read_bytes() == good[: len(good) // 2]
    assert flaky.requests("/m.onnx") == 2  # fetched again, not served from the cache
    flaky.plan("/m.onnx", whole(good))  # the object is fixed
    assert get(cache, url).read_bytes() == good
    assert get(cache, url).read_bytes() == good
    assert flaky.requests("/m.onnx") == 3


def test_evict_drops_an_entry(good: bytes, tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    source.write_bytes(good)
    cache = ModelCache(tmp_path / "cache")
    first = get(cache, f"file://{source}")
    cache.evict(f"file://{source}", None)
    assert not first.exists() and entries(tmp_path / "cache") == []
    assert get(cache, f"file://{source}").read_bytes() == good
    cache.evict(f"file://{tmp_path}/never-cached.onnx", None)  # nothing to drop: no error


def test_an_entry_changed_on_disk_is_fetched_again(good: bytes, tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    source.write_bytes(good)
    cache = ModelCache(tmp_path / "cache")
    cached = get(cache, f"file://{source}")
    cached.write_bytes(good[:100])  # cut in the cache (a full disk, a hand edit)
    assert get(cache, f"file://{source}").read_bytes() == good


def test_an_entry_cached_by_an_older_berth_is_fetched_again(good: bytes, tmp_path: Path) -> None:
    """Older entries recorded no check: a truncated file cached before this fix is not trusted."""
    source = tmp_path / "m.onnx"
    source.write_bytes(good)
    entry = tmp_path / "cache" / "models" / cache_key(f"file://{source}", None)
    entry.mkdir(parents=True)
    (entry / "m.onnx").write_bytes(good[:600])
    (entry / MARKER).write_text("m.onnx")  # the old marker: the relative path, as text
    assert get(ModelCache(tmp_path / "cache"), f"file://{source}").read_bytes() == good


# --- the check ---------------------------------------------------------------------------------


def ort_loads(data: bytes) -> bool:
    try:
        ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True


def test_the_check_accepts_models_and_refuses_garbage(model_dir: Path, tmp_path: Path) -> None:
    for path in [model_dir / "logreg.onnx", model_dir / "slow.onnx", build_mlp(tmp_path / "mlp.onnx")]:
        assert onnx_framing_problem(path) is None, path
    assert "not a complete ONNX model" in (onnx_framing_problem(model_dir / "garbage.onnx") or "")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert (
        onnx_framing_problem(empty)
        == "empty.onnx is not a complete ONNX model: no ir_version, graph, opset_import"
    )


def test_the_check_never_passes_a_cut_model_that_onnx_runtime_refuses(tmp_path: Path) -> None:
    """At every cut point of a real model (every byte of the top-level framing, and through the
    graph), a file the check passes is one ONNX Runtime loads: it never lets a cut file through."""
    data = build_mlp(tmp_path / "mlp.onnx", sizes=(8, 16, 4)).read_bytes()
    model = onnx.load_from_string(data)
    model.metadata_props.add(key="k", value="v")  # a trailing optional field
    data = model.SerializeToString()
    cuts = sorted({*range(0, 64), *range(64, len(data), 97), *range(len(data) - 64, len(data))})
    passed = 0
    for cut in cuts:
        path = tmp_path / "cut.onnx"
        path.write_bytes(data[:cut])
        if onnx_framing_problem(path) is None:
            passed += 1
            assert ort_loads(data[:cut]), f"the check passed a file cut at {cut} that ONNX Runtime refuses"
    assert passed >= 1  # the cut just before the optional metadata: complete, and it loads
    model.ClearField("opset_import")  # the cut between graph and opset_import, exactly
    path.write_bytes(model.SerializeToString())
    assert onnx_framing_problem(path) == "cut.onnx is not a complete ONNX model: no opset_import"
    assert not ort_loads(model.SerializeToString())


# --- a replica that cannot load the cached model -------------------------------------------------


def corrupt_inside(path: Path) -> None:
    """Damage in the middle of the graph, keeping the size and the top-level framing."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 32] = b"\xff" * 32
    path.write_bytes(bytes(data))


@pytest.mark.timeout(90)
def test_a_replica_that_cannot_load_the_cached_model_gets_it_fetched_again(
    good: bytes, tmp_path: Path
) -> None:
    source = tmp_path / "logreg.onnx"
    source.write_bytes(good)
    uri = f"file://{source}"
    cache = ModelCache(tmp_path / "cache")
    cached = get(cache, uri)
    corrupt_inside(cached)
    assert onnx_framing_problem(cached) is None and not ort_loads(cached.read_bytes()), (
        "a bad entry that looks good"
    )

    async def scenario() -> tuple[int, str]:
        spec = DeploymentSpec("default", "d", {"app": "d"}, 1, uri, None, grace_seconds=5)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        fleet = LocalDeployment(spec, cache, tmp_path / "run", env, on_change=lambda: None)
        fleet.start()
        try:
            deadline = time.monotonic() + 60
            while not fleet.routable() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            [replica] = fleet.replicas
            return (replica.restarts, replica.last_error) if fleet.routable() else (-1, replica.last_error)
        finally:
            await fleet.stop()

    restarts, last_error = asyncio.run(scenario())
    assert restarts >= 1, f"never became ready; last error: {last_error}"
    assert last_error.startswith("model load failed"), last_error  # why it restarted
    assert cached.read_bytes() == good  # the entry was fetched again
