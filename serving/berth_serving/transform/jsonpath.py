"""The JSONPath-like selections of SageMaker's DataProcessing (InputFilter, OutputFilter).

The subset SageMaker documents, and nothing more:

- `$`: the whole record (the same as no filter);
- `$[1:]`, `$[0,2,5]`, `$[2:4]`, `$[-1]`, `$[0,5:]`: elements of an array by 0-based index
  (negative counts from the end) or slice (`start:end`, end excluded), several separated by
  commas; a CSV record is the array of its columns;
- `$.features`, `$['a','b']`, `$["a"]`: fields of an object;
- `*` (`$[*]`, `$.*`): every element or field;
- steps chain (`$.data.features`, `$.data[1:]`, `$.a['b','c']`, SageMaker's `$.a.['b','c']`),
  but only the last one may select several: `$['a','b'].c` is refused, as SageMaker refuses it.

One field or one index selects the value itself (`$.features` gives its array); several give
an object of those fields, or an array of those elements. A selection must lie within the
record: an index past its end, a slice bound beyond it, a missing field, or a selection of
nothing is that record's error (Miss), never a silent gap.

Pure Python without imports beyond the standard library: TransformOptions.check() parses the
filters before anything heavy is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_PICK = re.compile(r"(-?\d+)?[ \t]*(?:(:)[ \t]*(-?\d+)?)?")

Pick = int | slice


class FilterError(ValueError):
    """A filter that cannot parse, or cannot apply to this kind of record (a usage error)."""


class Miss(Exception):
    """This record has nothing where the filter selects (the record's error, not the job's)."""


@dataclass(frozen=True)
class _Step:
    names: tuple[str, ...] = ()
    picks: tuple[Pick, ...] = ()
    every: bool = False  # `*`

    @property
    def single(self) -> bool:
        """One field, or one index: the value itself rather than a collection of values."""
        if self.every:
            return False
        if self.names:
            return len(self.names) == 1
        return len(self.picks) == 1 and isinstance(self.picks[0], int)

    def take(self, value: Any, noun: str) -> Any:
        if self.every:
            if isinstance(value, list):
                return value
            if isinstance(value, dict):
                return list(value.values())
            raise Miss(f"* selects from {_kind(value)}, not an array or an object")
        if self.names:
            if not isinstance(value, dict):
                raise Miss(f"field {self.names[0]!r} is selected from {_kind(value)}, not an object")
            for name in self.names:
                if name not in value:
                    raise Miss(f"the record has no field {name!r}")
            if self.single:
                return value[self.names[0]]
            return {name: value[name] for name in self.names}
        if not isinstance(value, list):
            raise Miss(f"an index selects from {_kind(value)}, not an array")
        chosen = pick(value, self.picks, noun)
        return chosen[0] if self.single else chosen


def pick(items: list[Any], picks: tuple[Pick, ...], noun: str = "elements") -> list[Any]:
    """The elements the indexes and slices select, in their order (Miss when one is outside)."""
    size = len(items)
    chosen: list[Any] = []
    for part in picks:
        if isinstance(part, int):
            if not -size <= part < size:
                raise Miss(f"index {part} is outside the record's {size} {noun}")
            chosen.append(items[part])
            continue
        for bound in (part.start, part.stop):
            if bound is not None and not -size <= bound <= size:
                raise Miss(f"slice bound {bound} is outside the record's {size} {noun}")
        chosen.extend(items[part])
    if not chosen:
        raise Miss(f"selects none of the record's {size} {noun}")
    return chosen


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a number" if isinstance(value, int | float) and not isinstance(value, bool) else "a boolean"


@dataclass(frozen=True)
class JsonPath:
    text: str
    steps: tuple[_Step, ...]

    @property
    def by_index(self) -> bool:
        """A selection of columns: one step of indexes, slices or `*` (what a CSV record takes)."""
        return len(self.steps) == 1 and not self.steps[0].names

    def select(self, record: Any) -> Any:
        """The selected part of a JSON record (Miss when the record lacks it)."""
        value = record
        for step in self.steps:
            value = step.take(value, "elements")
        return value

    def columns(self, fields: list[Any]) -> list[Any]:
        """The selected columns of a CSV record, in the filter's order (Miss when outside)."""
        step = self.steps[0]
        return fields if step.every else pick(fields, step.picks, "columns")

    def indexes(self, width: int) -> list[int]:
        """The columns selected from records of `width` columns (Miss when they do not fit)."""
        return self.columns(list(range(width)))


