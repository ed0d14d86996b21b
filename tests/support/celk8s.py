"""Kubernetes' flavour of CEL on top of cel-python: typed values, escaped names, library extras.

The API server gives a rule `self` (and `oldSelf` on updates) typed by the schema: numbers of
`type: number` are doubles even when written as 1, property names that are CEL keywords are
escaped (`namespace` -> `__namespace__`), and its CEL environment adds list, string, regex and
URL functions that plain CEL lacks. This module provides those so rules evaluate offline.
"""

from __future__ import annotations

import itertools
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, reduce
from typing import Any

import celpy
import re2
from celpy import celtypes
from celpy.evaluation import CELEvalError

Schema = dict[str, Any]

TRANSITION_RULE = re.compile(r"\boldSelf\b")
CEL_RESERVED = {
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if",
    "import", "let", "loop", "package", "namespace", "return", "var", "void", "while",
}  # fmt: skip


def is_transition_rule(rule: str) -> bool:
    return TRANSITION_RULE.search(rule) is not None


def escape(name: str) -> str:
    """A property name as CEL sees it (Kubernetes' escaping rules)."""
    if name in CEL_RESERVED:
        return f"__{name}__"
    for plain, escaped in (
        ("__", "__underscores__"),
        (".", "__dot__"),
        ("-", "__dash__"),
        ("/", "__slash__"),
    ):
        name = name.replace(plain, escaped)
    return name


def to_cel(value: Any, schema: Schema) -> Any:
    """A JSON value as the typed CEL value the API server binds to `self`."""
    if value is None:
        return None
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        converted = {}
        for key, item in value.items():
            if key in properties:
                converted[celtypes.StringType(escape(key))] = to_cel(item, properties[key])
            else:  # map entries keep their keys; unknown fields of preserved objects are dyn
                converted[celtypes.StringType(key)] = to_cel(item, extra if isinstance(extra, dict) else {})
        return celtypes.MapType(converted)
    if isinstance(value, list):
        items = schema.get("items", {})
        return celtypes.ListType([to_cel(item, items) for item in value])
    if isinstance(value, int) and schema.get("type") != "number":
        return celtypes.IntType(value)
    if isinstance(value, int | float):
        return celtypes.DoubleType(float(value))
    if schema.get("format") in ("date-time", "date"):
        try:
            return celtypes.TimestampType(value)
        except ValueError:
            return celtypes.StringType(value)
    if schema.get("format") == "duration":
        return celtypes.DurationType(value)
    return celtypes.StringType(value)


# --------------------------------------------------------------------------- library extras


def cel_error(message: str) -> CELEvalError:
    return CELEvalError(message, ValueError, (message,))


def list_sum(items: celtypes.ListType) -> Any:
    return reduce(lambda total, item: total + item, items) if items else celtypes.IntType(0)


def list_min(items: celtypes.ListType) -> Any:
    return min(items) if items else cel_error("min called on empty list")


def list_max(items: celtypes.ListType) -> Any:
    return max(items) if items else cel_error("max called on empty list")


def is_sorted(items: celtypes.ListType) -> celtypes.BoolType:
    return celtypes.BoolType(all(a <= b for a, b in itertools.pairwise(items)))  # type: ignore[operator]


def index_of(container: Any, item: Any, start: Any = 0) -> Any:
    if isinstance(container, celtypes.StringType):
        return celtypes.IntType(container.find(item, int(start)))
    return celtypes.IntType(next((i for i, x in enumerate(container) if x == item), -1))


def last_index_of(container: Any, item: Any) -> Any:
    if isinstance(container, celtypes.StringType):
        return celtypes.IntType(container.rfind(item))
    return celtypes.IntType(next((i for i in reversed(range(len(container))) if container[i] == item), -1))


def char_at(text: celtypes.StringType, index: celtypes.IntType) -> Any:
    if not 0 <= index <= len(text):
        return cel_error(f"index out of range: {index}")
    return celtypes.StringType(text[index : index + 1])


def substring(text: celtypes.StringType, start: celtypes.IntType, end: Any = None) -> Any:
    stop = len(text) if end is None else int(end)
    if not 0 <= start <= stop <= len(text):
        return cel_error(f"substring out of range: [{start}:{stop}]")
    return celtypes.StringType(text[start:stop])


def replace(text: celtypes.StringType, old: Any, new: Any, count: Any = -1) -> celtypes.StringType:
    return celtypes.StringType(text.replace(old, new, int(count)))


