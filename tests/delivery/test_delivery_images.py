"""The operator image: its Dockerfile, and that the operator extra is all `berth operator` imports."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

from tests.delivery.delivery_support import REPO

DOCKERFILE = REPO / "operator" / "Dockerfile"
PACKAGE_DIRS = {
    "berth_operator": REPO / "operator" / "berth_operator",
    "berth_serving": REPO / "serving" / "berth_serving",
}
# Distribution name -> import name, where they differ.
IMPORT_NAMES = {"pyyaml": "yaml", "prometheus-client": "prometheus_client"}


def module_file(module: str) -> Path | None:
    top, _, rest = module.partition(".")
    base = PACKAGE_DIRS.get(top)
    if base is None:
        return None
    path = base.joinpath(*rest.split(".")) if rest else base
    if path.is_dir():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else None


def imports_of(module: str, path: Path) -> set[str]:
    """Every module a file imports, at any depth (function bodies included), made absolute."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            # `from . import x` may name submodules.
            found.update(
                f"{target}.{alias.name}" for alias in node.names if module_file(f"{target}.{alias.name}")
            )
    return found


def third_party_closure(start: str) -> dict[str, str]:
    """Third-party top-level modules reachable from `start` -> a module that imports it."""
    seen: set[str] = set()
    todo = [start]
    outside: dict[str, str] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_file(module)
        if path is None:
            continue
        for imported in imports_of(module, path):
            top = imported.split(".")[0]
            if top in PACKAGE_DIRS:
                todo.append(imported)
            elif top not in sys.stdlib_module_names and top != "__future__":
                outside.setdefault(top, module)
    return outside


def operator_extra_modules() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["operator"]]
    names = {re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower() for requirement in requirements}
    return {IMPORT_NAMES.get(name, name.replace("-", "_")) for name in names}


def test_operator_needs_only_the_operator_extra() -> None:
    """The image installs the operator extra: anything else `berth operator` imports would crash it."""
    needed = third_party_closure("berth_operator.runner")
    missing = {module: by for module, by in needed.items() if module not in operator_extra_modules()}
    assert missing == {}, f"imported by the operator but not in the operator extra: {missing}"
    assert "kopf" in needed  # the walk really followed the operator's imports


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert len(stages) >= 2, "multi-stage build"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, flags=re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base[1]), "pinned python:3.11 slim"
    assert all(stage.startswith("${PYTHON_IMAGE}") for stage in stages)
    # The operator extra exactly as uv.lock pins it (test_delivery_lock.py checks the other images).
    assert re.search(r"uv export --locked .*--extra operator", text), "installs from uv.lock"
    assert "--require-hashes" in text
    user = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert user and user[-1].split(":")[0].isdigit() and user[-1].split(":")[0] != "0", (
        "numeric non-root user"
    )
    assert re.search(r'^ENTRYPOINT \["berth", "operator"\]', text, flags=re.MULTILINE)
    chart_user = "runAsUser: 10001"
    assert chart_user in (REPO / "charts" / "berth" / "values.yaml").read_text()
    assert user[-1] == "10001:10001"


IMAGE_FILES = [DOCKERFILE, REPO / "serving" / "Dockerfile", REPO / "serving" / "Dockerfile.gpu"]


@pytest.mark.parametrize("dockerfile", IMAGE_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_docker_context_keeps_what_the_build_copies(dockerfile: Path) -> None:
    """Every COPY source survives the Dockerfile's own .dockerignore (BuildKit's per-Dockerfile
    ignore file), and no extension built here for this machine rides along."""
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text().split()
    kept = [line[1:].rstrip("*").rstrip("/") for line in ignore if line.startswith("!")]
    assert "**/*.so" in ignore
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.read_text(), flags=re.MULTILINE):
        for item in source.split():
            item = item.rstrip("/")
            assert any(item == k or item.startswith(k + "/") or k.startswith(item + "/") for k in kept), item
            assert (REPO / item).exists(), item


@pytest.mark.parametrize("dockerfile", IMAGE_FILES[1:], ids=lambda path: str(path.relative_to(REPO)))
def test_serving_images_build_the_number_parser_and_ship_no_compiler(dockerfile: Path) -> None:
    """The transform's C parser (setup.py) is compiled in the build stage, the build fails when
    it was not, and the final stage (after the last FROM) installs no compiler."""
    text = dockerfile.read_text()
    build, final = text.rsplit("\nFROM ", 1)
    assert re.search(r"apt-get install [^\n]*\bgcc\b", build)
    assert "numbers.AVAILABLE" in build
    assert "gcc" not in final
