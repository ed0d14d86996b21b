"""Object storage shared by batch transform, async inference, data capture and monitoring:
local paths, file:// and s3:// (boto3, AWS_ENDPOINT_URL).

Reads are streams (never a whole object in memory); writes are atomic: a local file is written
beside its target and renamed, an S3 object is a multipart upload completed only at the end
(or one PUT when small). So an output that exists is complete, which is what resume relies on.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

PART_BYTES = 8 * 1024 * 1024  # S3 multipart part size (at least 5 MiB, except the last part)
READ_BUFFER = 1024 * 1024
TEMP_PREFIX = ".berth-partial-"


class StorageError(Exception):
    """An object could not be listed, read or written; the message names the URI."""


@dataclass(frozen=True)
class Location:
    scheme: str  # "s3" or "file"
    bucket: str  # s3 only
    path: str  # s3: the key; file: the filesystem path

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.path}" if self.scheme == "s3" else self.path

    def child(self, relative: str) -> Location:
        """The object `relative` under this location taken as a prefix (a directory)."""
        if self.scheme == "s3":
            base = self.path if not self.path or self.path.endswith("/") else self.path + "/"
            return Location("s3", self.bucket, base + relative)
        return Location("file", "", str(Path(self.path) / relative))


def parse_uri(uri: str) -> Location:
    if uri.startswith("s3://"):
        parsed = urllib.parse.urlsplit(uri)
        if not parsed.netloc:
            raise StorageError(f"s3 URI needs a bucket: {uri}")
        return Location("s3", parsed.netloc, parsed.path.lstrip("/"))
    if uri.startswith("file://"):
        return Location("file", "", uri[len("file://") :])
    if "://" in uri:
        raise StorageError(f"unsupported URI scheme in {uri}: use s3://, file:// or a local path")
    return Location("file", "", uri)


# The capture writer's client (bounded=True): a destination that accepts connections and never
# answers costs at most CAPTURE_UPLOAD_SECONDS per request (connect, then a read timeout per
# socket read, over CAPTURE_ATTEMPTS attempts) instead of boto's 60 s read timeout, retried.
# The timeouts are per socket operation, not per object: a large upload that keeps moving
# is never cut. Other clients (transform reads and writes, model fetches) keep boto's defaults.
CAPTURE_CONNECT_TIMEOUT = 2.0
CAPTURE_READ_TIMEOUT = 3.0
CAPTURE_ATTEMPTS = 2  # the first try and one retry
CAPTURE_UPLOAD_SECONDS = CAPTURE_ATTEMPTS * (CAPTURE_CONNECT_TIMEOUT + CAPTURE_READ_TIMEOUT)


def s3_client(bounded: bool = False) -> Any:
    """One client per configuration, shared by threads (boto3 clients are thread-safe and
    refresh their credentials themselves): making one costs milliseconds of CPU, which an
    async worker writing an object per request cannot pay each time. `bounded`: the capture
    writer's client, with short timeouts and a small retry budget (CAPTURE_UPLOAD_SECONDS)."""
    environ = os.environ
    return _s3_client(
        environ.get("AWS_ENDPOINT_URL") or None,
        environ.get("AWS_ACCESS_KEY_ID"),
        environ.get("AWS_DEFAULT_REGION") or environ.get("AWS_REGION"),
        bounded,
    )


@functools.lru_cache(maxsize=8)
def _s3_client(endpoint_url: str | None, access_key_id: str | None, region: str | None, bounded: bool) -> Any:
    import boto3

    config = None
    if bounded:
        from botocore.config import Config

        config = Config(
            connect_timeout=CAPTURE_CONNECT_TIMEOUT,
            read_timeout=CAPTURE_READ_TIMEOUT,
            retries={"total_max_attempts": CAPTURE_ATTEMPTS, "mode": "standard"},
        )
    # boto3 reads AWS_ENDPOINT_URL itself in recent versions; passing it keeps older ones working.
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


def _s3_error(action: str, uri: str, error: Exception) -> StorageError:
    response = getattr(error, "response", None) or {}
    code = response.get("Error", {}).get("Code") or type(error).__name__
    return StorageError(f"cannot {action} {uri}: {code}")


# --------------------------------------------------------------------------- listing


