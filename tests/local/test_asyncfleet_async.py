"""Pod templates made local: ConfigMap volumes as files, the front door's command, the worker sidecar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from berth_operator.local import asyncfleet
from berth_operator.local.sidecar import BERTH_ARGV, berth_args

ROUTES = '{"namespace": "default", "endpoint": "ep", "variants": []}'


def configmap(data: dict[str, str]) -> dict[str, Any]:
    return {
        "kind": "ConfigMap",
        "metadata": {"name": "ep-async-routes", "namespace": "default"},
        "data": data,
    }


def frontdoor_pod() -> dict[str, Any]:
    return {
        "containers": [
            {
                "name": "frontdoor",
                "command": ["berth"],
                "args": ["async-frontdoor", "--routes", "/etc/berth/async/routes.json", "--port", "8080"],
                "volumeMounts": [{"name": "routes", "mountPath": "/etc/berth/async"}],
            }
        ],
        "volumes": [{"name": "routes", "configMap": {"name": "ep-async-routes"}}],
    }


def test_config_map_files_are_written_and_replaced_only_on_change(tmp_path: Path) -> None:
    asyncfleet.write_config_maps(
        [configmap({"routes.json": ROUTES, "../escape": "x", ".hidden": "y"})], tmp_path
    )
    path = asyncfleet.configmap_dir(tmp_path, "default", "ep-async-routes") / "routes.json"
    assert path.read_text() == ROUTES
    assert sorted(p.name for p in path.parent.iterdir()) == ["routes.json"]  # no escape, no tmp left
    inode = path.stat().st_ino
    asyncfleet.write_config_maps([configmap({"routes.json": ROUTES})], tmp_path)
    assert path.stat().st_ino == inode  # same content: the reader's file is left alone
    asyncfleet.write_config_maps([configmap({"routes.json": ROUTES.replace("[]", "[ ]")})], tmp_path)
    assert path.read_text().endswith("[ ]}") and path.stat().st_ino != inode  # replaced by a rename


def test_the_front_door_runs_its_command_with_the_mount_made_local(tmp_path: Path) -> None:
    args = asyncfleet.process_args(frontdoor_pod(), tmp_path, "default")
    local = asyncfleet.configmap_dir(tmp_path, "default", "ep-async-routes")
    assert args == ("async-frontdoor", "--routes", f"{local}/routes.json", "--port", "8080")


def test_a_pod_of_an_unknown_command_is_refused_with_the_reason(tmp_path: Path) -> None:
    pod = {"containers": [{"name": "nginx", "image": "nginx"}]}
    why = asyncfleet.process_args(pod, tmp_path, "default")
    assert isinstance(why, str) and "'nginx'" in why and "not a berth command" in why


def test_the_worker_sidecar_gets_the_pod_name_the_replica_port_and_secrets(tmp_path: Path) -> None:
    pod = {
        "containers": [
            {"name": "server", "args": ["serve", "/models/model.onnx"]},
            {
                "name": "async-worker",
                "args": [
                    "async-worker",
                    "--consumer",
                    "$(POD_NAME)",
                    "--invoke-url",
                    "http://127.0.0.1:8080/invocations",
                ],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "BERTH_REDIS_URL", "value": "redis://127.0.0.1:7/0"},
                    {
                        "name": "AWS_SECRET_ACCESS_KEY",
                        "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}},
                    },
                    {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}},
                ],
            },
            {"name": "logger", "image": "fluentbit"},
        ]
    }
    secrets = {("default", "s3"): {"secret": b"shh"}}
    found, warnings = asyncfleet.sidecars(pod, secrets, tmp_path, "default")
    assert [s.container for s in found] == ["async-worker"]
    worker = found[0]
    assert worker.env == {"BERTH_REDIS_URL": "redis://127.0.0.1:7/0", "AWS_SECRET_ACCESS_KEY": "shh"}
    assert any("GONE" in w for w in warnings) and any("'logger'" in w for w in warnings)
    argv = worker.argv("ep-abc-0", replica_port=4321, metrics_port=5555)
    assert argv[: len(BERTH_ARGV)] == list(BERTH_ARGV)
    assert argv[len(BERTH_ARGV) :] == [
        "async-worker",
        "--consumer",
        "ep-abc-0",
        "--invoke-url",
        "http://127.0.0.1:4321/invocations",
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        "5555",
    ]
    assert worker.environment({"PATH": "/bin"}, "ep-abc-0")["POD_NAME"] == "ep-abc-0"


def test_berth_args_drop_the_entrypoint() -> None:
    assert berth_args({"command": ["/usr/local/bin/berth"], "args": ["async-worker"]}) == ("async-worker",)
    assert berth_args({"args": ["async-frontdoor", "--port", "8080"]}) == (
        "async-frontdoor",
        "--port",
        "8080",
    )


def test_a_one_command_pod_has_no_sidecars(tmp_path: Path) -> None:
    assert asyncfleet.sidecars(frontdoor_pod(), {}, tmp_path, "default") == ((), [])


def test_env_from_a_secret_among_the_manifests_and_a_missing_one() -> None:
    container = {
        "envFrom": [{"secretRef": {"name": "creds"}}, {"secretRef": {"name": "absent"}}],
        "env": [
            {"name": "AWS_REGION", "value": "eu-west-1"},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
    }
    secrets = {("team", "creds"): {"AWS_ACCESS_KEY_ID": b"id", "AWS_SECRET_ACCESS_KEY": b"key"}}
    env, pod_name, missing = asyncfleet.resolve_env(container, secrets, "team")
    assert env == {
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "key",
        "AWS_REGION": "eu-west-1",
        "NS": "team",
    }
    assert pod_name == () and missing == ["envFrom Secret absent"]
