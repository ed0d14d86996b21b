"""The baseline dataset in DuckDB: CSV (with or without a header) or JSON Lines of objects or rows.

The result is the same `rows` view as captures give (vals VARCHAR[]) plus the feature names:
the header's or the objects' keys, else _c0, _c1, ... (SageMaker's names for headerless CSV).
"""

from __future__ import annotations

import csv
import io
import json

import duckdb

from berth_serving.monitor.captures import _sql_list


class DatasetError(ValueError):
    """The dataset cannot be read as CSV or JSON Lines."""


def _first_lines(path: str, count: int = 2) -> list[str]:
    lines: list[str] = []
    with open(path, "rb") as stream:
        for raw in stream:
            text = raw.decode("utf-8", "replace").strip()
            if text:
                lines.append(text)
            if len(lines) >= count:
                break
    return lines


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def detect_header(first: list[str], second: list[str] | None) -> bool:
    """A header when no field of the first line is a number and the second line has one."""
    if any(_numeric(field) or not field.strip() for field in first):
        return False
    return second is None or any(_numeric(field) for field in second)


def create_rows(db: duckdb.DuckDBPyConnection, paths: list[str], header: bool | None) -> list[str]:
    """Create the `rows` view over the dataset files; the feature names."""
    lines = _first_lines(paths[0])
    if not lines:
        raise DatasetError(f"the dataset is empty: {paths[0]}")
    if lines[0].startswith(("{", "[")):
        return _json_rows(db, paths, lines[0])
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    has_header = detect_header(rows[0], rows[1] if len(rows) > 1 else None) if header is None else header
    width = len(rows[0])
    names = [name.strip() for name in rows[0]] if has_header else [f"_c{i}" for i in range(width)]
    columns = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(width)) + "}"
    db.execute(f"""
    CREATE OR REPLACE TEMP VIEW rows AS
    SELECT [{", ".join(f"c{i}" for i in range(width))}] AS vals, false AS bad
    FROM read_csv({_sql_list(paths)}, header={str(has_header).lower()}, columns={columns},
                  delim=',', quote='"', auto_detect=false, null_padding=true)
    """)
    return names


def _json_rows(db: duckdb.DuckDBPyConnection, paths: list[str], first: str) -> list[str]:
    try:
        sample = json.loads(first)
    except ValueError:
        raise DatasetError(f"the first line of {paths[0]} is not JSON") from None
    source = f"read_json_objects({_sql_list(paths)}, format='newline_delimited')"
    if isinstance(sample, dict):
        names = [str(key) for key in sample]
        picks = ", ".join("json_extract_string(json, " + _json_path(name) + ")" for name in names)
        db.execute(
            f"CREATE OR REPLACE TEMP VIEW rows AS SELECT [{picks}] AS vals, false AS bad FROM {source}"
        )
        return names
    if isinstance(sample, list):
        db.execute(
            f"CREATE OR REPLACE TEMP VIEW rows AS SELECT json_extract_string(json, '$[*]') AS vals, false AS bad "
            f"FROM {source}"
        )
        return [f"_c{i}" for i in range(len(sample))]
    raise DatasetError(f"JSON Lines rows must be objects or arrays: {paths[0]}")


def _json_path(name: str) -> str:
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return "'" + f'$."{quoted}"'.replace("'", "''") + "'"
