"""Records in: input objects read block by block, and blocks parsed into the model's arrays.

Text is read a piece at a time (READ_BYTES, or `max_bytes` when that is smaller) and regrouped
into blocks of `max_rows` whole lines, or fewer where `max_bytes` of text come first: a block
is a mini-batch, one ONNX Runtime call, and memory stays flat whatever the size of an object.
A line longer than `max_bytes` (the payload limit) is a bad record: it is skipped as it is
read, never held whole, and stands in the block as an empty line so the numbering holds.

A block of text parses in one call of Berth's C parser, or of Apache Arrow where that refuses
(numbers.py, arrow.py: outside the GIL, straight into the float32 matrix ONNX Runtime takes),
or in np.loadtxt calls for the dtypes Arrow is not used for. Only when that fails is the block parsed again line by line, to name each bad record
by its line number and keep the good ones: a malformed record costs its block the slow path,
nothing more.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import orjson

from berth_serving import numbers
from berth_serving.signature import Signature, SignatureError
from berth_serving.transform import arrow
from berth_serving.transform.options import CSV, JSON_LINES, NPY

# Rows per np.loadtxt call (dtypes Arrow does not parse): about 1 ms, so the GIL changes hands.
SLICE_ROWS = 64
# Text is read in pieces this size (or max_bytes, if smaller) and cut at the last newline.
READ_BYTES = 1024 * 1024


class InputError(ValueError):
    """The model cannot be fed from this kind of input at all (not a single bad record)."""


@dataclass(frozen=True)
class BadRecord:
    line: int
    message: str


@dataclass(frozen=True)
class Block:
    first_line: int  # line number of the block's first line, counting from 1 (npy: first row + 1)
    data: bytes = b""  # whole lines of text, each ending in a newline but perhaps the object's last
    count: int = 0  # lines in data
    array: np.ndarray | None = None  # npy input: the rows of this block
    bad: list[BadRecord] = field(default_factory=list)  # records refused while reading (too large)

    @property
    def lines(self) -> list[bytes]:
        """The lines of the block, each with its newline (the slow paths and joinSource use them)."""
        return split_lines(self.data)


@dataclass
class Parsed:
    feed: dict[str, np.ndarray]
    rows: int
    lines: list[bytes]  # raw text of the records kept, in order, when the parser keeps them
    bad: list[BadRecord]
    # Line numbers of the records kept, when asked for (an outputFilter names the ones it
    # cannot select from after the model has run); empty otherwise.
    numbers: list[int] = field(default_factory=list)

    def head(self, count: int) -> tuple[Parsed, Parsed]:
        """The first `count` records and the rest (views: no copy)."""
        first = {name: array[:count] for name, array in self.feed.items()}
        rest = {name: array[count:] for name, array in self.feed.items()}
        taken = min(count, self.rows)
        return (
            Parsed(first, taken, self.lines[:count], [], self.numbers[:count]),
            Parsed(rest, self.rows - taken, self.lines[count:], [], self.numbers[count:]),
        )

    def join(self, other: Parsed) -> Parsed:
        """These records, then the other's (a copy of both)."""
        feed = {name: np.concatenate([array, other.feed[name]]) for name, array in self.feed.items()}
        return Parsed(
            feed, self.rows + other.rows, self.lines + other.lines, [], self.numbers + other.numbers
        )

    def slices(self, size: int) -> Iterator[Parsed]:
        """The records in runs of at most `size` (views: no copy), for one ONNX Runtime call each."""
        if self.rows <= size:
            yield self
            return
        for start in range(0, self.rows, size):
            stop = start + size
            feed = {name: array[start:stop] for name, array in self.feed.items()}
            yield Parsed(
                feed, min(stop, self.rows) - start, self.lines[start:stop], [], self.numbers[start:stop]
            )


def split_lines(data: bytes) -> list[bytes]:
    """Lines ending at b"\\n" only (bytes.splitlines would also cut at a lone carriage return)."""
    if not data:
        return []
    lines = [line + b"\n" for line in data.split(b"\n")]
    last = lines.pop()
    if last != b"\n":  # the object's last line had no newline
        lines.append(last[:-1])
    return lines


def open_records(stream: BinaryIO, compression: str) -> Any:
    """The decompressed stream: gzip (members one after another, as gzip writes them) is
    inflated by ISA-L outside the GIL: 1.9 GB of CSV in 2.2 CPU-s, against 6.8 for Arrow's
    zlib stream and 8.3 for the gzip module. A bad gzip stream raises OSError as it is read,
    a truncated one EOFError."""
    if compression == "Gzip":
        from isal import igzip

        return igzip.IGzipFile(fileobj=stream, mode="rb")
    return stream


def read_blocks(
    stream: Any, *, content_type: str, split_type: str, max_bytes: int, max_rows: int
) -> Iterator[Block]:
    if content_type == NPY:
        yield from _npy_blocks(stream, max_rows)
        return
    if split_type == "None":  # the whole object is one payload
        yield _whole_object(stream, max_bytes)
        return
    yield from _text_blocks(stream, max_bytes, max_rows)


