"""Capture files of a window: which hour prefixes to list, and the rows of their events in DuckDB.

Layout (written by the serving runtime): DEST/ENDPOINT/VARIANT/yyyy/mm/dd/hh/UUID.jsonl, one
event per line. --captures is DEST/ENDPOINT/ (every variant) or DEST/ENDPOINT/VARIANT/. Only the
hour prefixes that overlap the window are listed; events are then filtered by inferenceTime
(a file of hour hh may hold an event stamped a moment later).
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta

import duckdb

from berth_serving.monitor.sources import is_empty_listing
from berth_serving.storage import Location, StorageError, list_inputs, parse_uri, s3_client

_YEAR = re.compile(r"^\d{4}$")


def hours(since: datetime, until: datetime) -> list[datetime]:
    """The hours (at :00) whose span [h, h+1h) overlaps [since, until)."""
    hour = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    found = []
    while hour < until:
        found.append(hour)
        hour += timedelta(hours=1)
    return found


def _children(where: Location) -> list[str]:
    """The names one level under a prefix (directories or common prefixes)."""
    if where.scheme == "file":
        try:
            return sorted(entry.name for entry in os.scandir(where.path) if entry.is_dir())
        except FileNotFoundError:
            raise StorageError(f"captures not found: {where.path}") from None
        except OSError as error:
            raise StorageError(f"cannot list {where.path}: {error.strerror}") from error
    import botocore.exceptions

    prefix = where.path if not where.path or where.path.endswith("/") else where.path + "/"
    names = []
    try:
        pages = (
            s3_client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=where.bucket, Prefix=prefix, Delimiter="/")
        )
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                names.append(common["Prefix"][len(prefix) :].rstrip("/"))
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        code = (getattr(error, "response", None) or {}).get("Error", {}).get("Code") or type(error).__name__
        raise StorageError(f"cannot list {where.uri}: {code}") from error
    return sorted(names)


def window_objects(captures_uri: str, since: datetime, until: datetime) -> list[Location]:
    """The capture objects under the hour prefixes of the window, for every variant."""
    base = parse_uri(captures_uri)
    children = _children(base)
    variants = [base] if any(_YEAR.match(name) for name in children) else [base.child(n) for n in children]
    found: list[Location] = []
    for variant in variants:
        for hour in hours(since, until):
            prefix = variant.child(hour.strftime("%Y/%m/%d/%H/"))
            try:
                listed = list_inputs(prefix.uri if prefix.scheme == "s3" else prefix.path)
            except StorageError as error:
                if is_empty_listing(error):
                    continue
                raise
            found.extend(where for where, name in listed if name.endswith(".jsonl"))
    return found


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + path.replace("'", "''") + "'" for path in paths) + "]"


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("'%Y-%m-%d %H:%M:%S.%f+00'::TIMESTAMPTZ")


# DuckDB's JSON reader buffers are this large (per thread and file being read): an event line
# longer than it is skipped. 16 MiB holds a 6 MB payload even base64-encoded.
MAX_EVENT_BYTES = 16 * 1024 * 1024
_SCALARS = "'BIGINT', 'UBIGINT', 'DOUBLE', 'VARCHAR', 'BOOLEAN', 'NULL'"
EVENT_COLUMNS = (
    "{'captureData': 'STRUCT(endpointInput STRUCT(data VARCHAR, encoding VARCHAR, observedContentType VARCHAR))',"
    " 'eventMetadata': 'STRUCT(inferenceTime VARCHAR)'}"
)


def create_views(db: duckdb.DuckDBPyConnection, paths: list[str], since: datetime, until: datetime) -> None:
    """Views `events` (the window's events, with how each parses) and `rows` (vals VARCHAR[], a
    row per input row: an event's data may hold several)."""
    if not paths:
        db.execute(
            "CREATE OR REPLACE TEMP VIEW events AS SELECT NULL::VARCHAR kind, NULL::VARCHAR data WHERE false"
        )
    else:
        db.execute(f"""
        CREATE OR REPLACE TEMP VIEW raw AS
        SELECT captureData.endpointInput.data AS data,
               upper(coalesce(captureData.endpointInput.encoding, '')) AS encoding,
               lower(coalesce(captureData.endpointInput.observedContentType, '')) AS ctype,
               try_cast(eventMetadata.inferenceTime AS TIMESTAMPTZ) AS t
        FROM read_json({_sql_list(paths)}, format='newline_delimited', columns={EVENT_COLUMNS},
                       ignore_errors=true, maximum_object_size={MAX_EVENT_BYTES})
        """)
        # kind: csv, jsonl (a JSON array per line), json (a JSON value holding rows), or unparsed (base64, other types, bad JSON).
        db.execute(f"""
        CREATE OR REPLACE TEMP VIEW events AS
        SELECT CASE
                 WHEN data IS NULL THEN 'unparsed'
                 WHEN encoding = 'CSV' OR (encoding = '' AND ctype LIKE 'text/csv%') THEN 'csv'
                 WHEN (encoding = 'JSON' OR encoding = '') AND ctype LIKE '%jsonlines%' THEN 'jsonl'
                 WHEN (encoding = 'JSON' OR (encoding = '' AND ctype LIKE '%json%')) AND json_valid(data) THEN 'json'
                 ELSE 'unparsed' END AS kind,
               data
        FROM raw
        WHERE t >= {_stamp(since)} AND t < {_stamp(until)}
        """)
    # One scan of the files: each event becomes its list of rows (NULL when it holds none we can
    # read), then one row each; an event without rows is one `bad` row (unparsed).
    db.execute(f"""
    CREATE OR REPLACE TEMP VIEW event_rows AS
    SELECT CASE kind
             WHEN 'csv' THEN CASE WHEN strpos(rtrim(data, chr(10) || chr(13) || ' '), chr(10)) = 0
               -- One row (the usual request): no list of lines to build.
               THEN [string_split(trim(data, chr(10) || chr(13) || ' '), ',')]
               ELSE list_transform(
               list_filter(string_split(data, chr(10)), lambda line: trim(line, ' ' || chr(13)) <> ''),
               lambda line: string_split(trim(line, ' ' || chr(13)), ',')) END
             WHEN 'jsonl' THEN list_filter(list_transform(
               list_filter(string_split(data, chr(10)), lambda line: trim(line, ' ' || chr(13)) <> ''),
               lambda line: CASE WHEN json_valid(line) AND json_type(line) = 'ARRAY'
                            THEN json_extract_string(line, '$[*]') END), lambda r: r IS NOT NULL)
             WHEN 'json' THEN CASE
               WHEN json_type(body, '$[0]') = 'ARRAY' THEN
                 list_transform(body::JSON[], lambda r: json_extract_string(r, '$[*]'))
               WHEN json_type(body, '$[0]') IN ({_SCALARS}) THEN [json_extract_string(body, '$[*]')]
             END
           END AS found
    FROM (
      SELECT kind, data, CASE WHEN kind = 'json' THEN CASE
               WHEN json_type(data, '$.instances') = 'ARRAY' THEN json_extract(data, '$.instances')
               WHEN json_type(data, '$.inputs') = 'ARRAY' THEN json_extract(data, '$.inputs')
               WHEN json_type(data) = 'ARRAY' THEN data::JSON END END AS body
      FROM events)
    """)
    db.execute("""
    CREATE OR REPLACE TEMP VIEW rows AS
    SELECT unnest(CASE WHEN len(found) > 0 THEN found ELSE [NULL::VARCHAR[]] END) AS vals,
           coalesce(len(found), 0) = 0 AS bad
    FROM event_rows
    """)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (Z or an offset; a time without one is UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r} (e.g. 2026-12-01T10:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
