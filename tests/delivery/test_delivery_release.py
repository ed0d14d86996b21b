"""The release and CI workflows: the facts a tag's publish and the test matrix depend on.

The workflows cannot run here (no Docker engine, no registry); these tests read them and run
the one step that needs neither (the version taken from the tag) with bash.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.delivery.delivery_support import REPO

WORKFLOWS = REPO / ".github" / "workflows"
PLATFORMS = {"linux/amd64", "linux/arm64"}
# Image -> Dockerfile: what the chart installs by default (values.yaml, _helpers.tpl).
IMAGES = {
    "berth-operator": "operator/Dockerfile",
    "berth-serving": "serving/Dockerfile",
    "berth-serving-gpu": "serving/Dockerfile.gpu",
}


def workflow(name: str) -> dict[str, Any]:
    loaded: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    loaded["on"] = loaded.pop(True, loaded.get("on"))
    return loaded


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [step for step in steps(job) if str(step.get("uses", "")).split("@")[0] == action]


def scripts(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) for step in steps(job))


def needs(job: dict[str, Any]) -> set[str]:
    value = job.get("needs", [])
    return {value} if isinstance(value, str) else set(value)


@pytest.fixture(scope="module")
def release() -> dict[str, Any]:
    return workflow("release.yml")


def test_release_runs_on_a_version_tag_only(release: dict[str, Any]) -> None:
    trigger = release["on"]
    assert set(trigger) == {"push"}, "no branch, pull request or manual publish"
    assert trigger["push"].get("tags") == ["v*"]
    assert "branches" not in trigger["push"]
    assert release["concurrency"]["cancel-in-progress"] is False


def test_images_cover_both_platforms_and_all_three_images(release: dict[str, Any]) -> None:
    job = release["jobs"]["images"]
    matrix = {entry["image"]: entry for entry in job["strategy"]["matrix"]["include"]}
    assert {image: entry["dockerfile"] for image, entry in matrix.items()} == IMAGES
    for image, entry in matrix.items():
        assert set(entry["platforms"].split(",")) == PLATFORMS, image
    [build] = uses(job, "docker/build-push-action")
    options = build["with"]
    assert options["platforms"] == "${{ matrix.platforms }}"
    assert options["file"] == "${{ matrix.dockerfile }}"
    assert options["push"] is True
    assert options["sbom"] is True
    assert str(options["provenance"]).startswith("mode=")
    assert uses(job, "docker/setup-qemu-action"), "arm64 needs emulation on the amd64 runner"
    assert job["env"]["IMAGE"] == "ghcr.io/berth-dev/${{ matrix.image }}"


def test_image_tags_are_the_chart_app_version(release: dict[str, Any]) -> None:
    """The chart installs IMAGE:APPVERSION (X.Y.Z, no v): the semver tag must be pushed."""
    [meta] = uses(release["jobs"]["images"], "docker/metadata-action")
    assert "type=semver,pattern={{version}}" in meta["with"]["tags"].split()
    helpers = (REPO / "charts" / "berth" / "templates" / "_helpers.tpl").read_text()
    for image in ("berth-serving", "berth-serving-gpu"):
        assert f'"ghcr.io/berth-dev/{image}:%s" .Chart.AppVersion' in helpers
    values = yaml.safe_load((REPO / "charts" / "berth" / "values.yaml").read_text())
    assert values["image"]["repository"] == "ghcr.io/berth-dev/berth-operator"
    assert values["image"]["tag"] == ""


def test_images_are_signed_by_digest_keyless(release: dict[str, Any]) -> None:
    job = release["jobs"]["images"]
    assert job["permissions"]["id-token"] == "write"
    assert job["permissions"]["packages"] == "write"
    assert uses(job, "sigstore/cosign-installer")
    [sign] = [step for step in steps(job) if "cosign sign" in str(step.get("run", ""))]
    assert sign["env"]["DIGEST"] == "${{ steps.build.outputs.digest }}"
    assert 'cosign sign --yes "${IMAGE}@${DIGEST}"' in sign["run"]
    assert "--key" not in sign["run"], "keyless: the workflow's OIDC identity signs"
    # The digests are recorded (step summary and an artifact the GitHub release lists).
    assert "digests/" in scripts(job) and uses(job, "actions/upload-artifact")


def test_chart_is_pushed_with_the_tag_version_and_signed(release: dict[str, Any]) -> None:
    job = release["jobs"]["chart"]
    assert needs(job) >= {"version", "images"}, "the chart is published after its images"
    assert job["env"]["VERSION"] == "${{ needs.version.outputs.version }}"
    assert job["permissions"]["id-token"] == "write"
    run = scripts(job)
    assert 'helm package charts/berth --version "$VERSION" --app-version "$VERSION"' in run
    assert 'helm push "dist/berth-${VERSION}.tgz" "$CHART_REPOSITORY"' in run
    assert release["env"]["CHART_REPOSITORY"] == "oci://ghcr.io/berth-dev/charts"
    assert 'cosign sign --yes "${chart}@${digest}"' in run
    assert uses(job, "sigstore/cosign-installer")


def run_version_step(
    release: dict[str, Any], tag: str, tmp_path: Path, cwd: Path = REPO
) -> tuple[int, str, str]:
    [step] = [step for step in steps(release["jobs"]["version"]) if step.get("id") == "version"]
    output = tmp_path / "output"
    output.write_text("")
    result = subprocess.run(
        ["bash", "-e", "-c", step["run"]],
        cwd=cwd,
        env={**os.environ, "GITHUB_REF_NAME": tag, "GITHUB_OUTPUT": str(output)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.returncode, output.read_text(), result.stdout + result.stderr


def test_version_comes_from_the_tag(release: dict[str, Any], tmp_path: Path) -> None:
    """The step really runs: vX.Y.Z of the package's own version passes, anything else fails."""
    project = re.search(r'^version = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), flags=re.M)
    assert project
    code, output, log = run_version_step(release, f"v{project[1]}", tmp_path)
    assert code == 0, log
    assert output == f"version={project[1]}\n"
    code, output, log = run_version_step(release, "v99.0.0", tmp_path)
    assert code != 0 and "bump it first" in log and output == ""
    code, output, log = run_version_step(release, "vnext", tmp_path)
    assert code != 0 and "not vX.Y.Z" in log
    # A checked-in chart whose appVersion lags the tag is refused too.
    copy = tmp_path / "repo"
    (copy / "charts" / "berth").mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    chart = (REPO / "charts" / "berth" / "Chart.yaml").read_text()
    assert f'appVersion: "{project[1]}"' in chart
    (copy / "charts" / "berth" / "Chart.yaml").write_text(
        chart.replace(f'appVersion: "{project[1]}"', 'appVersion: "0.0.1"')
    )
    code, output, log = run_version_step(release, f"v{project[1]}", tmp_path, cwd=copy)
    assert code != 0 and "Chart.yaml appVersion is '0.0.1'" in log, log
    shutil.copy(REPO / "charts" / "berth" / "Chart.yaml", copy / "charts" / "berth" / "Chart.yaml")
    code, output, log = run_version_step(release, f"v{project[1]}", tmp_path, cwd=copy)
    assert code == 0, log


def test_github_release_records_the_digests(release: dict[str, Any]) -> None:
    job = release["jobs"]["github-release"]
    assert needs(job) >= {"images", "chart"}
    assert job["permissions"] == {"contents": "write"}
    run = scripts(job)
    assert "gh release create" in run and "digests" in run.lower()


def test_every_action_is_pinned_to_a_major_or_more() -> None:
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for job_name, job in workflow(path.name)["jobs"].items():
            for step in steps(job):
                if "uses" in step:
                    assert re.search(r"@v\d+(\.\d+)*$", step["uses"]), (
                        f"{path.name} {job_name}: {step['uses']}"
                    )


def test_ci_tests_python_311_to_313_from_the_lock() -> None:
    ci = workflow("ci.yml")
    job = ci["jobs"]["test"]
    assert job["strategy"]["matrix"]["python"] == ["3.11", "3.12", "3.13"]
    [setup] = uses(job, "actions/setup-python")
    assert setup["with"]["python-version"] == "${{ matrix.python }}"
    [cache] = uses(job, "actions/cache")
    assert "hashFiles('uv.lock')" in cache["with"]["key"]
    assert "matrix.python" in cache["with"]["key"]
    commands = [str(step.get("run", "")).strip() for step in steps(job)]
    assert "make lock-check PYTHON=python${{ matrix.python }}" in commands
    assert "make test PYTHON=python${{ matrix.python }}" in commands


def test_docs_install_the_published_chart() -> None:
    guide = (REPO / "docs" / "kubernetes.md").read_text()
    assert "helm install berth oci://ghcr.io/berth-dev/charts/berth --version" in guide
