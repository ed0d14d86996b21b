"""Third-party schemas the tests validate against (Gateway API, KEDA), found the same way everywhere.

In order: the directory named by BERTH_TEST_DATA; the design folder's data beside the checkout
(../shared/data); a cache directory (BERTH_TEST_DATA_CACHE, else ~/.cache/berth/test-data),
filled once from the upstream release. A test never skips for lack of a file: it fails saying
where it looked and what it fetched from where.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DataFile:
    relative: str  # path under a data directory, as ../shared/data lays them out
    version: str
    url: str  # the upstream release's copy


GATEWAY_API_VERSION = "v1.3.0"
HTTPROUTE_CRD = DataFile(
    "gateway-api/httproute-crd.yaml",
    GATEWAY_API_VERSION,
    "https://raw.githubusercontent.com/kubernetes-sigs/gateway-api/"
    f"{GATEWAY_API_VERSION}/config/crd/standard/gateway.networking.k8s.io_httproutes.yaml",
)
KEDA_SCALEDOBJECT_CRD = DataFile(
    "keda/scaledobjects-crd.yaml",
    "v2.20.1",
    "https://raw.githubusercontent.com/kedacore/keda/v2.20.1/config/crd/bases/keda.sh_scaledobjects.yaml",
)
KEDA_HTTPSCALEDOBJECT_CRD = DataFile(
    "keda/httpscaledobjects-crd.yaml",
    "v0.15.0",
    "https://raw.githubusercontent.com/kedacore/http-add-on/v0.15.0/config/crd/bases/"
    "http.keda.sh_httpscaledobjects.yaml",
)


def data_directories() -> list[Path]:
    found = []
    if os.environ.get("BERTH_TEST_DATA"):
        found.append(Path(os.environ["BERTH_TEST_DATA"]))
    found.append(REPO.parent / "shared" / "data")
    return found


def cache_directory() -> Path:
    configured = os.environ.get("BERTH_TEST_DATA_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "berth" / "test-data"


def data_file(wanted: DataFile) -> Path:
    """The file from the first place that has it, downloading it into the cache if none does."""
    looked = []
    for directory in data_directories():
        path = directory / wanted.relative
        if path.is_file():
            return path
        looked.append(str(path))
    cached = cache_directory() / wanted.version / wanted.relative
    if cached.is_file():
        return cached
    looked.append(str(cached))
    try:
        with urllib.request.urlopen(wanted.url, timeout=30) as answer:
            body = answer.read()
    except (urllib.error.URLError, OSError) as error:
        raise FileNotFoundError(
            f"{wanted.relative} ({wanted.version}) not found in {looked}, and fetching {wanted.url} "
            f"failed: {error}. Set BERTH_TEST_DATA to a directory that holds it."
        ) from None
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(cached.name + ".part")
    partial.write_bytes(body)
    partial.replace(cached)
    return cached
