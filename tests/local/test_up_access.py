"""`berth up` and the cluster's rules: invoke auth as local mode keeps it, and the one admission rule
it relaxes (a Model that never became ready may be replaced)."""

from __future__ import annotations

import base64
import hashlib
import threading
from pathlib import Path
from typing import Any

from berth_operator.local.access import write_api_keys
from berth_operator.planner.access import API_KEYS_VOLUME
from berth_serving.auth.apikeys import read_keys

from .conftest import ROW
from .support import BerthUp, config, endpoint, model, variant, write_yaml

BODY = {"instances": [ROW]}


def secret(
    name: str, data: dict[str, str] | None = None, string_data: dict[str, str] | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
    }
    if data is not None:
        doc["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    if string_data is not None:
        doc["stringData"] = string_data
    return doc


def keyed_endpoint(name: str, config_name: str, secret_name: str) -> dict[str, Any]:
    doc = endpoint(name, config_name)
    doc["spec"]["auth"] = {"mode": "APIKey", "secretRef": {"name": secret_name}}
    return doc


def test_api_keys_from_a_secret_manifest_are_checked_and_rotate(model_dir: Path, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    hashed = "sha256:" + hashlib.sha256(b"second-key").hexdigest()
    write_yaml(
        manifests / "serving.yaml",
        [
            model("logreg", f"file://{model_dir / 'logreg.onnx'}"),
            config("cfg", [variant("blue", "logreg")]),
            keyed_endpoint("keyed", "cfg", "keyed-keys"),
            endpoint("open", "cfg"),
        ],
    )
    keys = manifests / "keys.yaml"
    write_yaml(keys, [secret("keyed-keys", data={"team-a": "first-key"}, string_data={"team-b": hashed})])
    up = BerthUp(manifests, tmp_path)
    try:
        up.wait_in_service("keyed", "open")
        assert "Endpoint default/open: invoke auth None (local mode's default on loopback" in up.log()
        assert "Endpoint default/keyed: invoke auth APIKey (keys from Secret keyed-keys)" in up.log()
        assert up.invoke("open", BODY).status_code == 200  # no auth written: open on loopback

        missing = up.invoke("keyed", BODY)
        assert missing.status_code == 401, missing.text
        assert missing.json()["error"]["message"]
        assert up.invoke("keyed", BODY, {"X-Berth-Api-Key": "wrong"}).status_code == 401
        assert up.invoke("keyed", BODY, {"X-Berth-Api-Key": "first-key"}).status_code == 200
        # A key stored hashed works by its plain value, never by its hash.
        assert up.invoke("keyed", BODY, {"Authorization": "Bearer second-key"}).status_code == 200
        assert up.invoke("keyed", BODY, {"Authorization": f"Bearer {hashed}"}).status_code == 401
        assert "first-key" not in up.log() and "second-key" not in up.log()

        # Rotation: the Secret loses team-a; its key stops working without a restart.
        write_yaml(keys, [secret("keyed-keys", string_data={"team-b": hashed})])

        def first_key_refused() -> bool:
            return up.invoke("keyed", BODY, {"X-Berth-Api-Key": "first-key"}).status_code == 401

        up.wait(first_key_refused, 30, "the removed key refused")
        assert up.invoke("keyed", BODY, {"X-Berth-Api-Key": "second-key"}).status_code == 200
    finally:
        code = up.stop()
    assert code == 0, up.log()


def test_a_model_that_never_became_ready_can_be_fixed_in_place(model_dir: Path, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    models = manifests / "models.yaml"
    write_yaml(models, [model("logreg", f"file://{model_dir / 'logreg-typo.onnx'}")])
    write_yaml(
        manifests / "serving.yaml", [config("cfg", [variant("blue", "logreg")]), endpoint("ep", "cfg")]
    )
    up = BerthUp(manifests, tmp_path)
    try:

        def fetch_failed() -> bool:
            return "logreg-typo.onnx" in (up.endpoint("ep")["status"].get("failureReason") or "")

        up.wait(fetch_failed, 30, "the bad modelUri in failureReason")
        write_yaml(models, [model("logreg", f"file://{model_dir / 'logreg.onnx'}")])
        up.wait_in_service("ep")
        assert up.invoke("ep", BODY).status_code == 200
        assert "Model spec is immutable" not in up.log()

        # Once it served, the cluster's rule holds, and the message says how to recover.
        write_yaml(models, [model("logreg", f"file://{model_dir / 'slow.onnx'}")])
        up.wait(lambda: "Model spec is immutable" in up.log(), 15, "the refused edit")
        assert "or stop and start berth up" in up.log()
        assert up.invoke("ep", BODY).status_code == 200
    finally:
        code = up.stop()
    assert code == 0, up.log()


def keyed_deployment() -> dict[str, Any]:
    volume = {"name": API_KEYS_VOLUME, "secret": {"secretName": "keyed-keys"}}
    return {
        "metadata": {"name": "keyed-blue", "namespace": "default"},
        "spec": {"template": {"spec": {"volumes": [volume]}}},
    }


def test_a_key_being_rewritten_is_never_read_half_written(tmp_path: Path) -> None:
    """The serving process reads the key directory while `berth up` rewrites it on every
    reconcile: each reading must see every key whole (a truncated file is an empty entry, and its
    key was refused until the next reading, the CI failure of the test above)."""
    contents = [b"first-key-aaaaaaaaaaaa", b"first-key-bbbbbbbbbbbb"]
    writes = 1500
    directory = write_api_keys(
        keyed_deployment(), {("default", "keyed-keys"): {"team-a": contents[0]}}, tmp_path
    )
    assert isinstance(directory, Path)
    torn: list[tuple[list[str], list[str]]] = []
    done = threading.Event()

    def read_while_written() -> None:
        while not done.is_set():
            keys, problems = read_keys(directory)
            if problems or [key.name for key in keys] != ["team-a"]:
                torn.append(([key.name for key in keys], problems))

    reader = threading.Thread(target=read_while_written)
    reader.start()
    try:
        for i in range(writes):
            secrets = {("default", "keyed-keys"): {"team-a": contents[i % 2]}}
            assert write_api_keys(keyed_deployment(), secrets, tmp_path) == directory
    finally:
        done.set()
        reader.join()
    assert torn == []
    assert sorted(p.name for p in directory.iterdir()) == ["team-a"]  # no temporary left behind
    assert (directory / "team-a").read_bytes() == contents[(writes - 1) % 2]
    assert (directory / "team-a").stat().st_mode & 0o777 == 0o600


def test_an_unchanged_key_file_is_left_alone(tmp_path: Path) -> None:
    secrets = {("default", "keyed-keys"): {"team-a": b"first-key-aaaaaaaaaaaa"}}
    directory = write_api_keys(keyed_deployment(), secrets, tmp_path)
    assert isinstance(directory, Path)
    before = (directory / "team-a").stat()
    write_api_keys(keyed_deployment(), secrets, tmp_path)
    after = (directory / "team-a").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
