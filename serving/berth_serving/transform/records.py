"""Records in: input objects read block by block, and blocks parsed into the model's arrays.

A block is a run of whole lines, about `max_bytes` of them and at most `max_rows` records, so
memory stays flat whatever the size of an object. A line longer than `max_bytes` (the
payload limit) is a bad record: it is skipped as it is read, never held whole, and its line is
left empty in the block so the numbering holds. A block parses in one vectorised call; only
when that fails is it parsed line by line, to name each bad record by its line number and keep
the good ones.
"""

from __future__ import annotations

import gzip
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import orjson

from berth_serving.signature import Signature, SignatureError
from berth_serving.transform.options import CSV, JSON_LINES, NPY

# Rows per np.loadtxt call: about 1 ms of parsing, so the GIL changes hands often enough.
SLICE_ROWS = 64
READ_BYTES = 256 * 1024  # text input is read in pieces this size and split into lines


class InputError(ValueError):
    """The model cannot be fed from this kind of input at all (not a single bad record)."""


@dataclass(frozen=True)
class BadRecord:
    line: int
    message: str


@dataclass(frozen=True)
class Block:
    first_line: int  # line number of lines[0], counting from 1 (for npy: the first row's index + 1)
    lines: list[bytes] = field(default_factory=list)
    array: np.ndarray | None = None  # npy input: the rows of this block
    bad: list[BadRecord] = field(default_factory=list)  # records refused while reading (too large)


@dataclass
class Parsed:
    feed: dict[str, np.ndarray]
    rows: int
    lines: list[bytes]  # raw text of the records kept, in order (joinSource Input writes them back)
    bad: list[BadRecord]


def open_records(stream: BinaryIO, compression: str) -> BinaryIO:
    if compression == "Gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    return stream


def read_blocks(
    stream: BinaryIO, *, content_type: str, split_type: str, max_bytes: int, max_rows: int
) -> Iterator[Block]:
    if content_type == NPY:
        yield from _npy_blocks(stream, max_rows)
        return
    if split_type == "None":  # the whole object is one payload
        yield _whole_object(stream, max_bytes)
        return
    line = 1
    for lines, bad in _capped_lines(stream, max_bytes):
        for start in range(0, len(lines), max_rows):
            chunk = lines[start : start + max_rows]
            mine = [record for record in bad if line <= record.line < line + len(chunk)] if bad else []
            yield Block(line, chunk, bad=mine)
            line += len(chunk)


def _too_large(line: int, size: int, max_bytes: int) -> BadRecord:
    return BadRecord(
        line, f"a record of {size} bytes, over the payload limit (maxPayloadBytes) of {max_bytes}"
    )


def _whole_object(stream: BinaryIO, max_bytes: int) -> Block:
    data = stream.read(max_bytes + 1)
    if len(data) <= max_bytes:
        return Block(1, data.splitlines(keepends=True))
    size = len(data) + _skip(stream, max_bytes)
    return Block(1, [b""], bad=[_too_large(1, size, max_bytes)])


def _skip(stream: BinaryIO, chunk_bytes: int) -> int:
    """Read to the end of the stream, keeping nothing; the number of bytes read."""
    skipped = 0
    while chunk := stream.read(chunk_bytes):
        skipped += len(chunk)
    return skipped


def _capped_lines(stream: BinaryIO, max_bytes: int) -> Iterator[tuple[list[bytes], list[BadRecord]]]:
    """Whole lines, about `max_bytes` of them at a time, with the lines too large to be a record.

    A line is never held longer than `max_bytes`: one that grows past it is dropped as it is
    read, up to its newline, and stands in the lines as b"" (no record) with a BadRecord.
    Reads are READ_BYTES pieces split while they are in the CPU cache: as fast as
    stream.readlines(max_bytes) (measured: 6 MiB reads split afterwards cost 1.5x as much)."""
    read_bytes = min(max_bytes, READ_BYTES)
    pending: list[bytes] = []  # pieces of a line that the reads cut, at most max_bytes in all
    pending_size = 0
    skipped = -1  # bytes of a too-large line dropped so far; -1: not in one
    number = 1  # line number of lines[0]
    lines: list[bytes] = []
    bad: list[BadRecord] = []
    held = 0
    while True:
        chunk = stream.read(read_bytes)
        if not chunk:  # the last line may have no newline
            if skipped >= 0:
                bad.append(_too_large(number + len(lines), skipped, max_bytes))
                lines.append(b"")
            elif pending:
                lines.append(b"".join(pending))
            if lines:
                yield lines, bad
            return
        newline = chunk.find(b"\n")
        if newline < 0:  # no line ends in this piece
            if skipped >= 0:
                skipped += len(chunk)
            elif pending_size + len(chunk) > max_bytes:
                skipped, pending, pending_size = pending_size + len(chunk), [], 0
            else:
                pending.append(chunk)
                pending_size += len(chunk)
            continue
        size = (skipped if skipped >= 0 else pending_size) + newline
        if skipped >= 0 or size > max_bytes:
            bad.append(_too_large(number + len(lines), size, max_bytes))
            lines.append(b"")
        else:
            lines.append(b"".join([*pending, chunk[: newline + 1]]) if pending else chunk[: newline + 1])
        skipped, pending, pending_size = -1, [], 0
        rest = io.BytesIO(chunk)  # shares the chunk's bytes: no copy
        rest.seek(newline + 1)
        tail = rest.readlines()  # each whole line here is within the piece: under the limit
        if tail and not tail[-1].endswith(b"\n"):
            pending = [tail.pop()]
            pending_size = len(pending[0])
        lines += tail
        held += len(chunk)
        if held >= max_bytes:
            yield lines, bad
            number += len(lines)
            lines, bad, held = [], [], 0


