"""Async inference's small local objects: written whole and atomically in few system calls,
read whole when small, and every failure a StorageError naming the object."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from pathlib import Path
from typing import Any

import pytest
from berth_serving.asyncinf.storage import StorageCalls, check_location, read_if_small, write_bytes
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


class CountedExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, counting the thread handoffs it is given."""

    def __init__(self) -> None:
        super().__init__(4)
        self.handoffs = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.handoffs += 1
        return super().submit(*args, **kwargs)


def test_local_calls_made_together_take_one_thread_handoff_each_answered_for_itself(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where a directory would be")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for n in range(10):
        (inputs / f"{n}.in").write_bytes(b"i" * n)

    async def main() -> tuple[list[Any], list[Any], int]:
        executor = CountedExecutor()
        asyncio.get_running_loop().set_default_executor(executor)
        calls = StorageCalls()
        writes = [calls.write_bytes(f"file://{tmp_path / 'out' / f'{n}.out'}", b"o" * n) for n in range(10)]
        writes.append(calls.write_bytes(f"file://{tmp_path / 'taken' / 'x.out'}", b"x"))
        reads = [
            calls.read_if_small(check_location(f"file://{inputs / f'{n}.in'}", "input"), 5) for n in range(10)
        ]
        reads.append(calls.read_if_small(check_location(f"file://{inputs / 'gone.in'}", "input"), 5))
        written = await asyncio.gather(*writes, return_exceptions=True)
        read = await asyncio.gather(*reads, return_exceptions=True)
        return written, read, executor.handoffs

    written, read, handoffs = asyncio.run(main())
    assert written[:10] == [None] * 10
    assert isinstance(written[10], StorageError) and "taken/x.out" in str(written[10])
    assert [(tmp_path / "out" / f"{n}.out").read_bytes() for n in range(10)] == [b"o" * n for n in range(10)]
    assert read[:10] == [(n, b"i" * n) if n <= 5 else (n, None) for n in range(10)]
    assert isinstance(read[10], StorageError) and "gone.in" in str(read[10])
    assert handoffs == 2  # the writes made together, then the reads: not 22