def list_inputs(input_uri: str, exclude_uri: str | None = None) -> list[tuple[Location, str]]:
    """The input objects, sorted, each with its name relative to the input (used to name outputs).

    A URI naming one object gives that object; a prefix (or directory) gives every object under
    it except those under `exclude_uri` (the output, when it lies inside the input)."""
    where = parse_uri(input_uri)
    exclude = parse_uri(exclude_uri) if exclude_uri else None
    found = _list_s3(where) if where.scheme == "s3" else _list_local(where)
    if exclude is not None and exclude.scheme == where.scheme:
        prefix = _comparable(exclude).rstrip("/") + "/"
        found = [(loc, rel) for loc, rel in found if not (_comparable(loc) + "/").startswith(prefix)]
    found = [(loc, rel) for loc, rel in found if not Path(rel).name.startswith(TEMP_PREFIX)]
    if not found:
        raise StorageError(f"no input objects at {input_uri}")
    return sorted(found, key=lambda item: item[1])


def _comparable(where: Location) -> str:
    """The location as a string that compares equal for the same object (local paths made absolute)."""
    return where.uri if where.scheme == "s3" else os.path.abspath(where.path)


def holds(prefix: Location, where: Location) -> bool:
    """Whether `where` is `prefix` or lies under it, taken as a prefix (a directory)."""
    if prefix.scheme != where.scheme:
        return False
    outer, inner = _comparable(prefix).rstrip("/"), _comparable(where).rstrip("/")
    return inner == outer or inner.startswith(outer + "/")


def _list_local(where: Location) -> list[tuple[Location, str]]:
    root = Path(where.path)
    if root.is_file():
        return [(where, root.name)]
    if not root.is_dir():
        raise StorageError(f"input not found: {where.path}")
    return [
        (Location("file", "", str(path)), path.relative_to(root).as_posix())
        for path in root.rglob("*")
        if path.is_file()
    ]


def _list_s3(where: Location) -> list[tuple[Location, str]]:
    import botocore.exceptions

    client = s3_client()
    try:
        if where.path and not where.path.endswith("/"):
            try:
                client.head_object(Bucket=where.bucket, Key=where.path)
                return [(where, where.path.rsplit("/", 1)[-1])]
            except botocore.exceptions.ClientError as error:
                if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise
        prefix = where.path if not where.path or where.path.endswith("/") else where.path + "/"
        found = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if not key.endswith("/"):
                    found.append((Location("s3", where.bucket, key), key[len(prefix) :]))
        return found
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        raise _s3_error("list", where.uri, error) from error


def exists(where: Location) -> bool:
    if where.scheme == "file":
        return Path(where.path).is_file()
    import botocore.exceptions

    try:
        s3_client().head_object(Bucket=where.bucket, Key=where.path)
    except botocore.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _s3_error("check", where.uri, error) from error
    return True


# --------------------------------------------------------------------------- reading


