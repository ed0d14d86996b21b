"""Model archives (.tar.gz) unpacked by fetch-model: every way out of DEST is refused, nothing
is left behind on a refusal, and the bytes written into DEST stay under --max-bytes.

The archives are real tar files built here; the escapes are the known patterns, including the
symlink chain longer than PATH_MAX of CVE-2025-4517 that Python 3.11.7's filter="data" lets
through."""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from berth_serving.fetch import FetchError, fetch_model

from tests.serving.support import REPO

ONNX_BYTES = b"not parsed by fetch-model"


@dataclass(frozen=True)
class Entry:
    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    link: str = ""


def file(name: str, data: bytes = ONNX_BYTES) -> Entry:
    return Entry(name, tarfile.REGTYPE, data)


def directory(name: str) -> Entry:
    return Entry(name, tarfile.DIRTYPE)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.SYMTYPE, link=target)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.LNKTYPE, link=target)


def build_tar(path: Path, entries: list[Entry]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = entry.kind
            info.linkname = entry.link
            info.mode = 0o755 if entry.kind == tarfile.DIRTYPE else 0o644
            info.size = len(entry.data) if entry.kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(entry.data) if entry.kind == tarfile.REGTYPE else None)
    return path


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """(DEST, a file beside DEST's parent that no archive may touch)."""
    dest = tmp_path / "outer" / "dest"
    dest.mkdir(parents=True)
    flag = tmp_path / "outer" / "flag"
    flag.write_text("original")
    return dest, flag


def assert_refused(archive: Path, dest: Path, flag: Path, reason: str) -> None:
    with pytest.raises(FetchError, match=reason) as caught:
        fetch_model(str(archive), dest)
    assert "\n" not in str(caught.value)
    assert flag.read_text() == "original"
    outer = dest.parent
    assert sorted(p.name for p in outer.iterdir()) == ["dest", "flag"], "something was written beside DEST"
    assert list(dest.iterdir()) == [], "a refused archive leaves nothing in DEST"


# --- names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("/tmp/evil.onnx", "absolute path"),
        ("../evil.onnx", r"escapes the destination: \.\./evil\.onnx"),
        ("ok/../../evil.onnx", "escapes the destination"),
        ("ok/../../outer/flag", "escapes the destination"),
    ],
)
def test_names_outside_dest_are_refused(
    layout: tuple[Path, Path], tmp_path: Path, name: str, reason: str
) -> None:
    dest, flag = layout
    archive = build_tar(tmp_path / "src" / "evil.tar.gz", [file("model.onnx"), file(name, b"overwritten")])
    assert_refused(archive, dest, flag, reason)


def test_an_entry_naming_dest_itself_as_a_file_is_refused(layout: tuple[Path, Path], tmp_path: Path) -> None:
    dest, flag = layout
    archive = build_tar(tmp_path / "src" / "m.tar.gz", [file("."), file("model.onnx")])
    assert_refused(archive, dest, flag, "names the destination itself")


# --- links -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target", ["../../outside", "/etc/passwd", "model.onnx", "sub/../model.onnx"], ids=str
)
def test_symlinks_are_refused_wherever_they_point(
    layout: tuple[Path, Path], tmp_path: Path, target: str
) -> None:
    dest, flag = layout
    archive = build_tar(tmp_path / "src" / "m.tar.gz", [file("model.onnx"), symlink("link", target)])
    assert_refused(
        archive, dest, flag, r"refusing archive entry link: a symbolic link \(model archives need none\)"
    )


@pytest.mark.parametrize("target", ["../flag", "model.onnx"], ids=str)
def test_hardlinks_are_refused_wherever_they_point(
    layout: tuple[Path, Path], tmp_path: Path, target: str
) -> None:
    dest, flag = layout
    entries = [file("model.onnx"), hardlink("link", target), file("link", b"overwritten")]
    archive = build_tar(tmp_path / "src" / "m.tar.gz", entries)
    assert_refused(
        archive, dest, flag, r"refusing archive entry link: a hard link \(model archives need none\)"
    )


@pytest.mark.parametrize("target", ["..", "../..", str(Path("/tmp"))], ids=str)
def test_a_directory_symlink_then_a_file_through_it_is_refused(
    layout: tuple[Path, Path], tmp_path: Path, target: str
) -> None:
    dest, flag = layout
    entries = [symlink("d", target), file("d/flag", b"overwritten"), file("model.onnx")]
    archive = build_tar(tmp_path / "src" / "m.tar.gz", entries)
    assert_refused(archive, dest, flag, "refusing archive entry d: a symbolic link")