def _too_large(line: int, size: int, max_bytes: int) -> BadRecord:
    return BadRecord(
        line, f"a record of {size} bytes, over the payload limit (maxPayloadBytes) of {max_bytes}"
    )


def _line_count(data: bytes) -> int:
    return numbers.newlines(data) + (0 if data.endswith(b"\n") else 1) if data else 0


def _whole_object(stream: Any, max_bytes: int) -> Block:
    data = stream.read(max_bytes + 1)
    if len(data) <= max_bytes:
        return Block(1, data, _line_count(data))
    size = len(data) + _skip(stream, max_bytes)
    return Block(1, b"\n", 1, bad=[_too_large(1, size, max_bytes)])


def _skip(stream: Any, chunk_bytes: int) -> int:
    """Read to the end of the stream, keeping nothing; the number of bytes read."""
    skipped = 0
    while chunk := stream.read(chunk_bytes):
        skipped += len(chunk)
    return skipped


def _runs(stream: Any, max_bytes: int) -> Iterator[Block]:
    """Runs of whole lines, one read at a time, with the lines too large to be a record.

    Each read is cut at its last newline; the partial line after it (never more than max_bytes)
    starts the next block. Every line but that cut one lies within a read of at most max_bytes,
    so only the cut line can be too large: it is checked, and one that grows past the limit is
    dropped as it is read, up to its newline, and stands as an empty line with a BadRecord."""
    read_bytes = min(max_bytes, READ_BYTES)
    number = 1  # line number of the next line
    tail = b""  # the start of a line the last read cut
    skipped = -1  # bytes of a too-large line dropped so far; -1: not in one
    while True:
        piece = stream.read(read_bytes)
        if skipped >= 0:
            newline = piece.find(b"\n") if piece else -1
            if piece and newline < 0:
                skipped += len(piece)
                continue
            size = skipped + (newline if piece else 0)
            yield Block(number, b"\n", 1, bad=[_too_large(number, size, max_bytes)])
            number += 1
            skipped = -1
            piece = piece[newline + 1 :] if piece else b""
            if not piece:
                if newline < 0:
                    return  # the stream ended within the dropped line
                continue
        if not piece:
            if tail:  # the last line had no newline
                yield Block(number, tail, 1)
            return
        last = piece.rfind(b"\n")
        if last < 0:  # no line ends in this piece
            if len(tail) + len(piece) > max_bytes:
                skipped, tail = len(tail) + len(piece), b""
            else:
                tail += piece
            continue
        first = piece.find(b"\n")
        if len(tail) + first > max_bytes:  # the line the reads cut grew past the limit
            yield Block(number, b"\n", 1, bad=[_too_large(number, len(tail) + first, max_bytes)])
            number += 1
            data = piece[first + 1 : last + 1]
        else:
            # One copy: the cut line's start joined with a view of the piece, not with a slice.
            data = b"".join((tail, memoryview(piece)[: last + 1])) if tail else piece[: last + 1]
        tail = piece[last + 1 :]
        if data:
            count = _line_count(data)
            yield Block(number, data, count)
            number += count


def _text_blocks(stream: Any, max_bytes: int, max_rows: int) -> Iterator[Block]:
    """The runs regrouped into blocks of max_rows lines, or fewer where max_bytes of text come
    first or the object ends: a block is a mini-batch, one ONNX Runtime call. Lines a block
    cannot take wait for the next run's (a copy of less than a block); a too-large line's
    stand-in goes after them, so the numbering holds."""
    carry: Block | None = None
    for run in _runs(stream, max_bytes):
        if run.bad:
            if carry is not None:
                yield carry
                carry = None
            yield run
            continue
        data, number, left, start = run.data, run.first_line, run.count, 0
        if carry is not None:  # the carried lines and the first of this run's, as one block
            end = numbers.line_end(data, 0, max_rows - carry.count)
            if end < 0 or len(carry.data) + end > max_bytes + 1:  # the run all goes with them
                data, number, left = carry.data + data, carry.first_line, carry.count + left
            else:
                yield Block(carry.first_line, carry.data + data[:end], max_rows)
                number, left, start = number + max_rows - carry.count, left - (max_rows - carry.count), end
            carry = None
        while left >= max_rows or len(data) - start > max_bytes:
            end = numbers.line_end(data, start, max_rows)
            if 0 <= end - start <= max_bytes + 1:
                piece, count = data[start:end], max_rows
            else:  # the bytes limit comes first (a line holds max_bytes at most, and its newline)
                end = data.rfind(b"\n", start, start + max_bytes + 1) + 1
                if end <= start:  # only the object's last line is left, without a newline
                    end = len(data)
                piece = data[start:end]
                count = _line_count(piece)
            yield Block(number, piece, count)
            number, left, start = number + count, left - count, end
        if left:
            carry = Block(number, data[start:] if start else data, left)
    if carry is not None:
        yield carry


def _npy_blocks(stream: Any, max_rows: int) -> Iterator[Block]:
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


def _npy_rows(stream: Any, shape: tuple[int, ...], dtype: np.dtype, max_rows: int) -> Iterator[Block]:
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


