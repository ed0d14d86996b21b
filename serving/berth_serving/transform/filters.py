"""SageMaker's DataProcessing in the transform: inputFilter, the joined record, outputFilter.

inputFilter selects what the model sees of each record (jsonpath.py for the selections). A
block is cut before it is parsed, into a block of the same lines, so the Parser and its Arrow
fast paths run unchanged on the cut text and every line keeps its number: a CSV record
becomes its selected columns (Arrow cuts a block whose rows all have the first row's width in
one call; otherwise line by line), a JSON Lines record the selected value (`$.features`: the
array in it). A record the filter cannot select from is a bad record of that line (the error
budget), left blank in the cut block.

joinSource Input joins the ORIGINAL record, not the cut one, with its answer; outputFilter
then selects from the joined record:

- CSV: the input's columns, then the answer's (`$[0,-1]`: an id column and the prediction);
- JSON Lines: SageMaker's joined record, the input object with the answer under
  `SageMakerOutput`, or {"SageMakerInput": record, "SageMakerOutput": answer} when the record
  is not an object (a CSV record there is the array of its columns, numbers as numbers), so
  `$['id','SageMakerOutput']` works as on SageMaker. Without an outputFilter (or with `$`) a
  joined JSON line stays Berth's {"input": record, "output": answer}.

Without joinSource the outputFilter selects from the answer itself. A record the outputFilter
cannot select from is skipped (not written) and is that record's error, by its line number.
"""

from __future__ import annotations

from typing import Any

import orjson

from berth_serving.signature import Signature
from berth_serving.transform import arrow
from berth_serving.transform.jsonpath import JsonPath, Miss
from berth_serving.transform.options import CSV, JSON_LINES
from berth_serving.transform.records import BadRecord, Block, InputError, Parsed, Parser

SAGEMAKER_INPUT = "SageMakerInput"
SAGEMAKER_OUTPUT = "SageMakerOutput"


class InputSelection:
    """The inputFilter applied to blocks of text: the cut block, line for line."""

    def __init__(self, path: JsonPath, content_type: str) -> None:
        if content_type not in (CSV, JSON_LINES):
            raise InputError(
                f"an input filter selects from text/csv or JSON Lines records, not {content_type}"
            )
        self.path = path
        self.csv = content_type == CSV
        self.label = f"input filter {path.text}"

    def cut(self, block: Block) -> Block:
        if self.csv:
            data = self._csv_block(block)
            if data is not None:
                return Block(block.first_line, data, block.count, bad=block.bad)
        lines: list[bytes] = []
        bad: list[BadRecord] = []
        for index, raw in enumerate(block.lines):
            if not raw.strip():
                lines.append(b"\n")
                continue
            try:
                lines.append(self._csv_line(raw) if self.csv else self._json_line(raw))
            except Miss as miss:
                bad.append(BadRecord(block.first_line + index, f"{self.label}: {miss}"))
                lines.append(b"\n")
            except orjson.JSONDecodeError as error:
                bad.append(BadRecord(block.first_line + index, f"not valid JSON: {error}"))
                lines.append(b"\n")
        if block.bad:
            bad = sorted([*block.bad, *bad], key=lambda record: record.line)
        return Block(block.first_line, b"".join(lines), block.count, bad=bad)

    def _csv_block(self, block: Block) -> bytes | None:
        """The whole block cut by Arrow when every row has the first row's width."""
        first = block.data.lstrip(b"\r\n")
        end = first.find(b"\n")
        width = (first if end < 0 else first[:end]).count(b",") + 1
        try:
            indexes = self.path.indexes(width)
        except Miss:
            return None  # the line by line cut names the records
        return arrow.select_columns(block.data, width, indexes, block.count)

    def _csv_line(self, raw: bytes) -> bytes:
        return b",".join(self.path.columns(raw.rstrip(b"\r\n").split(b","))) + b"\n"

    def _json_line(self, raw: bytes) -> bytes:
        return orjson.dumps(self.path.select(orjson.loads(raw))) + b"\n"


