"""`berth up` and the cluster's rules: invoke auth as local mode keeps it, and the one admission rule
it relaxes (a Model that never became ready may be replaced)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

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
