"""Model fetching: local paths, file://, pvc://, http(s) from a local server, s3 through moto
in server mode, tar.gz archives (path traversal refused), sha256, and the fetch-model CLI.

Downloads that go wrong are played by real servers on 127.0.0.1 (tests/serving/flaky_http.py):
bodies shorter than their Content-Length, chunked bodies cut short, stalls, 5xx, and the same
in front of moto for s3://. Archive escapes and the size limit: tests/serving/test_archive.py."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from berth_serving.fetch import FetchError, RetryPolicy, fetch_model, local_path, resolve_model
from click.testing import CliRunner

from tests.serving.flaky_http import (
    FlakyServer,
    chunked,
    chunked_cut,
    flaky_s3,
    flaky_server,
    short,
    stall,
    status,
    whole,
)
from tests.serving.support import REPO, free_port

# Retries as in production, minus the waiting.
FAST = RetryPolicy(attempts=3, first_backoff_seconds=0.01, max_backoff_seconds=0.05, timeout_seconds=5)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


# --- local sources ---------------------------------------------------------------------


def test_local_file_is_copied_into_dest(onnx_models, tmp_path: Path) -> None:
    served = fetch_model(str(onnx_models.identity), tmp_path / "dest")
    assert served == tmp_path / "dest" / "identity.onnx"
    assert served.read_bytes() == onnx_models.identity.read_bytes()


def test_file_uri_absolute_and_relative(onnx_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = fetch_model(f"file://{onnx_models.identity}", tmp_path / "a")
    assert absolute.name == "identity.onnx"
    monkeypatch.chdir(onnx_models.root)
    relative = fetch_model("file://identity.onnx", tmp_path / "b")
    assert relative.read_bytes() == onnx_models.identity.read_bytes()
    assert local_path("file://rel/x.onnx") == Path("rel/x.onnx")
    assert local_path("file:///abs/x.onnx") == Path("/abs/x.onnx")


def test_pvc_uri_maps_to_the_claim_mount(tmp_path: Path) -> None:
    assert local_path("pvc://models-claim/fraud/v2/model.onnx", pvc_root=tmp_path) == (
        tmp_path / "models-claim" / "fraud" / "v2" / "model.onnx"
    )
    assert local_path("pvc://claim/m.onnx") == Path("/mnt/pvc/claim/m.onnx")
    with pytest.raises(FetchError, match="claim"):
        local_path("pvc://")


def test_directory_with_one_model(onnx_models, tmp_path: Path) -> None:
    source = tmp_path / "src" / "nested"
    source.mkdir(parents=True)
    (source / "model.onnx").write_bytes(onnx_models.identity.read_bytes())
    (source / "README").write_text("extra files come along")
    served = fetch_model(str(tmp_path / "src"), tmp_path / "dest")
    assert served == tmp_path / "dest" / "nested" / "model.onnx"
    assert (tmp_path / "dest" / "nested" / "README").exists()


def test_directory_without_or_with_several_models(onnx_models, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FetchError, match=r"no \.onnx file"):
        fetch_model(str(tmp_path / "empty"), tmp_path / "d1")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.onnx", "b.onnx"):
        (two / name).write_bytes(onnx_models.identity.read_bytes())
    with pytest.raises(FetchError, match=r"several \.onnx files .*a\.onnx, b\.onnx"):
        fetch_model(str(two), tmp_path / "d2")


def test_missing_local_model(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="model not found"):
        fetch_model(str(tmp_path / "nope.onnx"), tmp_path / "dest")


def test_unsupported_schemes_say_so(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"gs:// is not supported yet"):
        fetch_model("gs://bucket/model.onnx", tmp_path)
    with pytest.raises(FetchError, match=r"unsupported model URI scheme ftp://"):
        fetch_model("ftp://host/model.onnx", tmp_path)


def test_resolve_model_uses_local_models_in_place(onnx_models, tmp_path: Path) -> None:
    assert resolve_model(str(onnx_models.identity), tmp_path) == onnx_models.identity
    single = tmp_path / "single"
    single.mkdir()
    (single / "m.onnx").write_bytes(onnx_models.identity.read_bytes())
    assert resolve_model(str(single), tmp_path / "scratch") == single / "m.onnx"
    assert not (tmp_path / "scratch").exists()


# --- sha256 ------------------------------------------------------------------------------


def test_sha256_match_and_mismatch(onnx_models, tmp_path: Path) -> None:
    good = sha256_of(onnx_models.identity)
    assert fetch_model(str(onnx_models.identity), tmp_path / "ok", sha256=good).exists()
    wrong = "0" * 64
    with pytest.raises(FetchError) as caught:
        fetch_model(str(onnx_models.identity), tmp_path / "bad", sha256=wrong)
    message = str(caught.value)
    assert f"expected {wrong}" in message and f"got {good}" in message and "\n" not in message


# --- archives ----------------------------------------------------------------------------


def test_tar_gz_is_unpacked_and_the_model_inside_served(onnx_models, tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "model.tar.gz",
        {"model/model.onnx": onnx_models.identity.read_bytes(), "model/labels.txt": b"a\nb\n"},
    )
    served = fetch_model(str(archive), tmp_path / "dest", sha256=sha256_of(archive))
    assert served == tmp_path / "dest" / "model" / "model.onnx"
    assert served.read_bytes() == onnx_models.identity.read_bytes()
    assert not (tmp_path / "dest" / "model.tar.gz").exists()


@pytest.mark.parametrize(
    ("members", "links", "reason"),
    [
        ({"../evil.onnx": b"x"}, {}, "escapes the destination"),
        ({"ok/../../evil.onnx": b"x"}, {}, "escapes the destination"),
        ({"/tmp/evil.onnx": b"x"}, {}, "absolute path"),
        ({"model.onnx": b"x"}, {"escape": "../../outside"}, "a symbolic link"),
        ({"model.onnx": b"x"}, {"etc": "/etc/passwd"}, "a symbolic link"),
    ],
)
def test_tar_entries_escaping_the_destination_are_refused(
    tmp_path: Path, members: dict[str, bytes], links: dict[str, str], reason: str
) -> None:
    archive = make_tar(tmp_path / "evil.tar.gz", members, links)
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(FetchError, match=reason):
        fetch_model(str(archive), dest)
    assert not (tmp_path / "deep" / "evil.onnx").exists()
    assert not (tmp_path / "evil.onnx").exists()
    assert list(dest.iterdir()) == []  # nothing was extracted, and the refused archive is gone


# --- http(s) -----------------------------------------------------------------------------


class _ModelHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/forbidden"):
            self.send_error(403)
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", free_port()),
        lambda *args: _ModelHandler(*args, directory=str(root)),
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_http_download(onnx_models, http_root: tuple[str, Path], tmp_path: Path) -> None:
    url, root = http_root
    (root / "mlp.onnx").write_bytes(onnx_models.mlp.read_bytes())
    served = fetch_model(f"{url}/mlp.onnx", tmp_path / "dest", sha256=sha256_of(onnx_models.mlp))
    assert served.read_bytes() == onnx_models.mlp.read_bytes()
    assert not list((tmp_path / "dest").glob("*.part"))


def test_http_tar_gz(onnx_models, http_root: tuple[str, Path], tmp_path: Path) -> None:
    url, root = http_root
    make_tar(root / "model.tar.gz", {"model.onnx": onnx_models.identity.read_bytes()})
    served = fetch_model(f"{url}/model.tar.gz", tmp_path / "dest")
    assert served == tmp_path / "dest" / "model.onnx"


def test_http_errors_are_one_clear_line(http_root: tuple[str, Path], tmp_path: Path) -> None:
    # No "download failed:" of its own: the operator puts it in front ("model M: download failed: ...").
    url, _ = http_root
    with pytest.raises(FetchError, match=rf"^403 Forbidden from {url}/forbidden/m.onnx$"):
        fetch_model(f"{url}/forbidden/m.onnx", tmp_path, retry=FAST)
    with pytest.raises(FetchError, match=r"^404 Not Found from "):
        fetch_model(f"{url}/missing.onnx", tmp_path, retry=FAST)
    with pytest.raises(
        FetchError, match=r"^Connection refused from http://127.0.0.1:1/m.onnx \(3 attempts over [0-9.]+s\)$"
    ):
        fetch_model("http://127.0.0.1:1/m.onnx", tmp_path, retry=FAST)
    assert [p.name for p in tmp_path.iterdir()] == ["www"]  # DEST: nothing left by the failures


# --- downloads that go wrong (a real server that lies) ---------------------------------------


@pytest.fixture
def flaky() -> Iterator[FlakyServer]:
    with flaky_server() as server:
        yield server


BODY = bytes(range(256)) * 4 + b"x" * 205  # 1229 bytes, as in the report


def test_body_shorter_than_its_content_length_fails_and_leaves_nothing(
    flaky: FlakyServer, tmp_path: Path
) -> None:
    url = flaky.plan("/m.onnx", short(BODY, 600))
    with pytest.raises(FetchError) as caught:
        fetch_model(url, tmp_path / "dest", retry=FAST)
    assert str(caught.value).startswith(
        f"the transfer stopped after 600 of 1229 bytes from {url} (3 attempts"
    )
    assert flaky.requests("/m.onnx") == 3
    assert list((tmp_path / "dest").iterdir()) == []


def test_a_cut_transfer_is_retried_and_the_complete_one_kept(flaky: FlakyServer, tmp_path: Path) -> None:
    url = flaky.plan("/m.onnx", short(BODY, 600), chunked_cut(BODY, 1000), status(503), whole(BODY))
    served = fetch_model(
        url,
        tmp_path / "dest",
        sha256=hashlib.sha256(BODY).hexdigest(),
        retry=RetryPolicy(attempts=4, first_backoff_seconds=0.01, max_backoff_seconds=0.05),
    )
    assert served.read_bytes() == BODY
    assert flaky.requests("/m.onnx") == 4
    assert [p.name for p in (tmp_path / "dest").iterdir()] == ["m.onnx"]


def test_a_chunked_body_cut_short_is_one_clear_line(flaky: FlakyServer, tmp_path: Path) -> None:
    url = flaky.plan("/m.onnx", chunked_cut(BODY * 10, 5000))
    with pytest.raises(FetchError) as caught:
        fetch_model(url, tmp_path / "dest", retry=FAST)
    message = str(caught.value)
    assert message.startswith("the transfer broke after ") and f"from {url} (3 attempts" in message, message
    assert "middle of the body" in message and "\n" not in message
    assert list((tmp_path / "dest").iterdir()) == []


def test_a_complete_chunked_body_is_fine(flaky: FlakyServer, tmp_path: Path) -> None:
    url = flaky.plan("/m.onnx", chunked(BODY * 10))
    assert fetch_model(url, tmp_path / "dest", retry=FAST).read_bytes() == BODY * 10


def test_a_stalled_transfer_times_out(flaky: FlakyServer, tmp_path: Path) -> None:
    url = flaky.plan("/m.onnx", stall(BODY, 100))
    policy = RetryPolicy(attempts=2, first_backoff_seconds=0.01, timeout_seconds=0.5)
    started = time.monotonic()
    with pytest.raises(
        FetchError, match=rf"^the transfer broke after 100 bytes \(timed out\) from {url} \(2 attempts"
    ):
        fetch_model(url, tmp_path / "dest", retry=policy)
    assert time.monotonic() - started < 5
    assert list((tmp_path / "dest").iterdir()) == []


def test_5xx_is_retried_4xx_is_not(flaky: FlakyServer, tmp_path: Path) -> None:
    url = flaky.plan("/busy.onnx", status(503), status(502), whole(BODY))
    assert fetch_model(url, tmp_path / "a", retry=FAST).read_bytes() == BODY
    assert flaky.requests("/busy.onnx") == 3
    url = flaky.plan("/gone.onnx", status(410))
    with pytest.raises(FetchError, match=rf"^410 Gone from {url}$"):
        fetch_model(url, tmp_path / "b", retry=FAST)
    assert flaky.requests("/gone.onnx") == 1
    url = flaky.plan("/down.onnx", status(503))
    with pytest.raises(FetchError, match=rf"^503 Service Unavailable from {url} \(3 attempts over"):
        fetch_model(url, tmp_path / "c", retry=FAST)


def test_retries_stop_after_the_time_bound(flaky: FlakyServer, tmp_path: Path) -> None:
    url = flaky.plan("/down.onnx", status(503))
    policy = RetryPolicy(
        attempts=1000, first_backoff_seconds=0.1, max_backoff_seconds=0.2, give_up_after_seconds=1
    )
    started = time.monotonic()
    with pytest.raises(FetchError, match="503 Service Unavailable"):
        fetch_model(url, tmp_path / "dest", retry=policy)
    assert time.monotonic() - started < 2.5
    assert 3 <= flaky.requests("/down.onnx") < 30


def test_a_download_failing_its_sha256_does_not_stay(flaky: FlakyServer, tmp_path: Path) -> None:
    url = flaky.plan("/m.onnx", whole(BODY))
    with pytest.raises(FetchError, match=r"^sha256 mismatch for m\.onnx: expected 0{64}, got [0-9a-f]{64}$"):
        fetch_model(url, tmp_path / "dest", sha256="0" * 64, retry=FAST)
    assert flaky.requests("/m.onnx") == 1  # the same bytes again would not help
    assert list((tmp_path / "dest").iterdir()) == []


def test_a_download_over_the_size_limit_is_refused(flaky: FlakyServer, tmp_path: Path) -> None:
    url = flaky.plan("/big.onnx", whole(bytes(3_000_000)))
    with pytest.raises(
        FetchError, match=rf"over the fetch limit of 1000000 bytes .*: {url} is 3000000 bytes"
    ):
        fetch_model(url, tmp_path / "dest", max_bytes=1_000_000, retry=FAST)
    url = flaky.plan("/streamed.onnx", chunked(bytes(3_000_000)))  # no Content-Length: counted
    with pytest.raises(FetchError, match=rf"over the fetch limit of 1000000 bytes .*: {url} sent more than"):
        fetch_model(url, tmp_path / "dest", max_bytes=1_000_000, retry=FAST)
    assert list((tmp_path / "dest").iterdir()) == []
    assert fetch_model(url, tmp_path / "dest", max_bytes=3_000_000, retry=FAST).stat().st_size == 3_000_000


def test_leftovers_of_a_killed_fetch_are_removed(flaky: FlakyServer, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / ".berth-fetch-unpack" / "model").mkdir(parents=True)
    (dest / ".berth-fetch-m.onnx").write_bytes(b"half")
    url = flaky.plan("/m.onnx", whole(BODY))
    assert fetch_model(url, dest, retry=FAST).read_bytes() == BODY
    assert [p.name for p in dest.iterdir()] == ["m.onnx"]


# --- s3 (moto in server mode) --------------------------------------------------------------


def test_s3_download(onnx_models, s3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s3.upload_file(str(onnx_models.logreg), "models", "fraud/v2/model.onnx")
    served = fetch_model(
        "s3://models/fraud/v2/model.onnx", tmp_path / "dest", sha256=sha256_of(onnx_models.logreg)
    )
    assert served == tmp_path / "dest" / "model.onnx"
    assert served.read_bytes() == onnx_models.logreg.read_bytes()


def test_s3_model_tar_gz(onnx_models, s3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive = make_tar(tmp_path / "model.tar.gz", {"model.onnx": onnx_models.identity.read_bytes()})
    s3.upload_file(str(archive), "models", "sagemaker/model.tar.gz")
    served = fetch_model("s3://models/sagemaker/model.tar.gz", tmp_path / "dest")
    assert served.read_bytes() == onnx_models.identity.read_bytes()


def test_s3_prefix(onnx_models, s3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s3.upload_file(str(onnx_models.identity), "models", "dir/v1/model.onnx")
    s3.put_object(Bucket="models", Key="dir/v1/vocab.txt", Body=b"words")
    served = fetch_model("s3://models/dir/v1/", tmp_path / "dest")
    assert served == tmp_path / "dest" / "model.onnx"
    assert (tmp_path / "dest" / "vocab.txt").read_bytes() == b"words"


def test_s3_errors_name_status_and_uri(s3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FetchError, match=r"^404 Not Found from s3://models/none.onnx$"):
        fetch_model("s3://models/none.onnx", tmp_path)
    with pytest.raises(FetchError, match=r"^404 Not Found from s3://no-such-bucket/m.onnx$"):
        fetch_model("s3://no-such-bucket/m.onnx", tmp_path)


def test_s3_body_shorter_than_content_length_is_retried(
    s3: Any, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s3.put_object(Bucket="models", Key="cut/model.onnx", Body=BODY)
    with flaky_s3(moto_endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        proxy.plan("models", "cut/model.onnx", short(b"", 600), status(503), whole(b""))
        served = fetch_model("s3://models/cut/model.onnx", tmp_path / "ok", retry=FAST)
        assert served.read_bytes() == BODY
        assert proxy.requests("models", "cut/model.onnx") == 3
        proxy.plan("models", "cut/model.onnx", short(b"", 600))
        with pytest.raises(FetchError) as caught:
            fetch_model("s3://models/cut/model.onnx", tmp_path / "cut", retry=FAST)
    message = str(caught.value)
    assert message.startswith("the transfer broke after 600 bytes (") or message.startswith(
        "the transfer stopped after 600 of 1229 bytes"
    ), message
    assert message.endswith(")") and "from s3://models/cut/model.onnx (3 attempts over" in message, message
    assert list((tmp_path / "cut").iterdir()) == []


def test_s3_over_the_size_limit_is_refused_before_downloading(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket="models", Key="big/model.onnx", Body=bytes(2_000_000))
    with pytest.raises(
        FetchError, match=r"over the fetch limit of 1000000 bytes .*model\.onnx is 2000000 bytes"
    ):
        fetch_model("s3://models/big/model.onnx", tmp_path / "dest", max_bytes=1_000_000)
    assert list((tmp_path / "dest").iterdir()) == []


# --- the fetch-model command (the init container) -----------------------------------------


def test_fetch_model_command_prints_the_model_path(onnx_models, tmp_path: Path) -> None:
    from berth_operator.cli import main

    result = CliRunner().invoke(main, ["fetch-model", str(onnx_models.identity), str(tmp_path / "dest")])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(tmp_path / "dest" / "identity.onnx")


@pytest.mark.timeout(60)
def test_fetch_model_failure_exits_non_zero_and_writes_termination_log(tmp_path: Path) -> None:
    termination_log = tmp_path / "termination-log"
    termination_log.write_text("")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "berth_serving",
            "fetch-model",
            str(tmp_path / "a.onnx"),
            str(tmp_path / "d"),
            "--sha256",
            "ab" * 32,
        ],
        env={"BERTH_TERMINATION_LOG": str(termination_log), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"berth fetch-model: model not found: {tmp_path / 'a.onnx'}"
    assert termination_log.read_text() == f"model not found: {tmp_path / 'a.onnx'}"


def run_fetch_model(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    termination_log = tmp_path / "termination-log"
    termination_log.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "berth_serving", "fetch-model", *args],
        env={"BERTH_TERMINATION_LOG": str(termination_log), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    return result, termination_log.read_text()


@pytest.mark.timeout(60)
def test_fetch_model_command_on_a_cut_download_fails_with_one_line(
    flaky: FlakyServer, tmp_path: Path
) -> None:
    url = flaky.plan("/model.onnx", short(BODY, 600))
    result, termination = run_fetch_model(tmp_path, url, str(tmp_path / "dest"))
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        f"berth fetch-model: the transfer stopped after 600 of 1229 bytes from {url} (4 attempts"
    )
    assert termination == line.removeprefix("berth fetch-model: ")
    assert flaky.requests("/model.onnx") == 4
    assert list((tmp_path / "dest").iterdir()) == []


@pytest.mark.timeout(60)
def test_fetch_model_command_on_a_truncated_archive_says_so(
    onnx_models, flaky: FlakyServer, tmp_path: Path
) -> None:
    archive = make_tar(
        tmp_path / "model.tar.gz", {"model.onnx": onnx_models.mlp.read_bytes() + os.urandom(50_000)}
    )
    cut = archive.read_bytes()[: archive.stat().st_size // 2]
    url = flaky.plan("/model.tar.gz", whole(cut))  # complete as served: the object itself is cut
    result, termination = run_fetch_model(tmp_path, url, str(tmp_path / "dest"))
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        "berth fetch-model: cannot unpack model.tar.gz: the archive is truncated or corrupt ("
    ), line
    assert termination == line.removeprefix("berth fetch-model: ")
    assert list((tmp_path / "dest").iterdir()) == []


def test_the_termination_message_is_one_line_within_the_kubernetes_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from berth_serving.termination import write_termination_message

    log = tmp_path / "termination-log"
    monkeypatch.setenv("BERTH_TERMINATION_LOG", str(log))
    write_termination_message("cannot load model:\n  line two\n")
    assert log.read_text() == "cannot load model: line two"
    write_termination_message("é" * 3000)  # 6000 bytes of UTF-8
    assert len(log.read_bytes()) <= 4000 and log.read_text() == "é" * 2000
