"""Input files for DuckDB: local paths read in place, s3:// objects downloaded to a spool directory.

DuckDB's httpfs extension would be downloaded from the internet at run time; listing and
downloading with berth_serving.storage keeps the pod working without it (and with the same
AWS_ENDPOINT_URL and credentials as the rest of Berth).
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from berth_serving.storage import Location, StorageError, list_inputs, open_input

DOWNLOAD_THREADS = 4


def is_empty_listing(error: StorageError) -> bool:
    """Whether list_inputs failed only because nothing is there (not a storage failure)."""
    text = str(error)
    return text.startswith("no input objects") or text.startswith("input not found")


def local_files(objects: list[Location], spool: Path) -> list[str]:
    """Paths DuckDB can read: local objects as they are, s3 objects copied under `spool`."""
    remote = [where for where in objects if where.scheme == "s3"]
    paths = {where: where.path for where in objects if where.scheme == "file"}

    def download(item: tuple[int, Location]) -> tuple[Location, str]:
        index, where = item
        target = spool / f"{index:08d}-{os.path.basename(where.path) or 'object'}"
        with open_input(where) as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink, 1024 * 1024)
        return where, str(target)

    if remote:
        spool.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            paths.update(pool.map(download, enumerate(remote)))
    return [paths[where] for where in objects]


def dataset_files(uri: str, spool: Path) -> list[str]:
    """Every object of a dataset (one object or a prefix), as local paths."""
    return local_files([where for where, _ in list_inputs(uri)], spool)
