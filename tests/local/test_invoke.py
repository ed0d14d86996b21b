"""`berth invoke` on its own: bodies from text and files, the base URL from the environment,
a clear error when nothing listens, and the credentials it sends (never prints)."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from berth_operator.invoke import invocation_url, read_data, safe_for_kubeconfig_token
from berth_operator.invoke import invoke_command as invoke
from click.testing import CliRunner, Result

from .support import free_port


def test_data_from_text_and_file(tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text('{"instances": [[1, 2, 3, 4]]}')
    assert read_data(f"@{body}") == body.read_bytes()
    assert read_data("[[1]]") == b"[[1]]"
    assert invocation_url("http://h:1/", "ns", "ep") == "http://h:1/endpoints/ns/ep/invocations"


def test_nothing_listening_is_a_clear_error_and_exit_1(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(invoke, ["ep", "--data", "[[1]]"], env={"BERTH_URL": base})
    assert result.exit_code == 1
    assert f"cannot reach {base}/endpoints/default/ep/invocations" in result.output
    assert "berth up" in result.output
    missing = CliRunner().invoke(invoke, ["ep", "--data", f"@{tmp_path / 'nope.json'}"])
    assert missing.exit_code == 2 and "cannot read" in missing.output


# --------------------------------------------------------------------------- credentials


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers 200 to a request carrying the expected credential, else 401; keeps every request's headers."""

    seen: list[dict[str, str]] = []
    wanted: dict[str, str] = {}

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {key.lower(): value for key, value in self.headers.items()}
        type(self).seen.append(headers)
        ok = all(headers.get(key) == value for key, value in self.wanted.items())
        body = b'{"outputs": [1]}' if ok else b'{"error": {"code": 401, "message": "needs a bearer token"}}'
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Berth-Variant", "blue")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[type[Recorder]]:
    handler = type("Handler", (Recorder,), {"seen": [], "wanted": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def kubeconfig(path: Path, user: dict[str, object]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "me", "user": user}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "me"}}],
                "current-context": "ctx",
            }
        )
    )
    return path


SECRET = "eyJhbGciOi.secret-token-value.sig"


def run_invoke(endpoint: type[Recorder], *args: str, **env: str | None) -> Result:
    base = {
        "BERTH_URL": endpoint.url,
        "BERTH_TOKEN": None,
        "BERTH_API_KEY": None,
        "KUBECONFIG": "/nonexistent",
    }  # type: ignore[attr-defined]
    return CliRunner().invoke(invoke, ["ep", "--data", "[[1]]", *args], env={**base, **env})


def test_token_from_the_flag_or_the_environment_is_sent_and_never_printed(endpoint: type[Recorder]) -> None:
    endpoint.wanted = {"authorization": f"Bearer {SECRET}"}
    by_flag = run_invoke(endpoint, "--token", SECRET)
    by_env = run_invoke(endpoint, BERTH_TOKEN=SECRET)
    for result in (by_flag, by_env):
        assert result.exit_code == 0, result.output
        assert SECRET not in result.output
    assert [seen.get("authorization") for seen in endpoint.seen] == [f"Bearer {SECRET}"] * 2


def test_api_key_is_sent_as_x_berth_api_key_and_wins_over_the_kubeconfig(
    endpoint: type[Recorder], tmp_path: Path
) -> None:
    endpoint.wanted = {"x-berth-api-key": SECRET}
    config = kubeconfig(tmp_path / "config", {"token": "kube-token"})
    result = run_invoke(endpoint, "--api-key", SECRET, KUBECONFIG=str(config))
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert "authorization" not in endpoint.seen[0]
    both = run_invoke(endpoint, "--api-key", "k", "--token", "t")
    assert both.exit_code == 2 and "not both" in both.output


def test_the_kubeconfig_users_token_or_token_file_is_sent(endpoint: type[Recorder], tmp_path: Path) -> None:
    endpoint.wanted = {"authorization": f"Bearer {SECRET}"}
    plain = kubeconfig(tmp_path / "plain", {"token": SECRET})
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n")
    from_file = kubeconfig(tmp_path / "from-file", {"tokenFile": str(token_file)})
    for config in (plain, from_file):
        result = run_invoke(endpoint, KUBECONFIG=str(config))
        assert result.exit_code == 0, result.output
        assert SECRET not in result.output
    # KUBECONFIG lists several files: the first current-context, users looked up across all.
    context_only = tmp_path / "context-only"
    context_only.write_text(yaml.safe_dump({"current-context": "ctx"}))
    merged = run_invoke(endpoint, KUBECONFIG=f"{context_only}{os.pathsep}{plain}")
    assert merged.exit_code == 0, merged.output
    assert len(endpoint.seen) == 3


def test_an_exec_plugin_is_not_run_and_a_401_says_what_to_pass(
    endpoint: type[Recorder], tmp_path: Path
) -> None:
    endpoint.wanted = {"authorization": f"Bearer {SECRET}"}
    marker = tmp_path / "ran"
    config = kubeconfig(
        tmp_path / "exec",
        {
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": "touch",
                "args": [str(marker)],
            }
        },
    )
    result = run_invoke(endpoint, KUBECONFIG=str(config))
    assert result.exit_code == 1
    assert "error: 401" in result.output and "needs a bearer token" in result.output
    assert "--token" in result.output and "kubectl create token" in result.output
    assert "authenticates with an exec plugin, which berth invoke does not run" in result.output
    assert not marker.exists() and "authorization" not in endpoint.seen[0]


def test_a_refused_token_says_where_it_came_from_not_what_it_is(endpoint: type[Recorder]) -> None:
    endpoint.wanted = {"authorization": "Bearer the-right-one"}
    result = run_invoke(endpoint, BERTH_TOKEN=SECRET)
    assert result.exit_code == 1
    assert "sent: the token of BERTH_TOKEN" in result.output and SECRET not in result.output


def test_a_kubeconfig_token_goes_only_over_tls_or_to_this_machine() -> None:
    assert safe_for_kubeconfig_token("https://gateway.example/endpoints/a/b/invocations")
    assert safe_for_kubeconfig_token("http://127.0.0.1:8080/endpoints/a/b/invocations")
    assert safe_for_kubeconfig_token("http://localhost:8080/x")
    assert safe_for_kubeconfig_token("http://[::1]:8080/x")
    assert not safe_for_kubeconfig_token("http://gateway.example/endpoints/a/b/invocations")
    assert not safe_for_kubeconfig_token("http://10.0.0.7:8080/x")
    assert not safe_for_kubeconfig_token("http://127.0.0.1.example.com/x")
