"""Get a model onto local disk: the ONE code path used by `berth serve` and by the
storage-initializer init container (`berth fetch-model`).

Sources: a local path, `file://PATH`, `http(s)://` (streamed), `s3://BUCKET/KEY` (boto3,
standard AWS credentials chain, `AWS_ENDPOINT_URL` for MinIO-style stores) and
`pvc://CLAIM/PATH`, which reads `/mnt/pvc/CLAIM/PATH`: the operator mounts the claim there.
A `.tar.gz` (SageMaker's model.tar.gz) is unpacked and the single .onnx inside is served.

What reaches DEST is complete and verified, or nothing does: a download is written under a
hidden name and renamed only once its length (Content-Length, S3's ContentLength) and sha256
match; an archive is unpacked entry by entry into a hidden directory and moved into place only
when every entry passed. Archives may hold regular files and directories only (a model needs
no links or devices), each resolved inside DEST. `max_bytes` bounds what the fetch holds in
DEST at any moment (the download, plus the unpacked files while the archive is still there),
counted as it is written. Transient failures (connection errors, 5xx, a transfer cut short) are
retried with backoff for a bounded time; 4xx answers are not. Every failure is a `FetchError`
with a one-line message meant for a person reading Endpoint status.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http
import http.client
import logging
import os
import posixpath
import random
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, TypeVar

PVC_MOUNT_ROOT = Path("/mnt/pvc")
CHUNK_BYTES = 1024 * 1024
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
MAX_BYTES_ENV = (
    "BERTH_FETCH_MAX_BYTES"  # `berth fetch-model --max-bytes`; the operator passes the volume's sizeLimit
)
# Partial downloads and archives being unpacked live under this prefix in DEST; a fetch removes
# what an earlier, killed attempt left (the init container restarts on the same emptyDir).
WORK_PREFIX = ".berth-fetch-"
FILE_MODE = 0o644
DIR_MODE = 0o755

log = logging.getLogger("berth.fetch")
T = TypeVar("T")


class FetchError(Exception):
    """A model could not be fetched; the message is one line, fit for a status field."""


class ModelNotFound(FetchError):
    """Nothing at the URI (a 404, a missing key or file): the client named no model."""


class _Transient(Exception):
    """A failure that a new attempt may not meet: a broken connection, a 5xx, a cut transfer."""


@dataclass(frozen=True)
class RetryPolicy:
    """How downloads are retried. `timeout_seconds` bounds the connection and every read, so a
    stalled transfer fails; no attempt starts `give_up_after_seconds` after the first one."""

    attempts: int = 4
    first_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 8.0
    give_up_after_seconds: float = 120.0
    timeout_seconds: float = 60.0


DEFAULT_RETRY = RetryPolicy()


def fetch_model(
    uri: str,
    dest: Path,
    sha256: str | None = None,
    *,
    max_bytes: int | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    cache_dir: Path | None = None,
) -> Path:
    """Put the model named by `uri` under `dest` and return the path of the .onnx to serve.

    `sha256` is the expected digest of the file fetched (the archive, for an archive);
    `max_bytes` (None: no limit) bounds the bytes this fetch holds in `dest` at any moment;
    `cache_dir` (with a sha256 only: it is the key) is a node-local cache read before and filled
    after a download."""
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(dest)
    except OSError as error:
        raise FetchError(f"cannot use {dest}: {error.strerror or error}") from error
    budget = _Budget(max_bytes)
    expected = sha256.strip().lower() if sha256 else None
    cache = ModelCache(Path(cache_dir), expected) if cache_dir is not None and expected else None
    fetched = cache.take(dest, budget) if cache is not None else None
    if fetched is None:
        fetched = _fetch(uri, dest, expected, budget, retry)
        if cache is not None and fetched.is_file():
            cache.store(fetched)
    if fetched.is_file() and is_archive(fetched):
        try:
            return _unpack(fetched, dest, budget)
        finally:
            if not _is_local_source(uri, fetched):  # our copy of it, not the source itself
                fetched.unlink(missing_ok=True)
    return fetched if fetched.is_file() else find_onnx(fetched)


class ModelCache:
    """DIR/SHA256/NAME: a verified model file by its digest, shared by the pods of a node.

    Written under a temporary name and renamed, so a reader never sees half a file; read with
    the digest checked again, so a corrupted entry is dropped and downloaded anew, never served.
    The cache is an optimisation: a failure to read or fill it is logged, not fatal."""

    def __init__(self, root: Path, sha256: str) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise FetchError(f"sha256 must be 64 hex digits to key the model cache, got {sha256!r}")
        self.entry = root / sha256
        self.sha256 = sha256

    def _cached(self) -> Path | None:
        with contextlib.suppress(OSError):
            files = [p for p in self.entry.iterdir() if p.is_file() and not p.name.startswith(".")]
            if len(files) == 1:
                return files[0]
        return None

    def take(self, dest: Path, budget: _Budget) -> Path | None:
        cached = self._cached()
        if cached is None:
            return None
        try:
            copied = _copy_file(cached, dest / cached.name, self.sha256, budget)
        except FetchError as error:
            log.warning("model cache entry refused, downloading", extra={"fields": {"error": str(error)}})
            _remove(self.entry)
            return None
        log.info("model cache hit", extra={"fields": {"path": str(cached)}})
        return copied

    def store(self, fetched: Path) -> None:
        temporary = self.entry / f".{fetched.name}.{os.getpid()}.{random.getrandbits(32):08x}"
        try:
            self.entry.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fetched, temporary)
            os.replace(temporary, self.entry / fetched.name)
        except OSError as error:
            log.warning("cannot fill the model cache", extra={"fields": {"error": str(error)}})
            with contextlib.suppress(OSError):
                temporary.unlink()


def _is_local_source(uri: str, path: Path) -> bool:
    scheme = urllib.parse.urlsplit(uri).scheme.lower() if "://" in uri else ""
    return scheme in ("", "file", "pvc") and local_path(uri).resolve() == path.resolve()


def _fetch(uri: str, dest: Path, sha256: str | None, budget: _Budget, retry: RetryPolicy) -> Path:
    scheme = urllib.parse.urlsplit(uri).scheme.lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        return _download_http(uri, dest, sha256, budget, retry)
    if scheme == "s3":
        return _download_s3(uri, dest, sha256, budget, retry)
    if scheme == "gs":
        raise FetchError(f"gs:// is not supported yet ({uri}); copy the model to s3:// or http(s)://")
    if scheme in ("", "file", "pvc"):
        return _copy_local(local_path(uri), uri, dest, sha256, budget, retry)
    raise FetchError(f"unsupported model URI scheme {scheme}:// in {uri}")


def local_path(uri: str, pvc_root: Path = PVC_MOUNT_ROOT) -> Path:
    """The filesystem path of a local, file:// or pvc:// URI.

    `file://` is followed by a path: `file:///abs/m.onnx` is absolute, `file://rel/m.onnx`
    relative to the working directory."""
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if uri.startswith("pvc://"):
        claim_and_path = uri[len("pvc://") :].strip("/")
        if not claim_and_path:
            raise FetchError(f"pvc:// URI needs a claim name: {uri}")
        return pvc_root / claim_and_path
    return Path(uri)


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def find_onnx(directory: Path, where: str | None = None) -> Path:
    """The single .onnx file under `directory` (searched recursively); `where` names it in errors."""
    where = where or str(directory)
    found = sorted(p for p in directory.rglob("*.onnx") if p.is_file())
    if not found:
        raise FetchError(f"no .onnx file in {where}")
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(directory)) for p in found)
        raise FetchError(f"several .onnx files in {where} ({names}); name one in the model URI")
    return found[0]


def verify_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    _check_digest(path.name, expected, digest.hexdigest())


def _check_digest(name: str, expected: str, actual: str) -> None:
    if actual != expected.strip().lower():
        raise FetchError(f"sha256 mismatch for {name}: expected {expected.strip().lower()}, got {actual}")


def _remove_leftovers(dest: Path) -> None:
    for entry in dest.iterdir():
        if entry.name.startswith(WORK_PREFIX):
            _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the size limit


def human_size(count: int) -> str:
    if count < 1024:
        return f"{count} bytes"
    size = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TiB"


@dataclass
class _Budget:
    """The bytes this fetch holds in DEST now (downloads, unpacked files), against --max-bytes."""

    limit: int | None
    held: int = 0

    def check(self, more: int, detail: Callable[[], str]) -> None:
        """Refuse before writing when `more` bytes would not fit; `detail` says what and how big."""
        if self.limit is not None and self.held + more > self.limit:
            raise FetchError(
                f"over the fetch limit of {self.limit} bytes ({human_size(self.limit)}, --max-bytes): {detail()}"
            )

    def take(self, count: int, detail: Callable[[], str]) -> None:
        self.check(count, detail)
        self.held += count

    def give_back(self, count: int) -> None:
        self.held -= count


# --------------------------------------------------------------------------- writing a file


class _Download:
    """One file written into DEST under a hidden name: counted as it is written, hashed when a
    sha256 is expected, renamed to its own name by `finish` only when complete and verified."""

    def __init__(self, target: Path, source: str, sha256: str | None, budget: _Budget) -> None:
        self.target = target
        self.partial = target.with_name(WORK_PREFIX + target.name)
        self.source = source
        self.received = 0
        self._sha256 = sha256
        self._digest = hashlib.sha256() if sha256 else None
        self._budget = budget
        try:
            self._out: BinaryIO | None = open(self.partial, "wb")  # noqa: SIM115 - closed in finish/discard
        except OSError as error:
            raise FetchError(f"cannot write {self.partial}: {error.strerror or error}") from error

    def write(self, chunk: bytes) -> None:
        self._budget.take(
            len(chunk), lambda: f"{self.source} sent more than {self.received + len(chunk)} bytes"
        )
        self.received += len(chunk)
        if self._digest is not None:
            self._digest.update(chunk)
        assert self._out is not None
        try:
            self._out.write(chunk)
        except OSError as error:
            raise FetchError(f"cannot write {self.target}: {error.strerror or error}") from error

    def finish(self, expected_size: int | None) -> Path:
        self._close()
        if expected_size is not None and self.received != expected_size:
            raise _Transient(
                f"the transfer stopped after {self.received} of {expected_size} bytes from {self.source}"
            )
        if self._digest is not None and self._sha256 is not None:
            _check_digest(self.target.name, self._sha256, self._digest.hexdigest())
        try:
            os.replace(self.partial, self.target)
        except OSError as error:
            raise FetchError(f"cannot write {self.target}: {error.strerror or error}") from error
        return self.target

    def discard(self) -> None:
        self._close()
        self.partial.unlink(missing_ok=True)
        self._budget.give_back(self.received)

    def _close(self) -> None:
        if self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()
            self._out = None


def _save(
    chunks: Iterator[bytes],
    target: Path,
    *,
    source: str,
    sha256: str | None,
    budget: _Budget,
    size: int | None,
    source_errors: tuple[type[BaseException], ...],
) -> Path:
    """Write `chunks` to `target`; a failure of the source while reading is transient."""
    download = _Download(target, source, sha256, budget)
    try:
        while True:
            try:
                chunk = next(chunks, b"")
            except source_errors as error:
                raise _Transient(
                    f"the transfer broke after {download.received} bytes ({_reason(error)}) from {source}"
                ) from error
            if not chunk:
                return download.finish(size)
            download.write(chunk)
    except BaseException:
        download.discard()
        raise


def _reason(error: BaseException) -> str:
    """A short, human reason for a network or read error."""
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason
    elif isinstance(error, urllib.error.URLError):
        return str(error.reason)
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, http.client.IncompleteRead):
        return "the connection closed in the middle of the body"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


# --------------------------------------------------------------------------- retries


def _with_retries(attempt: Callable[[], T], retry: RetryPolicy) -> T:
    started = time.monotonic()
    number = 1
    while True:
        try:
            return attempt()
        except _Transient as error:
            elapsed = time.monotonic() - started
            # Jittered exponential backoff, so pods restarted together do not retry in step.
            pause = min(retry.max_backoff_seconds, retry.first_backoff_seconds * 2 ** (number - 1))
            pause *= random.uniform(0.5, 1.0)
            if number >= retry.attempts or elapsed + pause > retry.give_up_after_seconds:
                tries = f" ({number} attempts over {elapsed:.1f}s)" if number > 1 else ""
                raise FetchError(f"{error}{tries}") from error
            log.info("fetch attempt %d failed, retrying in %.1fs: %s", number, pause, error)
            time.sleep(pause)
            number += 1


# --------------------------------------------------------------------------- local sources


def _copy_local(
    source: Path, uri: str, dest: Path, sha256: str | None, budget: _Budget, retry: RetryPolicy
) -> Path:
    if not source.exists():
        raise ModelNotFound(f"model not found: {source}")
    if source.is_dir():
        if sha256:
            raise FetchError(f"sha256 given but {uri} is a directory; point modelUri at a single file")
        if source.resolve() != dest.resolve():
            _copy_tree(source, dest, budget)
        return dest
    target = dest / source.name
    if source.resolve() == target.resolve():  # already in place
        if sha256:
            verify_sha256(target, sha256)
        return target
    return _with_retries(lambda: _copy_file(source, target, sha256, budget), retry)


def _copy_file(source: Path, target: Path, sha256: str | None, budget: _Budget) -> Path:
    try:
        size = source.stat().st_size
        stream = source.open("rb")
    except OSError as error:
        raise FetchError(f"cannot read {source}: {error.strerror or error}") from error
    budget.check(size, lambda: f"{source} is {size} bytes ({human_size(size)})")
    with stream:
        chunks = iter(lambda: stream.read(CHUNK_BYTES), b"")
        return _save(
            chunks,
            target,
            source=str(source),
            sha256=sha256,
            budget=budget,
            size=size,
            source_errors=(OSError,),
        )


def _copy_tree(source: Path, dest: Path, budget: _Budget) -> None:
    """A model directory, copied into a hidden directory first and moved in only when complete."""

    def copy(source_file: str, target_file: str) -> None:
        _copy_counted(Path(source_file), Path(target_file), budget)

    with _staging(dest, "copy") as staging:
        try:
            shutil.copytree(source, staging, copy_function=copy, dirs_exist_ok=True)
        except shutil.Error as error:  # copytree gathers the errors of every file: name the first
            failed_source, _, why = error.args[0][0]
            raise FetchError(f"cannot copy {failed_source}: {why}") from error
        except OSError as error:
            raise FetchError(f"cannot copy {source}: {error.strerror or error}") from error


def _copy_counted(source: Path, target: Path, budget: _Budget) -> None:
    size = source.stat().st_size
    budget.check(size, lambda: f"{source} is {size} bytes ({human_size(size)})")
    with source.open("rb") as stream:
        chunks = iter(lambda: stream.read(CHUNK_BYTES), b"")
        # No length check: a file of a local directory that changes while copied is a read error.
        _save(chunks, target, source=str(source), sha256=None, budget=budget, size=None, source_errors=())


@contextlib.contextmanager
def _staging(dest: Path, purpose: str) -> Iterator[Path]:
    """A hidden directory in DEST whose entries move into DEST on success; removed on failure."""
    staging = dest / f"{WORK_PREFIX}{purpose}"
    try:
        staging.mkdir(mode=DIR_MODE)
        yield staging
        _move_into(staging, dest)
    except OSError as error:
        raise FetchError(f"cannot write into {dest}: {error.strerror or error}") from error
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _move_into(staging: Path, dest: Path) -> None:
    """Move every entry of `staging` into `dest`, replacing what an earlier fetch left there."""
    for entry in sorted(staging.iterdir()):
        target = dest / entry.name
        if target.exists() or target.is_symlink():
            _remove(target)
        os.replace(entry, target)
    staging.rmdir()


# --------------------------------------------------------------------------- archives


def _unpack(archive: Path, dest: Path, budget: _Budget) -> Path:
    """Unpack `archive` into `dest` and return the .onnx inside; on any refusal nothing stays."""
    with _staging(dest, "unpack") as staging:
        _extract_members(archive, staging, budget)
        relative = find_onnx(staging, archive.name).relative_to(staging)
    return dest / relative


def _extract_members(archive: Path, root: Path, budget: _Budget) -> None:
    """Entry by entry, never through extractall: each one checked before anything is written."""
    real_root = os.path.realpath(root)
    kinds: dict[str, bool] = {}  # entry written so far -> is a directory
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                _extract_member(tar, member, real_root, kinds, budget, archive.name)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        # Errors of writing are FetchErrors already: what is left here is the archive's fault.
        raise FetchError(
            f"cannot unpack {archive.name}: the archive is truncated or corrupt ({_reason(error)})"
        ) from error


def _refuse(member: tarfile.TarInfo, why: str) -> FetchError:
    return FetchError(f"refusing archive entry {member.name}: {why}")


def _entry_name(member: tarfile.TarInfo) -> str:
    """The entry's name, normalised, once it is known to be a plain file or directory inside."""
    if member.issym():
        raise _refuse(member, "a symbolic link (model archives need none)")
    if member.islnk():
        raise _refuse(member, "a hard link (model archives need none)")
    if member.ischr() or member.isblk():
        raise _refuse(member, "a device")
    if member.isfifo():
        raise _refuse(member, "a fifo")
    if not (member.isfile() or member.isdir()):
        raise _refuse(member, f"an entry of type {member.type!r}")
    if member.name.startswith(("/", "\\")) or PurePosixPath(member.name).is_absolute():
        raise FetchError(f"refusing archive entry with an absolute path: {member.name}")
    if ".." in PurePosixPath(member.name).parts:
        raise FetchError(f"refusing archive entry that escapes the destination: {member.name}")
    return posixpath.normpath(member.name)