class FilteredParser:
    """The Parser for a run with filters: the inputFilter's cut before it; with `keep_lines`
    (joinSource Input), Parsed.lines are the ORIGINAL records, and with `keep_numbers` (an
    outputFilter), Parsed.numbers their line numbers.

    The records the Parser keeps are the non-blank lines of the block it parsed less the ones it
    names bad (an invariant of every path of Parser.parse, checked here), so each kept record is
    found again by its line, whatever the path that parsed it."""

    def __init__(
        self,
        signature: Signature,
        content_type: str,
        selection: JsonPath | None,
        *,
        keep_lines: bool,
        keep_numbers: bool,
    ) -> None:
        self.selection = InputSelection(selection, content_type) if selection is not None else None
        self.keep_lines = keep_lines
        self.map_back = keep_lines or keep_numbers
        self.parser = Parser(signature, content_type, keep_lines=self.map_back)

    def parse(self, block: Block) -> Parsed:
        if self.selection is None or block.array is not None:
            given = block
        else:
            direct = self._direct(block)
            if direct is not None:
                return direct
            given = self.selection.cut(block)
        parsed = self.parser.parse(given)
        if not self.map_back or block.array is not None:
            return parsed
        bad = {record.line for record in parsed.bad}
        lines = given.lines
        kept = [
            index for index, line in enumerate(lines) if line.strip() and given.first_line + index not in bad
        ]
        if len(kept) != parsed.rows:
            raise InputError(
                f"records from line {block.first_line}: {parsed.rows} parsed but {len(kept)} lines kept"
            )
        originals = block.lines if given is not block else lines
        parsed.lines = [originals[index] for index in kept] if self.keep_lines else []
        parsed.numbers = [given.first_line + index for index in kept]
        return parsed

    def _direct(self, block: Block) -> Parsed | None:
        """CSV of floats: the selected columns parsed straight from the block (Arrow's one pass),
        when every row has the first row's width and the selection fits the model; else None
        (the cut, then the Parser, name the records that do not fit)."""
        parser = self.parser
        assert self.selection is not None
        if parser.fast_csv is None or block.bad:
            return None
        first = block.data.lstrip(b"\r\n")
        end = first.find(b"\n")
        width = (first if end < 0 else first[:end]).count(b",") + 1
        try:
            indexes = self.selection.path.indexes(width)
        except Miss:
            return None
        if parser.columns is not None and len(indexes) != parser.columns:
            return None
        matrix = parser.fast_csv.parse_selected(block.data, width, indexes)
        if matrix is None:
            return None
        parsed = Parsed({parser.names[0]: matrix}, matrix.shape[0], [], [])
        if not self.map_back:
            return parsed
        lines = block.lines
        kept = [index for index, line in enumerate(lines) if line.strip()]
        if len(kept) != parsed.rows:  # a line Arrow read as a record that is not one
            return None
        parsed.lines = [lines[index] for index in kept] if self.keep_lines else []
        parsed.numbers = [block.first_line + index for index in kept]
        return parsed


def joined_record(raw: bytes, answer: Any, input_type: str) -> dict[str, Any]:
    """SageMaker's joined JSON record: the input object with the answer as SageMakerOutput, or
    both under SageMakerInput and SageMakerOutput when the record is not an object."""
    record: Any = orjson.loads(raw) if input_type == JSON_LINES else csv_cells(raw)
    if isinstance(record, dict):
        return {**record, SAGEMAKER_OUTPUT: answer}
    return {SAGEMAKER_INPUT: record, SAGEMAKER_OUTPUT: answer}


def csv_cells(raw: bytes) -> list[Any]:
    """A CSV line as a JSON array: its numbers as numbers, anything else as text."""
    return [_cell(cell) for cell in raw.decode("utf-8", "replace").rstrip("\r\n").split(",")]


def _cell(cell: str) -> Any:
    try:
        value = orjson.loads(cell)
    except orjson.JSONDecodeError:
        return cell
    return value if isinstance(value, int | float) and not isinstance(value, bool) else cell