def _records(block: Block) -> list[bytes]:
    """The non-blank lines of a block: its records, in order."""
    return [line for line in block.lines if line.strip()]


class Parser:
    """Turns blocks into feeds for one model (its signature decides columns and dtypes).

    `keep_lines`: Parsed.lines holds the text of each record (joinSource Input writes it back);
    otherwise it is left empty, and the fast paths never split a block into lines."""

    def __init__(self, signature: Signature, content_type: str, *, keep_lines: bool = True) -> None:
        self.signature = signature
        self.content_type = content_type
        self.keep_lines = keep_lines
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
        # Arrow's parsers (arrow.py) for float inputs; None: np.loadtxt or orjson, as before.
        self.fast_csv = arrow.CsvMatrix.for_dtype(spec.dtype) if content_type == CSV else None
        self.fast_arrays: arrow.CsvMatrix | None = None  # JSON Lines of bare arrays: one [N, k] input
        self.fast_objects: arrow.JsonObjects | None = None  # JSON Lines of objects
        self.json_columns: int | None = None
        if content_type == JSON_LINES:
            self.fast_objects = arrow.JsonObjects.for_signature(signature)
            if self.fast_objects is not None and len(signature.inputs) == 1:
                # float64 as JSON numbers are; prepare() then checks they fit the model's dtype.
                self.fast_arrays = arrow.CsvMatrix(np.dtype(np.float64))
                self.json_columns = spec.shape[1] if spec.shape else None

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

    def _fast(self, block: Block, array: np.ndarray | None, name: str) -> Parsed | None:
        """A block Arrow parsed whole: the feed, with the lines of its records when kept."""
        if array is None:
            return None
        if not self.keep_lines:
            return Parsed({name: array}, array.shape[0], [], [])
        lines = _records(block)
        if len(lines) != array.shape[0]:  # a line Arrow read as a record that is not one
            return None
        return Parsed({name: array}, array.shape[0], lines, [])

    # --- text/csv ---------------------------------------------------------------------
    def _csv(self, block: Block) -> Parsed:
        if self.fast_csv is not None:
            parsed = self._fast(block, self.fast_csv.parse(block.data, self.columns), self.names[0])
            if parsed is not None:
                return parsed
            return self._csv_line_by_line(block)
        numbered = [(block.first_line + i, raw) for i, raw in enumerate(block.lines) if raw.strip()]
        if not numbered:
            return Parsed({}, 0, [], [])
        try:
            texts = [raw.decode("utf-8") for _, raw in numbered]
            parts = [
                np.loadtxt(
                    texts[start : start + SLICE_ROWS], delimiter=",", dtype=self.dtype, ndmin=2, comments=None
                )
                for start in range(0, len(texts), SLICE_ROWS)
            ]
            array = parts[0] if len(parts) == 1 else np.concatenate(parts)
            if self.columns is None or array.shape[1] == self.columns:
                lines = [raw for _, raw in numbered] if self.keep_lines else []
                return Parsed({self.names[0]: array}, array.shape[0], lines, [])
        except (UnicodeDecodeError, ValueError):
            pass
        return self._csv_line_by_line(block)

    def _csv_line_by_line(self, block: Block) -> Parsed:
        rows: list[list[float]] = []
        kept: list[bytes] = []
        bad: list[BadRecord] = []
        width = self.columns
        for index, raw in enumerate(block.lines):
            if not raw.strip():
                continue
            number = block.first_line + index
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
        lines = kept if self.keep_lines else []
        return Parsed({self.names[0]: np.asarray(rows, dtype=self.dtype)}, len(rows), lines, bad)

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

    def _json_fast(self, block: Block) -> Parsed | None:
        """Arrow's parse of a block of bare arrays ([1.5, 2, ...] per line) or of objects
        ({NAME: [...], ...} per line); None when the block is neither, or does not fit."""
        data = block.data
        start = data.lstrip()[:1]
        try:
            if start == b"[" and self.fast_arrays is not None:
                array = self.fast_arrays.parse_json_arrays(data, self.json_columns)
                if array is None:
                    return None
                feed, rows = self.signature.prepare({self.names[0]: array})
            elif start == b"{" and self.fast_objects is not None:
                values = self.fast_objects.parse(data)
                if values is None:
                    return None
                feed, rows = self.signature.prepare(values)
            else:
                return None
        except SignatureError:
            return None  # the line by line path names the records that do not fit
        if not self.keep_lines:
            return Parsed(feed, rows, [], [])
        lines = _records(block)
        if len(lines) != rows:
            return None
        return Parsed(feed, rows, lines, [])

    def _json_lines(self, block: Block) -> Parsed:
        parsed = self._json_fast(block)
        if parsed is not None:
            return parsed
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
            return Parsed(feed, rows, self._kept(records), bad)
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
        return Parsed(feed, rows, self._kept(good), bad)

    def _kept(self, records: list[tuple[int, bytes, dict[str, Any]]]) -> list[bytes]:
        return [raw for _, raw, _ in records] if self.keep_lines else []

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
