"""Where async inputs and answers live: s3:// or file:// URIs, over batch transform's storage
(streamed reads, atomic writes). Every function here is blocking I/O: callers on an event loop
run them with asyncio.to_thread, or through StorageCalls for the small whole objects of each
message.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from berth_serving.storage import (
    Location,
    StorageError,
    open_input,
    parse_uri,
    read_local_if_small,
    s3_client,
    write_local_whole,
    write_object,
)

# The largest input X-Berth-Input-Location may name (SageMaker's async limit).
MAX_INPUT_BYTES = 1024**3
CHUNK_BYTES = 1024 * 1024

__all__ = ["CHUNK_BYTES", "MAX_INPUT_BYTES", "LocationError", "StorageError", "open_input"]


class LocationError(ValueError):
    """A location a client may not name; the message says what is expected."""


def check_location(uri: str, what: str = "X-Berth-Input-Location") -> Location:
    """An s3:// or file:// URI naming one object, with no `..` in a file:// path."""
    if uri.startswith("s3://"):
        try:
            where = parse_uri(uri)
        except StorageError as error:
            raise LocationError(f"{what}: {error}") from None
        if not where.path or where.path.endswith("/"):
            raise LocationError(f"{what} must name an object (s3://BUCKET/KEY), not a prefix: {uri}")
        return where
    if uri.startswith("file://"):
        path = uri[len("file://") :]
        if not path.startswith("/"):
            raise LocationError(f"{what} must be an absolute file:///PATH: {uri}")
        if ".." in PurePosixPath(path).parts:
            raise LocationError(f"{what} may not contain '..': {uri}")
        if path.endswith("/"):
            raise LocationError(f"{what} must name a file, not a directory: {uri}")
        return Location("file", "", path)
    raise LocationError(f"{what} must be an s3:// or file:// URI, not {uri!r}")


def uri_of(where: Location) -> str:
    """The URI of a location, file:// included (Location.uri gives a bare path for files)."""
    return where.uri if where.scheme == "s3" else "file://" + where.path


def object_under(prefix_uri: str, name: str) -> str:
    """The URI of object `name` under a prefix (an outputUri or failureUri of a config)."""
    return uri_of(parse_uri(prefix_uri).child(name))


def size_of(where: Location) -> int:
    """The object's size in bytes; StorageError when it cannot be read."""
    if where.scheme == "file":
        try:
            return os.stat(where.path).st_size
        except OSError as error:
            raise StorageError(f"cannot read {uri_of(where)}: {error.strerror}") from None
    import botocore.exceptions

    try:
        head = s3_client().head_object(Bucket=where.bucket, Key=where.path)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        response = getattr(error, "response", None) or {}
        code = response.get("Error", {}).get("Code") or type(error).__name__
        raise StorageError(f"cannot read {uri_of(where)}: {code}") from None
    return int(head["ContentLength"])


def write_bytes(uri: str, data: bytes) -> None:
    """Write one object whole, atomically (a reader sees all of it or nothing). A file:// object
    is not fsynced: async objects are many and small, and an fsync each capped the queue at
    what the disk syncs per second; so a machine crash can lose an acknowledged file:// answer
    (s3:// answers are durable once written)."""
    where = parse_uri(uri)
    if where.scheme == "file":
        write_local_whole(Path(where.path), data)
    else:
        write_object(where, iter([data]), durable=False)


def read_if_small(where: Location, limit: int) -> tuple[int, bytes | None]:
    """The object's size, and its bytes when it has at most `limit` of them (one call)."""
    if where.scheme == "file":
        try:
            return read_local_if_small(where.path, limit)
        except OSError as error:
            raise StorageError(f"cannot read {uri_of(where)}: {error.strerror}") from None
    size = size_of(where)
    if size > limit:
        return size, None
    return size, read_whole(where)


def read_whole(where: Location) -> bytes:
    with open_input(where) as stream:
        return stream.read()


def read_bytes(uri: str) -> bytes:
    with open_input(parse_uri(uri)) as stream:
        return stream.read()


def chunks_of(stream: BinaryIO) -> Iterator[bytes]:
    while True:
        data = stream.read(CHUNK_BYTES)
        if not data:
            return
        yield data


class StorageCalls:
    """The small whole-object calls of many messages, off the event loop. A file:// read or
    write takes tens of microseconds, less than a thread handoff (asyncio.to_thread cost 60 us
    of CPU a call here): the ones made while a batch runs go together in the next, one handoff
    a batch, run in turn. An s3:// call waits on the network: each gets its own thread."""

    def __init__(self) -> None:
        self._waiting: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def read_if_small(self, where: Location, limit: int) -> tuple[int, bytes | None]:
        if where.scheme == "file":
            found: tuple[int, bytes | None] = await self._local(read_if_small, where, limit)
            return found
        return await asyncio.to_thread(read_if_small, where, limit)

    async def write_bytes(self, uri: str, data: bytes) -> None:
        if parse_uri(uri).scheme == "file":
            await self._local(write_bytes, uri, data)
        else:
            await asyncio.to_thread(write_bytes, uri, data)

    async def _local(self, call: Callable[..., Any], *arguments: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((call, arguments, future))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                outcomes = await asyncio.to_thread(_run_in_turn, [(call, args) for call, args, _ in batch])
                for (_, _, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():  # its caller was cancelled
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._runner = None
            left, self._waiting = self._waiting, []  # empty unless this task was cancelled
            for _, _, future in left:
                future.cancel()


def _run_in_turn(calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[tuple[bool, Any]]:
    outcomes: list[tuple[bool, Any]] = []
    for call, arguments in calls:
        try:
            outcomes.append((True, call(*arguments)))
        except Exception as error:  # the caller's, raised where it awaits
            outcomes.append((False, error))
    return outcomes