def _npy_blocks(stream: BinaryIO, max_rows: int) -> Iterator[Block]:
    """Rows of a .npy array, read block by block after its header (memory stays flat); arrays
    this cannot stream (Fortran order, object dtype, other format versions) load whole."""
    head = stream.read(10)
    if len(head) == 10 and head[:6] == b"\x93NUMPY" and head[6] in (1, 2):
        if head[6] == 1:
            head += stream.read(int.from_bytes(head[8:10], "little"))
        else:
            head += stream.read(2)
            head += stream.read(int.from_bytes(head[8:12], "little"))
        header = io.BytesIO(head)
        try:
            version = np.lib.format.read_magic(header)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(header)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(header)
        except (ValueError, OSError, EOFError) as error:
            raise InputError(f"not a valid .npy array: {error}") from None
        if not fortran and not dtype.hasobject and len(shape) > 0:
            yield from _npy_rows(stream, shape, dtype, max_rows)
            return
    yield from _npy_whole(head + stream.read(), max_rows)


def _npy_rows(stream: BinaryIO, shape: tuple[int, ...], dtype: np.dtype, max_rows: int) -> Iterator[Block]:
    row_shape = tuple(shape[1:])
    row_bytes = dtype.itemsize * math.prod(row_shape)
    for start in range(0, shape[0], max_rows):
        rows = min(max_rows, shape[0] - start)
        data = bytearray(stream.read(rows * row_bytes)) if row_bytes else bytearray()
        if len(data) != rows * row_bytes:
            raise InputError(
                f"not a valid .npy array: it ends within row {start + len(data) // row_bytes + 1}"
            )
        array = np.frombuffer(data, dtype=dtype, count=rows * math.prod(row_shape))
        yield Block(start + 1, array=array.reshape((rows, *row_shape)))


def _npy_whole(body: bytes, max_rows: int) -> Iterator[Block]:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f"not a valid .npy array: {error}") from None
    if not isinstance(array, np.ndarray) or array.ndim == 0:
        raise InputError("a .npy input must hold one array with records along its first axis")
    for start in range(0, array.shape[0], max_rows):
        yield Block(start + 1, array=array[start : start + max_rows])


