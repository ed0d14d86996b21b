"""Blocks of text parsed by Apache Arrow: C++ outside the GIL, into the matrix ONNX Runtime takes.
Plain numeric blocks go to Berth's own C parser first (numbers.py), the rest to Arrow.

Measured on the 2-core machine, 256 float columns: np.loadtxt parses about 25,000 rows per
CPU-second, Arrow's CSV reader about 70,000 (and the GIL stays free for ONNX Runtime's worker
while it runs). Every function here answers None when Arrow refuses the block, for whatever
reason: the caller then parses it line by line, which names the bad records.

- CSV: every column typed (float64, cast to the model's float), no quoting, no null
  spellings: a field is a number or the block is refused.
- JSON Lines of bare arrays (`[1.5, 2, -3e-2]` per line) go through the same CSV reader with
  the brackets cut off the first and last fields; a block with anything but numbers between
  them (nested arrays, strings, null, true, NaN spelled out) is refused. The reader takes a few
  spellings of a number that JSON does not (`.5`, `1.`, `+1`, `01`) as the numbers they spell.
- JSON Lines of objects (`{"x": [...]}` per line) go through pyarrow.json with an explicit
  schema: one list of numbers per model input, no other keys.
"""

from __future__ import annotations

from functools import cache, cached_property
from typing import Any

import numpy as np

from berth_serving import numbers

# pyarrow is imported where a block needs it, not with this module: plain numeric blocks never
# reach Arrow (numbers.py parses them), and a `berth transform` of them starts without it (a
# 10-row run here: 0.260 s against 0.293, medians of 15).

_LETTERS = (b"n", b"N", b"i", b"I")  # nan, NaN, inf, Infinity: numbers to Arrow, not to JSON


def _arrow_type(dtype: np.dtype[Any]) -> Any:
    """The Arrow type to parse numbers into, whatever the float the model takes: float64, cast
    afterwards. Measured on this machine, 256 columns: Arrow parses float64 columns 7-18% faster
    than float32 ones (82,000 rows per CPU-second against 69,000), the cast costs less than the
    difference, and every number is rounded as before (to float64, then to the model's float,
    as np.loadtxt did)."""
    import pyarrow as pa

    return pa.float64()