class _ChunkReader(io.RawIOBase):
    """A raw stream over anything with read(n) (botocore's StreamingBody), for io.BufferedReader."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


def open_input(where: Location) -> BinaryIO:
    """A buffered binary stream of the object (lines can be iterated without reading it whole)."""
    if where.scheme == "file":
        try:
            return open(where.path, "rb", buffering=READ_BUFFER)  # the caller closes it
        except OSError as error:
            raise StorageError(f"cannot read {where.path}: {error.strerror}") from error
    import botocore.exceptions

    try:
        body = s3_client().get_object(Bucket=where.bucket, Key=where.path)["Body"]
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        raise _s3_error("read", where.uri, error) from error
    return io.BufferedReader(_ChunkReader(body), buffer_size=READ_BUFFER)


# --------------------------------------------------------------------------- writing


class AtomicWriter(Protocol):
    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class LocalWriter:
    """Writes a hidden file beside the target; `commit` renames it into place.

    durable (batch transform): the file is fsynced before the rename and a killed run's
    partial files of this target are removed first, so resuming finds complete outputs only.
    Not durable (async inference's many small objects): the rename alone, which still shows
    a reader all of the object or nothing; an fsync per request would cap the queue at what
    the disk syncs per second, and a scan of the directory per object grows with it.
    """

    def __init__(self, target: Path, durable: bool = True) -> None:
        self._target = target
        self._durable = durable
        self._partial = target.with_name(f"{TEMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{target.name}")
        with self._errors():
            target.parent.mkdir(parents=True, exist_ok=True)
            if durable:
                # A run killed before its commit left its partial file; only this target's writer owns them.
                for stale in target.parent.glob(f"{TEMP_PREFIX}*-{target.name}"):
                    stale.unlink(missing_ok=True)
            self._stream = open(self._partial, "wb", buffering=READ_BUFFER)  # noqa: SIM115 - closed in commit/abort

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            raise StorageError(f"cannot write {self._target}: {error.strerror or error}") from error

    def write(self, data: bytes) -> None:
        with self._errors():
            self._stream.write(data)

    def commit(self) -> None:
        with self._errors():
            self._stream.flush()
            if self._durable:
                os.fsync(self._stream.fileno())
            self._stream.close()
            os.replace(self._partial, self._target)

    def abort(self) -> None:
        self._stream.close()
        self._partial.unlink(missing_ok=True)


class S3Writer:
    """A multipart upload completed only by `commit`; an object smaller than a part is one PUT."""

    def __init__(self, where: Location, bounded: bool = False) -> None:
        self._where = where
        self._client = s3_client(bounded)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= PART_BYTES:
            self._flush_part()

    def _flush_part(self) -> None:
        import botocore.exceptions

        where = self._where
        try:
            if self._upload_id is None:
                created = self._client.create_multipart_upload(Bucket=where.bucket, Key=where.path)
                self._upload_id = created["UploadId"]
            number = len(self._parts) + 1
            answer = self._client.upload_part(
                Bucket=where.bucket,
                Key=where.path,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=bytes(self._buffer),
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
            raise _s3_error("write", where.uri, error) from error
        self._parts.append({"ETag": answer["ETag"], "PartNumber": number})
        self._buffer.clear()

    def commit(self) -> None:
        import botocore.exceptions

        where = self._where
        try:
            if self._upload_id is None:
                self._client.put_object(Bucket=where.bucket, Key=where.path, Body=bytes(self._buffer))
                return
            if self._buffer:
                self._flush_part()
            self._client.complete_multipart_upload(
                Bucket=where.bucket,
                Key=where.path,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
            raise _s3_error("write", where.uri, error) from error

    def abort(self) -> None:
        if self._upload_id is not None:
            with contextlib.suppress(Exception):  # best effort: a lifecycle rule cleans up the rest
                self._client.abort_multipart_upload(
                    Bucket=self._where.bucket, Key=self._where.path, UploadId=self._upload_id
                )
        self._buffer.clear()


def open_output(where: Location, durable: bool = True, bounded: bool = False) -> AtomicWriter:
    """`bounded`: an S3 upload gives up within CAPTURE_UPLOAD_SECONDS when the destination hangs."""
    return S3Writer(where, bounded) if where.scheme == "s3" else LocalWriter(Path(where.path), durable)


def write_local_whole(target: Path, data: bytes) -> None:
    """A small local object written whole, atomically (beside its target, then renamed), not
    fsynced, in four system calls: async inference writes one per request. The directory is
    made only when the open finds it missing (LocalWriter, with its 1 MiB buffer and a mkdir
    each time, took 179 us of CPU for a 30-byte answer on ext4 here; this 138, of which the
    create and the rename are 30 each)."""
    partial = target.with_name(f"{TEMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{target.name}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    try:
        try:
            fd = os.open(partial, flags, 0o666)
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(partial, flags, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(partial, target)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise StorageError(f"cannot write {target}: {error.strerror or error}") from error


def read_local_if_small(path: str, limit: int) -> tuple[int, bytes | None]:
    """A local file's size, and its bytes when it has at most `limit` of them: one open, one
    fstat and the reads (no 1 MiB read buffer for a request of a few kB). OSError as raised."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            return size, None
        pieces, taken = [], 0
        while taken <= limit and (chunk := os.read(fd, min(max(size, 1) + 1, limit + 1 - taken))):
            pieces.append(chunk)
            taken += len(chunk)
    finally:
        os.close(fd)
    if taken > limit:  # grown past the limit since the fstat
        return taken, None
    return taken, b"".join(pieces)


def write_object(where: Location, chunks: Iterator[bytes], durable: bool = True) -> None:
    writer = open_output(where, durable)
    try:
        for chunk in chunks:
            writer.write(chunk)
    except BaseException:
        writer.abort()
        raise
    writer.commit()