class Parser:
    """Turns blocks into feeds for one model (its signature decides columns and dtypes)."""

    def __init__(self, signature: Signature, content_type: str) -> None:
        self.signature = signature
        self.content_type = content_type
        self.names = signature.input_names
        if content_type in (CSV, NPY) and len(signature.inputs) != 1:
            raise InputError(f"{content_type} input feeds single-input models only; {signature.expected()}")
        spec = signature.inputs[0]
        self.columns: int | None = None
        if content_type == CSV:
            if spec.dtype is None or spec.shape is None or len(spec.shape) != 2:
                raise InputError(
                    f"text/csv input needs a model input of shape [N, columns]; {signature.expected()}"
                )
            self.columns = spec.shape[1]
            self.dtype = spec.dtype

    def parse(self, block: Block) -> Parsed:
        parsed = self._parse(block)
        if block.bad:
            parsed.bad = sorted([*block.bad, *parsed.bad], key=lambda record: record.line)
        return parsed

    def _parse(self, block: Block) -> Parsed:
        if block.array is not None:
            return self._npy(block)
        if self.content_type == CSV:
            return self._csv(block)
        if self.content_type == JSON_LINES:
            return self._json_lines(block)
        raise InputError(f"unsupported content type {self.content_type}")

    # --- text/csv ---------------------------------------------------------------------
    def _csv(self, block: Block) -> Parsed:
        numbered = [(block.first_line + i, raw) for i, raw in enumerate(block.lines) if raw.strip()]
        if not numbered:
            return Parsed({}, 0, [], [])
        try:
            texts = [raw.decode("utf-8") for _, raw in numbered]
            # np.loadtxt holds the GIL for the whole call: in slices, the ORT worker thread can
            # hand back a batch and start the next one while a block is being parsed.
            parts = [
                np.loadtxt(
                    texts[start : start + SLICE_ROWS], delimiter=",", dtype=self.dtype, ndmin=2, comments=None
                )
                for start in range(0, len(texts), SLICE_ROWS)
            ]
            array = parts[0] if len(parts) == 1 else np.concatenate(parts)
            if self.columns is None or array.shape[1] == self.columns:
                return Parsed({self.names[0]: array}, array.shape[0], [raw for _, raw in numbered], [])
        except (UnicodeDecodeError, ValueError):
            pass
        return self._csv_line_by_line(numbered)

    def _csv_line_by_line(self, numbered: list[tuple[int, bytes]]) -> Parsed:
        rows: list[list[float]] = []
        kept: list[bytes] = []
        bad: list[BadRecord] = []
        width = self.columns
        for number, raw in numbered:
            try:
                cells = raw.decode("utf-8").strip().split(",")
                values = [float(cell) for cell in cells]
            except (UnicodeDecodeError, ValueError):
                bad.append(BadRecord(number, "not a row of numbers separated by commas"))
                continue
            if width is None:
                width = len(values)  # a dynamic column count: the first good row sets it
            if len(values) != width:
                bad.append(BadRecord(number, f"expected {width} values, got {len(values)}"))
                continue
            rows.append(values)
            kept.append(raw)
        if not rows:
            return Parsed({}, 0, [], bad)
        return Parsed({self.names[0]: np.asarray(rows, dtype=self.dtype)}, len(rows), kept, bad)

    # --- application/jsonlines --------------------------------------------------------
    def _record_values(self, document: Any) -> dict[str, Any]:
        if isinstance(document, dict):
            if set(document) == set(self.names):
                return document
            if len(self.names) == 1 and "instances" not in document:
                raise SignatureError(f"a JSON object record needs the key {self.names[0]!r}")
            raise SignatureError(f"a JSON object record needs the keys {', '.join(map(repr, self.names))}")
        if len(self.names) != 1:
            raise SignatureError(
                f"the model has several inputs: send objects {{NAME: value}}; {self.signature.expected()}"
            )
        return {self.names[0]: document}

    def _json_lines(self, block: Block) -> Parsed:
        records: list[tuple[int, bytes, dict[str, Any]]] = []
        bad: list[BadRecord] = []
        for index, raw in enumerate(block.lines):
            if not raw.strip():
                continue
            number = block.first_line + index
            try:
                records.append((number, raw, self._record_values(orjson.loads(raw))))
            except orjson.JSONDecodeError as error:
                bad.append(BadRecord(number, f"not valid JSON: {error}"))
            except SignatureError as error:
                bad.append(BadRecord(number, str(error)))
        if not records:
            return Parsed({}, 0, [], bad)
        try:
            feed, rows = self._prepare(records)
            return Parsed(feed, rows, [raw for _, raw, _ in records], bad)
        except SignatureError:
            pass
        good = []
        for record in records:  # find the records that do not fit, keep the others
            try:
                self._prepare([record])
                good.append(record)
            except SignatureError as error:
                bad.append(BadRecord(record[0], str(error)))
        bad.sort(key=lambda item: item.line)
        if not good:
            return Parsed({}, 0, [], bad)
        feed, rows = self._prepare(good)
        return Parsed(feed, rows, [raw for _, raw, _ in good], bad)

    def _prepare(self, records: list[tuple[int, bytes, dict[str, Any]]]) -> tuple[dict[str, np.ndarray], int]:
        columns = {name: [values[name] for _, _, values in records] for name in self.names}
        feed, rows = self.signature.prepare(columns)
        if rows != len(records):
            raise SignatureError(f"each record must be one row; {self.signature.expected()}")
        return feed, rows

    # --- application/x-npy ------------------------------------------------------------
    def _npy(self, block: Block) -> Parsed:
        assert block.array is not None
        try:
            feed, rows = self.signature.prepare({self.names[0]: block.array})
        except SignatureError as error:
            raise InputError(str(error)) from None
        return Parsed(feed, rows, [], [])
