"""Where async inputs and answers live: s3:// or file:// URIs, over batch transform's storage
(streamed reads, atomic writes). Every call here is blocking I/O: callers on an event loop
run them with asyncio.to_thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

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