def _extract_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    root: str,
    kinds: dict[str, bool],
    budget: _Budget,
    archive: str,
) -> None:
    name = _entry_name(member)
    target = os.path.realpath(os.path.join(root, name))
    if target != root and not target.startswith(root + os.sep):
        raise FetchError(f"refusing archive entry that escapes the destination: {member.name}")
    if kinds.get(name) is False or (name in kinds and not member.isdir()):
        raise _refuse(member, "a duplicate name")
    parents = [str(p) for p in PurePosixPath(name).parents if str(p) != "."]
    for parent in parents:
        if kinds.get(parent) is False:
            raise _refuse(member, f"under a file ({parent}) of the same archive")
    if member.isdir():
        if target != root:
            _make_dirs(root, [*reversed(parents), name], kinds)
        return
    if target == root:
        raise _refuse(member, "a file that names the destination itself")
    _make_dirs(root, list(reversed(parents)), kinds)
    budget.check(
        member.size,
        lambda: (
            f"unpacking {archive} needs at least {budget.held + member.size} bytes "
            f"({human_size(budget.held + member.size)}): {archive} entry {name} is {member.size} bytes "
            f"({human_size(member.size)})"
        ),
    )
    _write_member(tar, member, target, budget, archive)
    kinds[name] = False


def _make_dirs(root: str, names: list[str], kinds: dict[str, bool]) -> None:
    for name in names:
        if kinds.get(name):
            continue
        path = os.path.join(root, name)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(path) or os.path.islink(path):
                raise FetchError(f"refusing archive entry {name}: a duplicate name") from None
        except OSError as error:
            raise FetchError(f"cannot unpack {name}: {error.strerror or error}") from error
        kinds[name] = True