class CsvMatrix:
    """Rows of comma-separated numbers as one C-ordered matrix of a float dtype."""

    def __init__(self, dtype: np.dtype[Any]) -> None:
        self.dtype = np.dtype(dtype)
        self._convert: dict[tuple[int, bool], Any] = {}
        self._selected: dict[tuple[int, tuple[int, ...]], Any] = {}  # parse_selected's options

    @cached_property
    def parse_type(self) -> Any:
        """The Arrow type numbers are parsed into (see _arrow_type); made at the first Arrow block."""
        return _arrow_type(self.dtype)

    @classmethod
    def for_dtype(cls, dtype: np.dtype[Any] | None) -> CsvMatrix | None:
        """A parser for this model input's dtype, or None where Arrow is not used (integers,
        booleans, strings keep np.loadtxt and the line by line path, with their exact rules)."""
        if dtype is None or dtype.kind != "f":
            return None
        return cls(dtype)

    def _options(self, columns: int, bracketed: bool) -> Any:
        """Cached ConvertOptions: every column typed; bracketed (JSON arrays): the first and
        last fields are read as text, to be checked and cut before they are numbers."""
        key = (columns, bracketed)
        if key not in self._convert:
            import pyarrow as pa
            import pyarrow.csv as pcsv

            names = [f"c{index}" for index in range(columns)]
            types = {name: self.parse_type for name in names}
            if bracketed:
                types[names[0]] = types[names[-1]] = pa.string()
            self._convert[key] = (
                names,
                pcsv.ConvertOptions(
                    column_types=types,
                    null_values=[],
                    true_values=[],
                    false_values=[],
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                    check_utf8=False,
                ),
            )
        return self._convert[key]

    def _read(self, data: bytes, columns: int, bracketed: bool) -> Any:
        names, convert = self._options(columns, bracketed)
        return self._read_with(data, names, convert)

    def _read_with(self, data: bytes, names: list[str], convert: Any) -> Any:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        # One Arrow block, on the calling worker's thread: the workers parse side by side.
        read = pcsv.ReadOptions(column_names=names, use_threads=False, block_size=max(len(data) + 1, 4096))
        try:
            return pcsv.read_csv(
                pa.py_buffer(data),
                read_options=read,
                parse_options=_number_parse_options(),
                convert_options=convert,
            )
        except pa.ArrowInvalid:
            return None

    def _matrix(self, table: Any) -> np.ndarray:
        parts = [np.asarray(batch.to_tensor(row_major=True)) for batch in table.to_batches()]
        matrix = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return matrix if matrix.dtype == self.dtype else matrix.astype(self.dtype)

    def parse(self, data: bytes, columns: int | None) -> np.ndarray | None:
        """The block's rows as a [rows, columns] matrix (blank lines are no rows), or None.
        `columns` None: the block's first line says how many."""
        if not data or data.isspace():  # not data.strip(): that copies the block
            return None
        if columns is None:
            columns = _first_line(data).count(b",") + 1
        matrix = numbers.parse_matrix(data, columns, self.dtype)
        if matrix is not None:
            return matrix
        table = self._read(data, columns, bracketed=False)
        if table is None or table.num_rows == 0:
            return None
        return self._matrix(table)

    def parse_selected(self, data: bytes, width: int, indexes: list[int]) -> np.ndarray | None:
        """Rows of `width` columns of which only these (in this order, repeats allowed) are parsed,
        as a [rows, len(indexes)] matrix: an inputFilter's columns in the same single Arrow
        pass as parse(); the others are split off, never converted (an id column may hold
        anything but a comma). Measured on this machine, 8,000 rows of an id, 32 numbers and a
        text column: 8.2 us a row, against 13.3 for the cut (select_columns) then parse()."""
        if not data.strip():
            return None
        import pyarrow as pa
        import pyarrow.csv as pcsv

        key = (width, tuple(indexes))
        if key not in self._selected:
            if len(self._selected) >= 64:  # widths vary with the data: a bounded cache
                self._selected.clear()
            names = [f"c{index}" for index in range(width)]
            wanted = [names[index] for index in dict.fromkeys(indexes)]
            convert = pcsv.ConvertOptions(
                column_types=dict.fromkeys(wanted, self.parse_type),
                include_columns=wanted,
                null_values=[],
                true_values=[],
                false_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                check_utf8=False,
            )
            self._selected[key] = (names, convert, [names[index] for index in indexes])
        names, convert, order = self._selected[key]
        table = self._read_with(data, names, convert)
        if table is None or table.num_rows == 0:
            return None
        if table.column_names != order:  # a column selected twice
            table = pa.table(
                [table.column(name) for name in order], names=[f"o{i}" for i in range(len(order))]
            )
        return self._matrix(table)

    def parse_json_arrays(self, data: bytes, columns: int | None) -> np.ndarray | None:
        """A block of JSON Lines that are each one flat array of numbers, as a matrix, or None."""
        if columns is None:
            columns = _first_line(data).count(b",") + 1
        matrix = numbers.parse_matrix(data, columns, self.dtype, bracketed=True)
        if matrix is not None:
            return matrix
        if any(letter in data for letter in _LETTERS):
            return None
        table = self._read(data, columns, bracketed=True)
        if table is None or table.num_rows == 0:
            return None
        import pyarrow as pa
        import pyarrow.compute as pc  # here and for JSON objects only: its import takes 44 ms

        first, last = table.column(0), table.column(columns - 1)
        try:
            if not pc.all(pc.starts_with(first, "[")).as_py() or not pc.all(pc.ends_with(last, "]")).as_py():
                return None
            if columns == 1:
                only = pc.cast(pc.utf8_slice_codeunits(first, 1, -1), self.parse_type)
                arrays = [only]
            else:
                head = pc.cast(pc.utf8_slice_codeunits(first, 1), self.parse_type)
                tail = pc.cast(pc.utf8_slice_codeunits(last, 0, -1), self.parse_type)
                arrays = [head, *table.columns[1:-1], tail]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None  # "[[1" or "2]]" or "[]": not a flat array of numbers
        return self._matrix(pa.table(arrays, names=[f"c{index}" for index in range(columns)]))


