"""Get a model onto local disk: the ONE code path used by `berth serve` and by the
storage-initializer init container (`berth fetch-model`).

Sources: a local path, `file://PATH`, `http(s)://` (streamed), `s3://BUCKET/KEY` (boto3,
standard AWS credentials chain, `AWS_ENDPOINT_URL` for MinIO-style stores) and
`pvc://CLAIM/PATH`, which reads `/mnt/pvc/CLAIM/PATH`: the operator mounts the claim there.
A `.tar.gz` (SageMaker's model.tar.gz) is unpacked, refusing entries that would land
outside the destination, and the single .onnx inside is served. Every failure is a
`FetchError` with a one-line message meant for a person reading Endpoint status.
"""

from __future__ import annotations

import hashlib
import http
import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

PVC_MOUNT_ROOT = Path("/mnt/pvc")
CHUNK_BYTES = 1024 * 1024
HTTP_TIMEOUT_SECONDS = 60.0
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class FetchError(Exception):
    """A model could not be fetched; the message is one line, fit for a status field."""


def fetch_model(uri: str, dest: Path, sha256: str | None = None) -> Path:
    """Put the model named by `uri` under `dest` and return the path of the .onnx to serve."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    scheme = urllib.parse.urlsplit(uri).scheme.lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        downloaded = _download_http(uri, dest)
    elif scheme == "s3":
        downloaded = _download_s3(uri, dest)
    elif scheme == "gs":
        raise FetchError(f"gs:// is not supported yet ({uri}); copy the model to s3:// or http(s)://")
    elif scheme in ("", "file", "pvc"):
        downloaded = _copy_local(local_path(uri), dest)
    else:
        raise FetchError(f"unsupported model URI scheme {scheme}:// in {uri}")
    if sha256 and downloaded.is_file():
        verify_sha256(downloaded, sha256)
    elif sha256:
        raise FetchError(f"sha256 given but {uri} is a directory; point modelUri at a single file")
    if is_archive(downloaded):
        extract_archive(downloaded, dest)
        downloaded.unlink()
        return find_onnx(dest)
    return downloaded if downloaded.is_file() else find_onnx(downloaded)


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


def find_onnx(directory: Path) -> Path:
    """The single .onnx file under `directory` (searched recursively)."""
    found = sorted(p for p in directory.rglob("*.onnx") if p.is_file())
    if not found:
        raise FetchError(f"no .onnx file in {directory}")
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(directory)) for p in found)
        raise FetchError(f"several .onnx files in {directory} ({names}); name one in the model URI")
    return found[0]


def verify_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected.strip().lower():
        raise FetchError(
            f"sha256 mismatch for {path.name}: expected {expected.strip().lower()}, got {actual}"
        )


def extract_archive(archive: Path, dest: Path) -> None:
    """Unpack a tar(.gz) into `dest`, refusing (before writing anything) any entry that would
    escape it: absolute names, `..`, links pointing outside, devices."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member)
            tar.extractall(dest, members=members, filter="data")
    except tarfile.TarError as error:
        raise FetchError(f"cannot unpack {archive.name}: {error}") from error


def _check_member(member: tarfile.TarInfo) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")):
        raise FetchError(f"refusing archive entry with an absolute path: {member.name}")
    if ".." in name.parts:
        raise FetchError(f"refusing archive entry that escapes the destination: {member.name}")
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        resolved = target if member.islnk() else name.parent / target
        if target.is_absolute() or _escapes(resolved):
            raise FetchError(f"refusing archive link that points outside the destination: {member.name}")
    elif not (member.isfile() or member.isdir()):
        raise FetchError(f"refusing special archive entry (device or fifo): {member.name}")


def _escapes(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        if part == "..":
            depth -= 1
        elif part not in ("", "."):
            depth += 1
        if depth < 0:
            return True
    return False


def _copy_local(source: Path, dest: Path) -> Path:
    if not source.exists():
        raise FetchError(f"model not found: {source}")
    if source.is_dir():
        target_dir = dest
        if source.resolve() != dest.resolve():
            shutil.copytree(source, target_dir, dirs_exist_ok=True)
        return target_dir
    target = dest / source.name
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    return target


def _file_name(url_path: str, fallback: str = "model.onnx") -> str:
    name = PurePosixPath(urllib.parse.unquote(url_path)).name
    return name if name not in ("", ".", "..") else fallback


def _status_text(code: int) -> str:
    try:
        return f"{code} {http.HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def _write_stream(chunks: Iterator[bytes], target: Path) -> None:
    partial = target.with_name(target.name + ".part")
    with partial.open("wb") as out:
        for chunk in chunks:
            out.write(chunk)
    os.replace(partial, target)


def _download_http(url: str, dest: Path) -> Path:
    target = dest / _file_name(urllib.parse.urlsplit(url).path)
    request = urllib.request.Request(url, headers={"User-Agent": "berth-fetch-model"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
            _write_stream(iter(lambda: response.read(CHUNK_BYTES), b""), target)
    except urllib.error.HTTPError as error:
        raise FetchError(f"download failed: {_status_text(error.code)} from {url}") from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise FetchError(f"download failed: {reason} from {url}") from error
    return target


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urllib.parse.urlsplit(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket:
        raise FetchError(f"s3 URI needs a bucket: {uri}")
    return bucket, key


def _download_s3(uri: str, dest: Path) -> Path:
    import boto3
    import botocore.exceptions

    bucket, key = _split_s3(uri)
    # boto3 reads AWS_ENDPOINT_URL itself in recent versions; passing it keeps older ones working.
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    try:
        if not key or key.endswith("/"):
            return _download_s3_prefix(client, bucket, key, dest, uri)
        response = client.get_object(Bucket=bucket, Key=key)
        target = dest / _file_name(key)
        _write_stream(response["Body"].iter_chunks(CHUNK_BYTES), target)
        return target
    except botocore.exceptions.ClientError as error:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.response.get("Error", {}).get("Code", "")
        text = _status_text(int(status)) if status else code
        raise FetchError(f"download failed: {text} from {uri}") from error
    except botocore.exceptions.NoCredentialsError as error:
        raise FetchError(f"download failed: no AWS credentials found for {uri}") from error
    except botocore.exceptions.BotoCoreError as error:
        raise FetchError(f"download failed: {error} from {uri}") from error


def _download_s3_prefix(client: object, bucket: str, prefix: str, dest: Path, uri: str) -> Path:
    """A `s3://bucket/dir/` URI: download every object under the prefix, keeping relative paths."""
    paginator = client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
    count = 0
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            relative = PurePosixPath(item["Key"][len(prefix) :])
            if not relative.parts or _escapes(relative) or relative.is_absolute():
                continue
            target = dest.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"]  # type: ignore[attr-defined]
            _write_stream(body.iter_chunks(CHUNK_BYTES), target)
            count += 1
    if count == 0:
        raise FetchError(f"download failed: no objects under {uri}")
    return dest


def resolve_model(uri: str, scratch: Path, sha256: str | None = None) -> Path:
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
                return fetch_model(str(archives[0]), scratch, sha256)
    return fetch_model(uri, scratch, sha256)