def _write_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, target: str, budget: _Budget, archive: str
) -> None:
    stream = tar.extractfile(member)
    assert stream is not None  # a regular file always has a stream
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        descriptor = os.open(target, flags, FILE_MODE)
    except OSError as error:
        raise FetchError(f"cannot unpack {member.name} from {archive}: {error.strerror or error}") from error
    written = 0
    with os.fdopen(descriptor, "wb") as out, stream:
        os.fchmod(descriptor, FILE_MODE)  # whatever the umask: the serving container reads it
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            # Counted as written, whatever the header said, and stopped at the limit.
            size = written + len(chunk)
            budget.take(len(chunk), lambda: f"unpacking {archive}: {member.name} is more than {size} bytes")  # noqa: B023 - called at once
            written += len(chunk)
            try:
                out.write(chunk)
            except OSError as error:
                raise FetchError(
                    f"cannot unpack {member.name} from {archive}: {error.strerror or error}"
                ) from error


# --------------------------------------------------------------------------- http(s)


def _file_name(url_path: str, fallback: str = "model.onnx") -> str:
    name = PurePosixPath(urllib.parse.unquote(url_path)).name
    return name if name not in ("", ".", "..") else fallback


def _status_text(code: int) -> str:
    try:
        return f"{code} {http.HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def _download_http(url: str, dest: Path, sha256: str | None, budget: _Budget, retry: RetryPolicy) -> Path:
    target = dest / _file_name(urllib.parse.urlsplit(url).path)
    return _with_retries(lambda: _http_attempt(url, target, sha256, budget, retry.timeout_seconds), retry)