@cache
def _number_parse_options() -> Any:
    """Comma-separated fields, no quoting or escapes: a field is a number or the block is refused."""
    import pyarrow.csv as pcsv

    return pcsv.ParseOptions(
        delimiter=",", quote_char=False, double_quote=False, escape_char=False, ignore_empty_lines=True
    )


@cache
def text_write_options() -> Any:
    """CSV written back as it was read: no header, no quoting."""
    import pyarrow.csv as pcsv

    return pcsv.WriteOptions(include_header=False, quoting_style="none")


def select_columns(data: bytes, width: int, indexes: list[int], rows: int) -> bytes | None:
    """A block of CSV lines of `width` columns with only these columns (in this order, repeats
    allowed), as CSV text: the inputFilter's cut, in C++. Columns not selected are split off
    but never converted (an id column may hold anything but a comma). None when Arrow refuses
    the block (a row of another width), when it finds other than `rows` records (a blank
    line), or when a value would need quotes: the caller then cuts it line by line."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    names = [f"c{index}" for index in range(width)]
    wanted = [names[index] for index in dict.fromkeys(indexes)]
    convert = pcsv.ConvertOptions(
        column_types=dict.fromkeys(wanted, pa.string()),
        include_columns=wanted,
        null_values=[],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
        check_utf8=False,
    )
    read = pcsv.ReadOptions(column_names=names, use_threads=False, block_size=max(len(data) + 1, 4096))
    try:
        table = pcsv.read_csv(
            pa.py_buffer(data),
            read_options=read,
            parse_options=_number_parse_options(),
            convert_options=convert,
        )
        if table.num_rows != rows:
            return None
        chosen = pa.table(
            [table.column(names[index]) for index in indexes],
            names=[f"o{position}" for position in range(len(indexes))],
        )
        sink = pa.BufferOutputStream()
        pcsv.write_csv(chosen, sink, write_options=text_write_options())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return bytes(sink.getvalue().to_pybytes())


class JsonObjects:
    """JSON Lines of objects, one key per model input, each a flat array of numbers."""

    def __init__(self, names: tuple[str, ...], widths: tuple[int | None, ...]) -> None:
        self.names = names
        self.widths = widths
        self._parse: Any = None  # pyarrow.json.ParseOptions, made at the first block

    @classmethod
    def for_signature(cls, signature: Any) -> JsonObjects | None:
        """For models whose every input is a float tensor of shape [N, k]; None otherwise."""
        if not signature.inputs:
            return None
        for spec in signature.inputs:
            if spec.dtype is None or spec.dtype.kind != "f" or spec.shape is None or len(spec.shape) != 2:
                return None
        return cls(signature.input_names, tuple(spec.shape[1] for spec in signature.inputs))

    def parse(self, data: bytes) -> dict[str, np.ndarray] | None:
        """{input name: [rows, k] float64 matrix} for the block, or None."""
        import pyarrow as pa
        import pyarrow.json as pjson

        if self._parse is None:
            schema = pa.schema([(name, pa.list_(pa.float64())) for name in self.names])
            self._parse = pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
        read = pjson.ReadOptions(use_threads=False, block_size=max(len(data) + 1, 4096))
        try:
            table = pjson.read_json(pa.py_buffer(data), read_options=read, parse_options=self._parse)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if table.num_rows == 0:
            return None
        import pyarrow.compute as pc

        values: dict[str, np.ndarray] = {}
        for name, width in zip(self.names, self.widths, strict=True):
            column = table.column(name).combine_chunks()
            if column.null_count:  # a record without this key
                return None
            lengths = pc.list_value_length(column)
            bounds = pc.min_max(lengths).as_py()
            if bounds["min"] != bounds["max"] or (width is not None and bounds["min"] != width):
                return None
            flat = column.flatten()
            if flat.null_count:
                return None
            values[name] = flat.to_numpy(zero_copy_only=False).reshape(len(column), bounds["min"])
        return values


def _first_line(data: bytes) -> bytes:
    stripped = data.lstrip(b"\r\n")
    end = stripped.find(b"\n")
    return stripped if end < 0 else stripped[:end]
