"""The chart's async.redis values: a quick-start Valkey, a URL or a Secret, and what the operator
is told (its settings, its env, its egress)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from berth_operator.settings import SettingsError, load_settings

from tests.delivery.delivery_support import (
    CHART_DIR,
    NAMESPACE,
    by_kind,
    objects,
    render,
    rendered_settings,
    validate,
)

DEPLOY = {"async": {"redis": {"deploy": {"enabled": True}}}}
SECRET = {"name": "queue", "key": "url", "addressKey": "address", "passwordKey": "password"}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def settings_of(objs: list[dict[str, Any]], tmp_path: Path) -> Any:
    path = tmp_path / "settings.yaml"
    path.write_text(rendered_settings(objs))
    return load_settings(path)


def operator_env(objs: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = [d for d in by_kind(objs, "Deployment") if d["metadata"]["name"].endswith("-operator")]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_the_quick_start_valkey_and_the_settings_that_point_at_it(chart: helm.Chart, tmp_path: Path) -> None:
    objs = objects(render(chart, DEPLOY))
    [valkey] = [d for d in by_kind(objs, "Deployment") if d["metadata"]["name"] == "berth-redis"]
    [service] = [s for s in by_kind(objs, "Service") if s["metadata"]["name"] == "berth-redis"]
    for obj in (valkey, service):
        validate(obj)
    pod = valkey["spec"]["template"]
    assert all(pod["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items())
    [container] = pod["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert service["spec"]["ports"][0]["port"] == 6379
    settings = settings_of(objs, tmp_path)
    assert settings.async_.redis.url == f"redis://berth-redis.{NAMESPACE}.svc:6379"
    # A values file read by `berth render --settings` / `berth up --settings` says the same.
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(DEPLOY))
    assert load_settings(values) == settings


def test_no_queue_values_no_queue(chart: helm.Chart, tmp_path: Path) -> None:
    objs = objects(render(chart, {}))
    assert not [d for d in by_kind(objs, "Deployment") if d["metadata"]["name"] == "berth-redis"]
    assert not settings_of(objs, tmp_path).async_.redis.configured
    assert "BERTH_REDIS_URL" not in operator_env(objs)


def test_a_secret_reaches_the_settings_and_the_operators_env(chart: helm.Chart, tmp_path: Path) -> None:
    values = {"async": {"redis": {"secretRef": SECRET}}, "networkPolicy": {"enabled": True}}
    objs = objects(render(chart, values))
    ref = settings_of(objs, tmp_path).async_.redis.secret_ref
    assert ref is not None and (ref.name, ref.key, ref.address_key) == ("queue", "url", "address")
    assert operator_env(objs)["BERTH_REDIS_URL"] == {"secretKeyRef": {"name": "queue", "key": "url"}}
    [policy] = by_kind(objs, "NetworkPolicy")
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert 6379 in ports  # the operator reads the queues' backlog
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    assert load_settings(path).async_.redis.secret_ref == ref


def test_a_url_is_passed_as_it_is(chart: helm.Chart, tmp_path: Path) -> None:
    url = "rediss://:pw@queue.example.com:6380/1"
    objs = objects(render(chart, {"async": {"redis": {"url": url}}}))
    assert settings_of(objs, tmp_path).async_.redis.url == url


def test_two_sources_are_refused_by_chart_and_loader(chart: helm.Chart, tmp_path: Path) -> None:
    values = {"async": {"redis": {"url": "redis://a:6379", "deploy": {"enabled": True}}}}
    with pytest.raises(Exception, match=r"give one of url, secretRef and deploy\.enabled"):
        render(chart, values)
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(SettingsError, match=r"give one of url, secretRef and deploy\.enabled"):
        load_settings(path)


@pytest.mark.parametrize(
    "redis",
    [{"url": "http://a:1"}, {"secretRef": {"name": "q"}}, {"deploy": {"enabled": "yes"}}, {"host": "a"}],
)
def test_the_schema_refuses_bad_queue_values(chart: helm.Chart, redis: dict[str, Any]) -> None:
    with pytest.raises(Exception, match=r"values don't meet the specifications|schema"):
        render(chart, {"async": {"redis": redis}})