def cve_2025_4517_entries(dest: Path) -> list[Entry]:
    """The symlink chain whose expansion passes PATH_MAX (the CPython advisory's test, rebuilt):
    os.path.realpath(strict=False) stops expanding there, so filter="data" thinks `escape` is
    inside while the kernel resolves it to DEST/.., and a hardlink through it overwrites a file
    outside. Components are sized so the unexpanded path fits PATH_MAX and the expanded one not."""
    steps = "abcdefghijklmnop"
    path_max = os.pathconf(dest, "PC_PATH_MAX")
    # room for fetch-model's own staging directory inside DEST, as for DEST itself
    component = "d" * ((path_max - len(str(dest)) - 64) // (len(steps) + 1))
    entries: list[Entry] = []
    path = ""
    for step in steps:
        entries += [directory(os.path.join(path, component)), symlink(os.path.join(path, step), component)]
        path = os.path.join(path, component)
    linkpath = os.path.join(*steps, "l" * 254)
    entries += [
        symlink(linkpath, os.path.join(*[".."] * len(steps))),
        symlink("escape", os.path.join(linkpath, "..")),
        hardlink("flaglink", os.path.join("escape", "flag")),
        file("flaglink", b"overwritten"),
        file("escape/newfile", b"new"),
        file("model.onnx"),
    ]
    return entries


def test_cve_2025_4517_symlink_chain_longer_than_path_max_is_refused(
    layout: tuple[Path, Path], tmp_path: Path
) -> None:
    dest, flag = layout
    archive = build_tar(tmp_path / "src" / "model.tar.gz", cve_2025_4517_entries(dest))
    assert_refused(archive, dest, flag, "a symbolic link")
    assert not (dest.parent / "newfile").exists()


# --- other entry kinds, duplicates ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "what"),
    [(tarfile.CHRTYPE, "a device"), (tarfile.BLKTYPE, "a device"), (tarfile.FIFOTYPE, "a fifo")],
)
def test_devices_and_fifos_are_refused(
    layout: tuple[Path, Path], tmp_path: Path, kind: bytes, what: str
) -> None:
    dest, flag = layout
    archive = build_tar(tmp_path / "src" / "m.tar.gz", [file("model.onnx"), Entry("dev", kind)])
    assert_refused(archive, dest, flag, f"refusing archive entry dev: {what}")


@pytest.mark.parametrize(
    "entries",
    [
        [file("model.onnx"), file("model.onnx", b"second")],
        [file("m/model.onnx"), file("./m/model.onnx", b"second")],
        [file("m"), file("m/model.onnx")],
        [file("model.onnx"), directory("model.onnx")],
    ],
    ids=["same name", "same name spelt twice", "file then a file under it", "file then directory"],
)
def test_duplicate_names_are_refused(layout: tuple[Path, Path], tmp_path: Path, entries: list[Entry]) -> None:
    dest, flag = layout
    archive = build_tar(tmp_path / "src" / "m.tar.gz", entries)
    assert_refused(archive, dest, flag, "refusing archive entry .*: (a duplicate name|under a file)")


def test_a_plain_model_archive_still_unpacks(tmp_path: Path) -> None:
    entries = [
        directory("."),
        directory("./model"),
        file("./model/model.onnx"),
        file("model/labels.txt", b"a\nb\n"),
        file("code/inference.py", b"print()"),  # parent directory implied, as `tar` writes
        directory("model"),  # a directory entry after its files (GNU tar --append)
    ]
    archive = build_tar(tmp_path / "src" / "model.tar.gz", entries)
    dest = tmp_path / "dest"
    served = fetch_model(str(archive), dest)
    assert served == dest / "model" / "model.onnx"
    assert served.read_bytes() == ONNX_BYTES
    assert (dest / "model" / "labels.txt").read_bytes() == b"a\nb\n"
    assert sorted(p.name for p in dest.iterdir()) == ["code", "model"]  # no archive, no staging left
    assert (served.stat().st_mode & 0o777) == 0o644


def test_a_truncated_archive_is_one_clear_line(tmp_path: Path) -> None:
    whole = build_tar(tmp_path / "src" / "whole.tar.gz", [file("model.onnx", os.urandom(200_000))])
    cut = tmp_path / "src" / "model.tar.gz"
    cut.write_bytes(whole.read_bytes()[:100_000])
    dest = tmp_path / "dest"
    with pytest.raises(FetchError, match=r"^cannot unpack model\.tar\.gz: .*(truncated|corrupt)") as caught:
        fetch_model(str(cut), dest)
    assert "\n" not in str(caught.value)
    assert list(dest.iterdir()) == []


# --- the size limit --------------------------------------------------------------------------


MIB = 1024 * 1024


