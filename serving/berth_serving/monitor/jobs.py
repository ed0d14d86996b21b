"""The two jobs: a baseline of a dataset, and a check of a window of captures against it."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from berth_serving.monitor import captures, compare, constraints, dataset, statistics
from berth_serving.monitor.sources import dataset_files, local_files
from berth_serving.storage import Location, StorageError, open_input, parse_uri, write_object

DEFAULT_MEMORY_LIMIT = "512MB"
MAX_NAMED_FEATURES = 20


@dataclass(frozen=True)
class Engine:
    memory_limit: str = DEFAULT_MEMORY_LIMIT
    threads: int = 0  # 0: the container's CPUs

    def connect(self, scratch: Path) -> duckdb.DuckDBPyConnection:
        from berth_serving.cgroup import available_cpus

        db = duckdb.connect(":memory:")
        db.execute(f"SET memory_limit = '{self.memory_limit}'")
        db.execute(f"SET threads = {self.threads or available_cpus()}")
        db.execute(f"SET temp_directory = '{scratch / 'duckdb-spill'}'")
        db.execute("SET preserve_insertion_order = false")
        return db


def _write_json(where: Location, content: Any) -> None:
    write_object(where, iter([json.dumps(content, indent=2).encode() + b"\n"]))


def read_json(uri: str, what: str) -> Any:
    with open_input(parse_uri(uri)) as stream:
        try:
            return json.load(stream)
        except ValueError as error:
            raise constraints.ConstraintsError(f"{what} {uri} is not JSON: {error}") from None


def baseline(dataset_uri: str, output_uri: str, header: bool | None, engine: Engine) -> dict[str, Any]:
    """Write statistics.json and constraints.json of the dataset under output_uri; the statistics."""
    output = parse_uri(output_uri)
    with tempfile.TemporaryDirectory(prefix="berth-monitor-") as scratch:
        paths = dataset_files(dataset_uri, Path(scratch) / "spool")
        db = engine.connect(Path(scratch))
        try:
            names = dataset.create_rows(db, paths, header)
            stats = statistics.compute(db, names)
        except duckdb.Error as error:
            raise dataset.DatasetError(
                f"cannot read the dataset {dataset_uri}: {_first_line(error)}"
            ) from None
        finally:
            db.close()
    if stats["dataset"]["item_count"] == 0:
        raise dataset.DatasetError(f"the dataset {dataset_uri} has no rows")
    _write_json(output.child("statistics.json"), stats)
    _write_json(output.child("constraints.json"), constraints.suggest(stats))
    return stats


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def folder_name(until: datetime) -> str:
    return until.astimezone(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(
    captures_uri: str,
    statistics_uri: str,
    constraints_uri: str,
    output_uri: str,
    since: datetime,
    until: datetime,
    engine: Engine,
) -> dict[str, Any]:
    """Check the window's captures; write statistics.json and constraint_violations.json under
    OUTPUT/<window end>/; the summary (the termination message's content)."""
    base_stats = constraints.check_statistics(read_json(statistics_uri, "statistics"), statistics_uri)
    limits = constraints.check_constraints(read_json(constraints_uri, "constraints"), constraints_uri)
    folder = parse_uri(output_uri).child(folder_name(until))
    objects = captures.window_objects(captures_uri, since, until)
    names = [feature["name"] for feature in limits["features"]]
    with tempfile.TemporaryDirectory(prefix="berth-monitor-") as scratch:
        paths = local_files(objects, Path(scratch) / "spool")
        db = engine.connect(Path(scratch))
        try:
            captures.create_views(db, paths, since, until)
            ranges = [constraints.allowed_range(feature) for feature in limits["features"]]
            stats = statistics.compute(db, names, ranges)
        except duckdb.Error as error:
            raise StorageError(
                f"cannot read the captures under {captures_uri}: {_first_line(error)}"
            ) from None
        finally:
            db.close()
    stats["dataset"]["window"] = {"since": iso(since), "until": iso(until), "objects": len(objects)}
    found = compare.violations(stats, base_stats, limits)
    report = folder.child("constraint_violations.json")
    _write_json(folder.child("statistics.json"), stats)
    _write_json(report, {"violations": found})
    features = sorted({v["feature_name"] for v in found})
    return {
        "time": iso(until),
        "recordsRead": stats["dataset"]["item_count"],
        "violations": len(found),
        "violatedFeatures": features[:MAX_NAMED_FEATURES],
        "reportUri": report.uri,
    }
