"""One lock file (uv.lock) for development and the images: fresh, used by all, buildable on both arches."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker

from tests.delivery.delivery_support import REPO

LOCK = REPO / "uv.lock"
MAKEFILE = REPO / "Makefile"
# Dockerfile -> the pyproject extra its image installs.
IMAGES = {
    REPO / "operator" / "Dockerfile": "operator",
    REPO / "serving" / "Dockerfile": "serving",
    REPO / "serving" / "Dockerfile.gpu": "serving",
}
# The images' interpreter (python:3.11.x-slim-bookworm) on the release's two platforms.
IMAGE_PYTHON = "3.11"
PLATFORMS = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}


def uv() -> str:
    """The uv `make` installs into the venv (pinned there), else one on PATH; never a skip."""
    beside = Path(sys.executable).with_name("uv")
    found = str(beside) if beside.exists() else shutil.which("uv")
    assert found, f"no uv beside {sys.executable} or on PATH: `make .venv/.installed` installs it"
    return found


def run_uv(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([uv(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_lock_matches_pyproject() -> None:
    """A pyproject.toml change without `uv lock` fails here (and `make`, which syncs `--locked`)."""
    result = run_uv("lock", "--check", "--offline", cwd=REPO)
    assert result.returncode == 0, f"uv.lock is stale, run `uv lock`:\n{result.stderr}"


def test_lock_check_fails_on_a_new_dependency(tmp_path: Path) -> None:
    """The check above can fail: a copy of the project with one more dependency is refused."""
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    pyproject = tmp_path / "pyproject.toml"
    text = pyproject.read_text()
    assert '"pyyaml>=6",' in text
    pyproject.write_text(text.replace('"pyyaml>=6",', '"pyyaml>=6",\n  "idna>=3",', 1))
    # Online: a changed requirement makes uv resolve again, and offline that needs every
    # package's metadata in uv's cache, which a new machine does not have (PyPI is reachable).
    result = run_uv("lock", "--check", cwd=tmp_path)
    assert result.returncode != 0
    assert "needs to be updated" in result.stderr, result.stderr


def test_makefile_installs_the_lock() -> None:
    text = MAKEFILE.read_text()
    stamp = re.search(r"^\$\(STAMP\): (.+)$", text, flags=re.MULTILINE)
    assert stamp and "uv.lock" in stamp[1].split(), "a new uv.lock reinstalls the venv"
    assert re.search(r"uv sync .*--locked.*--extra dev", text), "make installs exactly uv.lock"
    assert "uv pip install" not in text and "pip install -e" not in text


def makefile_uv_version() -> str:
    found = re.search(r"^UV_VERSION := (\S+)$", MAKEFILE.read_text(), flags=re.MULTILINE)
    assert found, "the Makefile pins uv"
    return found[1]


@pytest.mark.parametrize("dockerfile", list(IMAGES), ids=lambda path: str(path.relative_to(REPO)))
def test_image_installs_from_the_lock(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    extra = IMAGES[dockerfile]
    assert re.search(r"^COPY pyproject\.toml setup\.py uv\.lock README\.md \./$", text, flags=re.MULTILINE)
    export = re.search(r"uv export (.+?)--output-file", text, flags=re.DOTALL)
    assert export, "the dependency set comes from `uv export`"
    assert {"--locked", "--no-dev", "--no-emit-project"} <= set(export[1].split())
    assert image_extras(dockerfile)[0] == extra
    assert "--require-hashes" in text and "--no-deps" in text, "nothing resolved in the build"
    assert "constraints.txt" not in text
    assert not re.search(r"pip install [^\n]*\"\.\[", text), "no unpinned install of an extra"
    assert re.search(r"^ARG UV_VERSION=(\S+)$", text, flags=re.MULTILINE)[1] == makefile_uv_version()


def image_extras(dockerfile: Path) -> list[str]:
    """The extras a Dockerfile's `uv export` installs."""
    export = re.search(r"uv export (.+?)--output-file", dockerfile.read_text(), flags=re.DOTALL)
    assert export, dockerfile
    flags = export[1].split()
    return [flags[i + 1] for i, flag in enumerate(flags) if flag == "--extra"]


def exported(extras: list[str]) -> dict[str, str]:
    """Name -> version of what an image installs for CPython 3.11 on Linux (markers evaluated)."""
    result = run_uv(
        "export", "--frozen", "--offline", "--no-dev", "--no-hashes", "--no-emit-project",
        *(f"--extra={extra}" for extra in extras), "--format", "requirements-txt", cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    environment = {
        "python_version": IMAGE_PYTHON,
        "python_full_version": f"{IMAGE_PYTHON}.14",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_python_implementation": "CPython",
        "implementation_name": "cpython",
        "os_name": "posix",
    }
    pins: dict[str, str] = {}
    for line in result.stdout.splitlines():
        if not line or line.startswith((" ", "#", "-")):
            continue
        requirement, _, marker = line.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate(environment):
            continue
        name, _, version = requirement.strip().partition("==")
        pins[name] = version
    return pins


def has_wheel(filenames: list[str], arch: str) -> bool:
    tag = IMAGE_PYTHON.replace(".", "")
    for name in filenames:
        python, abi, platform = name.removesuffix(".whl").split("-")[-3:]
        if platform == "any":
            return True
        if "linux" in platform and arch in platform and (f"cp{tag}" in python or abi == "abi3"):
            return True
    return False


@pytest.mark.parametrize("dockerfile", list(IMAGES), ids=lambda path: str(path.relative_to(REPO)))
def test_every_locked_package_has_a_wheel_on_both_platforms(dockerfile: Path) -> None:
    """The release builds linux/amd64 and linux/arm64 on slim images with no compiler."""
    packages = {
        (package["name"], package["version"]): package
        for package in tomllib.loads(LOCK.read_text())["package"]
    }
    pins = exported(image_extras(dockerfile))
    assert "pyyaml" in pins and len(pins) > 5
    missing = []
    for name, version in sorted(pins.items()):
        files = [wheel["url"].rsplit("/", 1)[1] for wheel in packages[(name, version)].get("wheels", [])]
        missing += [
            f"{name}=={version} ({platform})"
            for platform, arch in PLATFORMS.items()
            if not has_wheel(files, arch)
        ]
    assert missing == [], f"no CPython {IMAGE_PYTHON} wheel in uv.lock for: {missing}"
