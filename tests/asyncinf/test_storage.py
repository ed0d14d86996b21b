"""Async inference's small local objects: written whole and atomically in few system calls,
read whole when small, and every failure a StorageError naming the object."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from berth_serving.asyncinf.storage import check_location, read_if_small, write_bytes
from berth_serving.storage import TEMP_PREFIX, StorageError


def test_an_answer_is_written_whole_into_a_directory_made_on_demand(tmp_path: Path) -> None:
    target = tmp_path / "out" / "deep" / "id-1.out"
    write_bytes(f"file://{target}", b'{"predictions": [1]}')
    assert target.read_bytes() == b'{"predictions": [1]}'
    write_bytes(f"file://{target}", b"second")  # a redelivered message replaces it whole
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["id-1.out"]  # no partial left


def test_an_answer_that_cannot_be_written_names_it_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the directory would be")
    with pytest.raises(StorageError, match=r"cannot write .*taken/id-1.out: Not a directory"):
        write_bytes(f"file://{tmp_path / 'taken' / 'id-1.out'}", b"x")
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(StorageError, match="Permission denied"):
            write_bytes(f"file://{readonly / 'id-1.out'}", b"x")
    assert not [p for p in tmp_path.rglob(f"{TEMP_PREFIX}*")]


def test_a_small_input_is_read_whole_and_a_large_one_only_measured(tmp_path: Path) -> None:
    small, large, empty = tmp_path / "small", tmp_path / "large", tmp_path / "empty"
    small.write_bytes(b"a" * 3000)
    large.write_bytes(b"b" * 5000)
    empty.write_bytes(b"")
    assert read_if_small(check_location(f"file://{small}", "input"), 4096) == (3000, b"a" * 3000)
    assert read_if_small(check_location(f"file://{large}", "input"), 4096) == (5000, None)
    assert read_if_small(check_location(f"file://{empty}", "input"), 4096) == (0, b"")


def test_a_missing_input_is_a_storage_error_naming_its_uri(tmp_path: Path) -> None:
    missing = f"file://{tmp_path / 'gone.json'}"
    with pytest.raises(StorageError, match=rf"cannot read {missing}: No such file or directory"):
        read_if_small(check_location(missing, "input"), 4096)