def test_unpacked_size_over_the_limit_is_refused_before_it_is_written(tmp_path: Path) -> None:
    archive = build_tar(
        tmp_path / "src" / "bomb.tar.gz", [file("model.onnx"), file("zeros.bin", bytes(64 * MIB))]
    )
    assert archive.stat().st_size < MIB  # a small download that expands 64 times over the limit
    dest = tmp_path / "dest"
    with pytest.raises(FetchError) as caught:
        fetch_model(str(archive), dest, max_bytes=MIB)
    message = str(caught.value)
    assert "over the fetch limit of 1048576 bytes (1.0 MiB, --max-bytes)" in message, message
    assert "bomb.tar.gz entry zeros.bin is 67108864 bytes (64.0 MiB)" in message, message
    assert list(dest.iterdir()) == []


def test_many_entries_are_counted_together(tmp_path: Path) -> None:
    parts = [file(f"part-{i}.bin", os.urandom(300_000)) for i in range(4)]
    archive = build_tar(tmp_path / "src" / "m.tar.gz", [file("model.onnx"), *parts])
    limit = archive.stat().st_size + 1_000_000  # the archive itself counts while it is unpacked
    with pytest.raises(FetchError, match=r"over the fetch limit .*: unpacking m\.tar\.gz .*part-3\.bin"):
        fetch_model(str(archive), tmp_path / "dest", max_bytes=limit)
    assert list((tmp_path / "dest").iterdir()) == []
    served = fetch_model(str(archive), tmp_path / "dest2", max_bytes=archive.stat().st_size + 1_300_000)
    assert served.name == "model.onnx"


def test_a_plain_file_over_the_limit_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "big.onnx"
    source.write_bytes(bytes(3 * MIB))
    with pytest.raises(
        FetchError, match=r"over the fetch limit of 1048576 bytes .*big\.onnx is 3145728 bytes"
    ):
        fetch_model(str(source), tmp_path / "dest", max_bytes=MIB)
    assert list((tmp_path / "dest").iterdir()) == []
    assert fetch_model(str(source), tmp_path / "dest", max_bytes=3 * MIB).stat().st_size == 3 * MIB


def _limit_file_size(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.timeout(60)
def test_fetch_model_command_stops_early_under_the_limit(tmp_path: Path) -> None:
    """The command with --max-bytes, run where the kernel kills any process that writes a file
    past 4 MiB (RLIMIT_FSIZE): a 64 MiB entry must be refused without being written first."""
    archive = build_tar(
        tmp_path / "src" / "bomb.tar.gz", [file("model.onnx"), file("zeros.bin", bytes(64 * MIB))]
    )
    log = tmp_path / "termination-log"
    log.write_text("")
    for how in (["--max-bytes", str(MIB)], []):
        env = {"BERTH_TERMINATION_LOG": str(log), "PATH": "/usr/bin:/bin"}
        if not how:
            env["BERTH_FETCH_MAX_BYTES"] = str(MIB)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "berth_serving",
                "fetch-model",
                str(archive),
                str(tmp_path / "dest"),
                *how,
            ],
            env=env,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            preexec_fn=lambda: _limit_file_size(4 * MIB),
        )
        assert result.returncode == 1, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("berth fetch-model: over the fetch limit of 1048576 bytes"), line
        assert log.read_text() == line.removeprefix("berth fetch-model: ")
        assert list((tmp_path / "dest").iterdir()) == []


# --- the images' interpreter -------------------------------------------------------------------

IMAGES = [
    REPO / "serving" / "Dockerfile",
    REPO / "serving" / "Dockerfile.gpu",
    REPO / "operator" / "Dockerfile",
]


@pytest.mark.parametrize("dockerfile", IMAGES, ids=lambda path: str(path.relative_to(REPO)))
def test_images_pin_a_cpython_with_the_tarfile_fixes(dockerfile: Path) -> None:
    """3.11.13 fixed CVE-2025-4517 and the other tarfile filter bypasses: every image pins a 3.11
    patch release at least that new, and its build refuses an older one (an overridden ARG)."""
    import re

    text = dockerfile.read_text()
    [image] = re.findall(r"^ARG PYTHON_IMAGE=python:(3\.11\.\d+)-slim-bookworm$", text, flags=re.MULTILINE)
    assert tuple(int(part) for part in image.split(".")) >= (3, 11, 13), image
    assert "CVE-2025-4517" in text
    final_stage = text[text.rindex("\nFROM ") :]
    guard = "sys.version_info[:3] >= (3, 11, 13)"
    assert guard in final_stage or guard in text[text.index("AS cuda-python") :], (
        "the build checks the version"
    )
    assert "apt-get install -y --no-install-recommends python3" not in text  # no distribution python
