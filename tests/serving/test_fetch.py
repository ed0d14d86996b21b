"""Model fetching: local paths, file://, pvc://, http(s) from a local server, s3 through moto
in server mode, tar.gz archives (path traversal refused), sha256, and the fetch-model CLI."""

from __future__ import annotations

import hashlib
import http.server
import io
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from berth_serving.fetch import FetchError, fetch_model, local_path, resolve_model
from click.testing import CliRunner

from tests.serving.support import REPO, free_port


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
        ({"model.onnx": b"x"}, {"escape": "../../outside"}, "link that points outside"),
        ({"model.onnx": b"x"}, {"etc": "/etc/passwd"}, "link that points outside"),
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
    assert [p.name for p in dest.iterdir()] == ["evil.tar.gz"]  # nothing was extracted


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
    url, _ = http_root
    with pytest.raises(FetchError, match=rf"^download failed: 403 Forbidden from {url}/forbidden/m.onnx$"):
        fetch_model(f"{url}/forbidden/m.onnx", tmp_path)
    with pytest.raises(FetchError, match=r"^download failed: 404 Not Found from "):
        fetch_model(f"{url}/missing.onnx", tmp_path)
    with pytest.raises(FetchError, match=r"^download failed: .* from http://127.0.0.1:1/m.onnx$"):
        fetch_model("http://127.0.0.1:1/m.onnx", tmp_path)


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
    with pytest.raises(FetchError, match=r"^download failed: 404 Not Found from s3://models/none.onnx$"):
        fetch_model("s3://models/none.onnx", tmp_path)
    with pytest.raises(FetchError, match=r"^download failed: 404 Not Found from s3://no-such-bucket/m.onnx$"):
        fetch_model("s3://no-such-bucket/m.onnx", tmp_path)


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
