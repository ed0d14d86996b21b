"""Where the third-party schemas come from, and the message when they come from nowhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.testdata import HTTPROUTE_CRD, DataFile, data_file


def test_berth_test_data_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / HTTPROUTE_CRD.relative
    path.parent.mkdir(parents=True)
    path.write_text("kind: CustomResourceDefinition\n")
    monkeypatch.setenv("BERTH_TEST_DATA", str(tmp_path))
    assert data_file(HTTPROUTE_CRD) == path


def test_a_cached_download_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wanted = DataFile("nowhere/thing.yaml", "v9", "http://127.0.0.1:9/thing.yaml")
    cached = tmp_path / "v9" / "nowhere" / "thing.yaml"
    cached.parent.mkdir(parents=True)
    cached.write_text("x: 1\n")
    monkeypatch.setenv("BERTH_TEST_DATA_CACHE", str(tmp_path))
    assert data_file(wanted) == cached


def test_nothing_anywhere_fails_saying_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wanted = DataFile("nowhere/thing.yaml", "v9", "http://127.0.0.1:9/thing.yaml")  # nothing listens there
    monkeypatch.setenv("BERTH_TEST_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("BERTH_TEST_DATA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as raised:
        data_file(wanted)
    message = str(raised.value)
    assert str(tmp_path / "data" / "nowhere" / "thing.yaml") in message
    assert str(tmp_path / "cache" / "v9" / "nowhere" / "thing.yaml") in message
    assert "http://127.0.0.1:9/thing.yaml" in message and "BERTH_TEST_DATA" in message
