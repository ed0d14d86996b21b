"""`berth invoke` on its own: bodies from text and files, the base URL from the environment,
and a clear error when nothing listens."""

from __future__ import annotations

from pathlib import Path

from berth_operator.invoke import invocation_url, read_data
from berth_operator.invoke import invoke_command as invoke
from click.testing import CliRunner

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