def parse_filter(text: str, flag: str) -> JsonPath | None:
    """The filter, or None for "" and "$" (the whole record: no filter). FilterError names the
    flag and the filter and says what is wrong where."""
    source = text.strip()
    if source in ("", "$"):
        return None
    if not source.startswith("$"):
        raise _error(flag, text, "a filter starts with $ (e.g. $[1:], $.features)")
    steps: list[_Step] = []
    position = 1
    while position < len(source):
        char = source[position]
        if char == ".":
            position += 1
            if source.startswith("[", position):  # $.a.['b','c'] is SageMaker's spelling of $.a['b','c']
                continue
            if source.startswith(".", position):
                raise _error(flag, text, "'..' (recursive descent) is not among SageMaker's filters")
            if source.startswith("*", position):
                steps.append(_Step(every=True))
                position += 1
                continue
            match = _NAME.match(source, position)
            if match is None:
                raise _error(flag, text, f"a field name must follow the '.' at position {position - 1}")
            steps.append(_Step(names=(match.group(),)))
            position = match.end()
        elif char == "[":
            step, position = _bracket(source, position, flag, text)
            steps.append(step)
        else:
            raise _error(flag, text, f"unexpected {char!r} at position {position}")
    for step in steps[:-1]:
        if not step.single:
            raise _error(flag, text, "only the last step may select several fields or elements")
    return JsonPath(source, tuple(steps))


def _bracket(source: str, position: int, flag: str, text: str) -> tuple[_Step, int]:
    """`[...]` from `position` (its '['): names, indexes and slices, or `*`; and where it ends."""
    names: list[str] = []
    picks: list[Pick] = []
    every = False
    position += 1
    while True:
        position = _skip_spaces(source, position)
        if position >= len(source):
            raise _error(flag, text, "a '[' is never closed")
        char = source[position]
        if char in "'\"":
            end = source.find(char, position + 1)
            if end < 0:
                raise _error(flag, text, f"the quote at position {position} is never closed")
            if end == position + 1:
                raise _error(flag, text, f"an empty field name at position {position}")
            names.append(source[position + 1 : end])
            position = end + 1
        elif char == "*":
            every = True
            position += 1
        else:
            match = _PICK.match(source, position)
            if match is None or match.end() == position or (match.group(1) is None and not match.group(2)):
                raise _error(
                    flag, text, f"expected an index, a slice or a quoted name at position {position}"
                )
            start, colon, stop = match.groups()
            if colon:
                picks.append(slice(int(start) if start else None, int(stop) if stop else None))
            else:
                picks.append(int(start))
            position = match.end()
        position = _skip_spaces(source, position)
        if position >= len(source):
            raise _error(flag, text, "a '[' is never closed")
        if source.startswith(",", position):
            position += 1
            continue
        if source.startswith("]", position):
            position += 1
            break
        raise _error(flag, text, f"expected ',' or ']' at position {position}")
    if sum((bool(names), bool(picks), every)) > 1:
        raise _error(flag, text, "one bracket selects names, or indexes and slices, or *; not a mix")
    return _Step(tuple(names), tuple(picks), every), position


def _skip_spaces(source: str, position: int) -> int:
    while position < len(source) and source[position] in " \t":
        position += 1
    return position


def _error(flag: str, text: str, why: str) -> FilterError:
    return FilterError(f"{flag} {text!r} cannot parse: {why}")