def _http_attempt(url: str, target: Path, sha256: str | None, budget: _Budget, timeout: float) -> Path:
    request = urllib.request.Request(url, headers={"User-Agent": "berth-fetch-model"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            size = _content_length(response)
            if size is not None:
                budget.check(size, lambda: f"{url} is {size} bytes ({human_size(size)})")
            # read1: what has arrived, so a stalled or cut transfer keeps (and reports) every byte
            chunks = iter(lambda: response.read1(CHUNK_BYTES), b"")
            return _save(
                chunks,
                target,
                source=url,
                sha256=sha256,
                budget=budget,
                size=size,
                source_errors=(OSError, http.client.HTTPException),
            )
    except urllib.error.HTTPError as error:
        text = f"{_status_text(error.code)} from {url}"
        if error.code >= 500:
            raise _Transient(text) from error
        if error.code == 404:
            raise ModelNotFound(text) from error
        raise FetchError(text) from error
    except (OSError, http.client.HTTPException) as error:  # connecting, or the status line
        raise _Transient(f"{_reason(error)} from {url}") from error


def _content_length(response: Any) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None and int(value) >= 0 else None
    except ValueError:
        return None


# --------------------------------------------------------------------------- s3


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urllib.parse.urlsplit(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket:
        raise FetchError(f"s3 URI needs a bucket: {uri}")
    return bucket, key


def _s3_client(retry: RetryPolicy) -> Any:
    import boto3
    from botocore.config import Config

    # One retry loop for every source (ours, bounded in time): botocore's own retries are off.
    config = Config(
        retries={"mode": "standard", "max_attempts": 1},
        connect_timeout=retry.timeout_seconds,
        read_timeout=retry.timeout_seconds,
    )
    # boto3 reads AWS_ENDPOINT_URL itself in recent versions; passing it keeps older ones working.
    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None, config=config)


# S3 answers these when a new attempt may succeed (RequestTimeout is a 400, but a transient one).
_S3_TRANSIENT_CODES = frozenset(
    {"RequestTimeout", "SlowDown", "InternalError", "ServiceUnavailable", "Throttling"}
)


@contextlib.contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    import botocore.exceptions

    try:
        yield
    except botocore.exceptions.ClientError as error:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.response.get("Error", {}).get("Code", "")
        text = f"{_status_text(int(status)) if status else code} from {uri}"
        if (status and int(status) >= 500) or code in _S3_TRANSIENT_CODES:
            raise _Transient(text) from error
        if (status and int(status) == 404) or code in ("NoSuchKey", "NoSuchBucket"):
            raise ModelNotFound(text) from error
        raise FetchError(text) from error
    except botocore.exceptions.NoCredentialsError as error:
        raise FetchError(f"no AWS credentials found for {uri}") from error
    except (botocore.exceptions.HTTPClientError, botocore.exceptions.ConnectionError) as error:
        raise _Transient(f"{_reason(error)} from {uri}") from error
    except botocore.exceptions.BotoCoreError as error:
        raise FetchError(f"{error} from {uri}") from error


def _s3_stream_errors() -> tuple[type[BaseException], ...]:
    import botocore.exceptions
    import urllib3.exceptions

    return (
        botocore.exceptions.BotoCoreError,
        urllib3.exceptions.HTTPError,
        OSError,
        http.client.HTTPException,
    )


def _download_s3(uri: str, dest: Path, sha256: str | None, budget: _Budget, retry: RetryPolicy) -> Path:
    bucket, key = _split_s3(uri)
    client = _s3_client(retry)
    if not key or key.endswith("/"):
        if sha256:
            raise FetchError(f"sha256 given but {uri} is a prefix; point modelUri at a single object")
        return _download_s3_prefix(client, bucket, key, dest, uri, budget, retry)
    target = dest / _file_name(key)
    return _with_retries(lambda: _s3_attempt(client, bucket, key, target, uri, sha256, budget), retry)


def _s3_attempt(
    client: Any, bucket: str, key: str, target: Path, uri: str, sha256: str | None, budget: _Budget
) -> Path:
    with _s3_errors(uri):
        response = client.get_object(Bucket=bucket, Key=key)
        size = int(response["ContentLength"])
        body = response["Body"]
        try:
            budget.check(size, lambda: f"{uri} is {size} bytes ({human_size(size)})")
            return _save(
                body.iter_chunks(CHUNK_BYTES),
                target,
                source=uri,
                sha256=sha256,
                budget=budget,
                size=size,  # botocore checks it too; this check does not depend on its version
                source_errors=_s3_stream_errors(),
            )
        finally:
            body.close()


def _download_s3_prefix(
    client: Any, bucket: str, prefix: str, dest: Path, uri: str, budget: _Budget, retry: RetryPolicy
) -> Path:
    """A `s3://bucket/dir/` URI: download every object under the prefix, keeping relative paths."""
    keys = _with_retries(lambda: _list_s3(client, bucket, prefix, uri), retry)
    if not keys:
        raise FetchError(f"no objects under {uri}")
    with _staging(dest, "prefix") as staging:
        for key in keys:
            target = staging.joinpath(*PurePosixPath(key[len(prefix) :]).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            attempt = functools.partial(
                _s3_attempt, client, bucket, key, target, f"s3://{bucket}/{key}", None, budget
            )
            _with_retries(attempt, retry)
    return dest


def _list_s3(client: Any, bucket: str, prefix: str, uri: str) -> list[str]:
    keys: list[str] = []
    with _s3_errors(uri):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                relative = PurePosixPath(item["Key"][len(prefix) :])
                if item["Key"].endswith("/") or not relative.parts or relative.is_absolute():
                    continue
                if ".." in relative.parts:
                    continue
                keys.append(item["Key"])
    return keys


def resolve_model(
    uri: str,
    scratch: Path,
    sha256: str | None = None,
    *,
    max_bytes: int | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> Path:
    """What `berth serve` loads: a local .onnx (or a directory holding one) is used in place;
    anything else (remote URIs, archives) goes through `fetch_model` into `scratch`."""
    scheme = urllib.parse.urlsplit(uri).scheme.lower() if "://" in uri else ""
    if scheme in ("", "file", "pvc"):
        path = local_path(uri)
        if path.is_file() and not is_archive(path):
            if sha256:
                verify_sha256(path, sha256)
            return path
        if path.is_dir() and not sha256 and not any(is_archive(p) for p in path.iterdir()):
            return find_onnx(path)
        if path.is_dir():
            archives = [p for p in path.iterdir() if is_archive(p)]
            if len(archives) == 1:
                return fetch_model(str(archives[0]), scratch, sha256, max_bytes=max_bytes, retry=retry)
    return fetch_model(uri, scratch, sha256, max_bytes=max_bytes, retry=retry)


# --------------------------------------------------------------------------- prefixes (multi-model)


def list_prefix(prefix: str, retry: RetryPolicy = DEFAULT_RETRY) -> list[str] | None:
    """The relative path of every file under a directory-like prefix (s3://bucket/dir/, file://,
    pvc:// or a local directory), sorted; None for http(s)://, which has no listing."""
    scheme = urllib.parse.urlsplit(prefix).scheme.lower() if "://" in prefix else ""
    if scheme in ("http", "https"):
        return None
    if scheme == "s3":
        bucket, key = _split_s3(prefix)
        client = _s3_client(retry)
        keys = _with_retries(lambda: _list_s3(client, bucket, key, prefix), retry)
        return sorted(k[len(key) :] for k in keys)
    if scheme in ("", "file", "pvc"):
        root = local_path(prefix)
        if not root.is_dir():
            raise ModelNotFound(f"model prefix not found: {root}")
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    raise FetchError(f"unsupported model URI scheme {scheme}:// in {prefix}")


def read_small(uri: str, limit: int = 4096, retry: RetryPolicy = DEFAULT_RETRY) -> bytes | None:
    """The first `limit` bytes of a small object (a NAME.sha256 beside a model); None when
    there is nothing at the URI."""
    scheme = urllib.parse.urlsplit(uri).scheme.lower() if "://" in uri else ""
    try:
        if scheme in ("http", "https"):
            return _with_retries(lambda: _http_read_small(uri, limit, retry.timeout_seconds), retry)
        if scheme == "s3":
            bucket, key = _split_s3(uri)
            client = _s3_client(retry)
            return _with_retries(lambda: _s3_read_small(client, bucket, key, uri, limit), retry)
        path = local_path(uri)
        if not path.is_file():
            return None
        with path.open("rb") as stream:
            return stream.read(limit)
    except ModelNotFound:
        return None


def _http_read_small(url: str, limit: int, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "berth-fetch-model"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bytes(response.read(limit))
    except urllib.error.HTTPError as error:
        text = f"{_status_text(error.code)} from {url}"
        if error.code >= 500:
            raise _Transient(text) from error
        if error.code in (403, 404):  # S3 behind HTTP answers 403 for a missing object
            raise ModelNotFound(text) from error
        raise FetchError(text) from error
    except (OSError, http.client.HTTPException) as error:
        raise _Transient(f"{_reason(error)} from {url}") from error


def _s3_read_small(client: Any, bucket: str, key: str, uri: str, limit: int) -> bytes:
    with _s3_errors(uri):
        response = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{limit - 1}")
        try:
            return bytes(response["Body"].read(limit))
        finally:
            response["Body"].close()