def split(text: celtypes.StringType, separator: Any, limit: Any = -1) -> celtypes.ListType:
    if int(limit) == 0:
        return celtypes.ListType([])
    parts = text.split(separator, int(limit) - 1) if int(limit) > 0 else text.split(separator)
    return celtypes.ListType([celtypes.StringType(part) for part in parts])


def join(items: celtypes.ListType, separator: Any = "") -> celtypes.StringType:
    return celtypes.StringType(str(separator).join(str(item) for item in items))


def find(text: celtypes.StringType, pattern: Any) -> celtypes.StringType:
    match = re2.search(pattern, text)
    return celtypes.StringType(match.group(0) if match else "")


def find_all(text: celtypes.StringType, pattern: Any, limit: Any = -1) -> celtypes.ListType:
    found = [celtypes.StringType(match.group(0)) for match in re2.finditer(pattern, text)]
    return celtypes.ListType(found if int(limit) < 0 else found[: int(limit)])


@dataclass(frozen=True)
class URL:
    """The value of `url(...)`: a parsed absolute URI or absolute path."""

    parts: urllib.parse.SplitResult


SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def parse_url(text: str) -> URL | None:
    """Go's url.ParseRequestURI, which Kubernetes' isURL and url use: absolute URI or absolute path."""
    if any(ch.isspace() or ord(ch) < 0x20 for ch in text) or not (text.startswith("/") or SCHEME.match(text)):
        return None
    try:
        parts = urllib.parse.urlsplit(text)
        _ = parts.port  # raises on a malformed port, as Go does
    except ValueError:
        return None
    return URL(parts)


def is_url(text: celtypes.StringType) -> celtypes.BoolType:
    return celtypes.BoolType(parse_url(text) is not None)


def url(text: celtypes.StringType) -> Any:
    parsed = parse_url(text)
    return (
        parsed if parsed is not None else cel_error(f"URL parse error during conversion from string: {text}")
    )


def url_query(value: URL) -> celtypes.MapType:
    query = urllib.parse.parse_qs(value.parts.query, keep_blank_values=True)
    return celtypes.MapType(
        {
            celtypes.StringType(key): celtypes.ListType([celtypes.StringType(v) for v in values])
            for key, values in query.items()
        }
    )


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sum": list_sum,
    "min": list_min,
    "max": list_max,
    "isSorted": is_sorted,
    "indexOf": index_of,
    "lastIndexOf": last_index_of,
    "charAt": char_at,
    "substring": substring,
    "replace": replace,
    "split": split,
    "join": join,
    "trim": lambda text: celtypes.StringType(text.strip()),
    "lowerAscii": lambda text: celtypes.StringType(text.lower()),
    "upperAscii": lambda text: celtypes.StringType(text.upper()),
    "find": find,
    "findAll": find_all,
    "isURL": is_url,
    "url": url,
    "getScheme": lambda u: celtypes.StringType(u.parts.scheme),
    "getHost": lambda u: celtypes.StringType(u.parts.netloc.rpartition("@")[2]),
    "getHostname": lambda u: celtypes.StringType(u.parts.hostname or ""),
    "getPort": lambda u: celtypes.StringType("" if u.parts.port is None else str(u.parts.port)),
    "getEscapedPath": lambda u: celtypes.StringType(u.parts.path),
    "getQuery": url_query,
}


# --------------------------------------------------------------------------- evaluation

ENVIRONMENT = celpy.Environment()  # the interpreted runner: celpy 0.5's CompiledRunner mis-evaluates has()


@cache
def program(expression: str) -> celpy.Runner:
    """A compiled rule (cached: the same rules are evaluated over and over)."""
    return ENVIRONMENT.program(ENVIRONMENT.compile(expression), functions=FUNCTIONS)


def evaluate(expression: str, activation: dict[str, Any]) -> Any:
    """The value of an expression, or the CELEvalError it ends in."""
    try:
        return program(expression).evaluate(activation)
    except CELEvalError as error:
        return error


def evaluate_rule(rule: Schema, schema: Schema, value: Any, old: Any, has_old: bool) -> str | None:
    """None when the rule holds, otherwise the message the API server gives."""
    activation = {"self": to_cel(value, schema)}
    if has_old:
        activation["oldSelf"] = to_cel(old, schema)
    result = evaluate(rule["rule"], activation)
    if isinstance(result, celtypes.BoolType) and bool(result):
        return None
    if isinstance(result, CELEvalError):
        return f"rule evaluation error: {rule['rule']}: {result.args[0]}"
    if "messageExpression" in rule:
        message = evaluate(rule["messageExpression"], activation)
        if isinstance(message, str) and message.strip():
            return str(message)
    return str(rule.get("message") or f"failed rule: {rule['rule']}")
