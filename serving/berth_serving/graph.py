"""Which outputs of an ONNX graph are row-wise in its inputs: row i of the output depends on
row i of the inputs only, so requests merged along the first axis can be split back by rows.

skl2onnx (the usual exporter of scikit-learn models) writes anonymous dimensions and ZipMap
sequences, so its signature alone proves nothing. The graph does: this walks the nodes in
order and follows row-alignment through a short list of operators whose semantics keep rows
apart (elementwise ops, Gemm/MatMul by constants, per-row reductions, the ai.onnx.ml
classifiers, regressors and transformers, ZipMap). Anything else, or anything it cannot read,
makes an output not row-aligned: the answer errs towards one request per call.

The model file is read with a small protobuf reader over a memory map (the serving image
carries no `onnx` package; initializer data is skipped, not read).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ML = "ai.onnx.ml"
# A value that is row-aligned but not a tensor (ZipMap's sequence of maps, one per row).
SEQUENCE = -1

_UNARY = frozenset(
    [
        "Identity",
        "Cast",
        "Relu",
        "Sigmoid",
        "Tanh",
        "Exp",
        "Log",
        "Abs",
        "Neg",
        "Sqrt",
        "Softplus",
        "Softsign",
        "LeakyRelu",
        "Elu",
        "Selu",
        "Celu",
        "HardSigmoid",
        "HardSwish",
        "Erf",
        "Floor",
        "Ceil",
        "Round",
        "Not",
        "IsNaN",
        "IsInf",
        "Sign",
        "Reciprocal",
        "Sin",
        "Cos",
        "Gelu",
        "Mish",
        "ThresholdedRelu",
        "Dropout",
    ]
)
_BROADCAST = frozenset(
    [
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Max",
        "Min",
        "Sum",
        "Mean",
        "Equal",
        "Greater",
        "GreaterOrEqual",
        "Less",
        "LessOrEqual",
        "And",
        "Or",
        "Xor",
        "Where",
        "Mod",
        "PRelu",
        "Clip",
    ]
)
_REDUCE = frozenset(
    [
        "ReduceSum",
        "ReduceMean",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
    ]
)
_ML_CLASSIFIERS = frozenset({"LinearClassifier", "SVMClassifier", "TreeEnsembleClassifier"})
_ML_REGRESSORS = frozenset({"LinearRegressor", "SVMRegressor", "TreeEnsembleRegressor", "TreeEnsemble"})
_ML_ROWWISE_2D = frozenset({"Normalizer", "Scaler", "Imputer", "Binarizer"})
_ML_ELEMENTWISE = frozenset({"LabelEncoder", "CategoryMapper"})


class _Unreadable(Exception):
    pass


# --- protobuf wire format ---------------------------------------------------------------------


def _varint(buf: bytes | mmap.mmap, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise _Unreadable("varint too long")


def _fields(buf: bytes | mmap.mmap, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or start, end) for each field in buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value, pos
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise _Unreadable("field runs past its message")
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 1:
            yield number, wire, pos, pos + 8
            pos += 8
        elif wire == 5:
            yield number, wire, pos, pos + 4
            pos += 4
        else:
            raise _Unreadable(f"wire type {wire}")


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _text(buf: bytes | mmap.mmap, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode("utf-8", "replace")


def _ints(buf: bytes | mmap.mmap, number: int, wire: int, a: int, b: int) -> list[int]:
    """A repeated int64 field, packed (wire 2) or not (wire 0)."""
    if wire == 0:
        return [_signed(a)]
    values, pos = [], a
    while pos < b:
        value, pos = _varint(buf, pos)
        values.append(_signed(value))
    return values


@dataclass
class _Tensor:
    dims: tuple[int, ...]
    values: tuple[int, ...] | None = None  # int64 contents, for small constants (axes, shapes)


@dataclass
class _Node:
    op: str
    domain: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    ints: dict[str, int] = field(default_factory=dict)
    lists: dict[str, list[int]] = field(default_factory=dict)
    tensor: _Tensor | None = None  # a Constant's value


def _tensor(buf: bytes | mmap.mmap, start: int, end: int) -> tuple[str, _Tensor]:
    name, dims, data_type, int64s, raw = "", [], 0, [], None
    for number, wire, a, b in _fields(buf, start, end):
        if number == 1:
            dims += _ints(buf, number, wire, a, b)
        elif number == 2 and wire == 0:
            data_type = a
        elif number == 7:
            int64s += _ints(buf, number, wire, a, b)
        elif number == 8 and wire == 2:
            name = _text(buf, a, b)
        elif number == 9 and wire == 2 and b - a <= 8 * 64:
            raw = bytes(buf[a:b])
    values = None
    if data_type == 7:  # INT64
        if int64s:
            values = tuple(int64s)
        elif raw is not None and len(raw) % 8 == 0:
            values = struct.unpack(f"<{len(raw) // 8}q", raw)
    return name, _Tensor(tuple(dims), values)


def _node(buf: bytes | mmap.mmap, start: int, end: int) -> _Node:
    node = _Node("", "")
    for number, wire, a, b in _fields(buf, start, end):
        if wire != 2:
            continue
        if number == 1:
            node.inputs.append(_text(buf, a, b))
        elif number == 2:
            node.outputs.append(_text(buf, a, b))
        elif number == 4:
            node.op = _text(buf, a, b)
        elif number == 7:
            node.domain = _text(buf, a, b)
        elif number == 5:
            _attribute(buf, a, b, node)
    return node


def _attribute(buf: bytes | mmap.mmap, start: int, end: int, node: _Node) -> None:
    name, value, ints, tensor = "", None, [], None
    for number, wire, a, b in _fields(buf, start, end):
        if number == 1 and wire == 2:
            name = _text(buf, a, b)
        elif number == 3 and wire == 0:
            value = _signed(a)
        elif number == 8:
            ints += _ints(buf, number, wire, a, b)
        elif number == 5 and wire == 2:
            tensor = _tensor(buf, a, b)[1]
    if value is not None:
        node.ints[name] = value
    if ints:
        node.lists[name] = ints
    if tensor is not None and name == "value":
        node.tensor = tensor
    elif name in ("value_float", "value_int"):
        node.tensor = _Tensor(())
    elif name in ("value_floats", "value_ints"):
        node.tensor = _Tensor((len(ints),), tuple(ints) if name == "value_ints" else None)


@dataclass
class _Graph:
    opset: int = 1
    nodes: list[_Node] = field(default_factory=list)
    constants: dict[str, _Tensor] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)


def _read(buf: bytes | mmap.mmap) -> _Graph:
    graph = _Graph()
    for number, wire, a, b in _fields(buf, 0, len(buf)):
        if number == 8 and wire == 2:  # opset_import
            domain, version = "", 1
            for n, w, x, y in _fields(buf, a, b):
                if n == 1 and w == 2:
                    domain = _text(buf, x, y)
                elif n == 2 and w == 0:
                    version = x
            if domain in ("", "ai.onnx"):
                graph.opset = version
        elif number == 7 and wire == 2:  # graph
            for n, w, x, y in _fields(buf, a, b):
                if w != 2:
                    continue
                if n == 1:
                    graph.nodes.append(_node(buf, x, y))
                elif n == 5:
                    name, tensor = _tensor(buf, x, y)
                    graph.constants[name] = tensor
                elif n == 12:
                    for field_number, field_wire, p, q in _fields(buf, x, y):
                        if field_number == 1 and field_wire == 2:
                            graph.outputs.append(_text(buf, p, q))
    return graph


# --- row alignment ------------------------------------------------------------------------------


def row_aligned_outputs(path: Path | str, input_ranks: Mapping[str, int | None]) -> frozenset[str]:
    """The graph outputs proven row-wise in the inputs named in `input_ranks` (their ranks, or
    None when unknown). Empty when the file cannot be read."""
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            graph = _read(buf)
    except (OSError, ValueError, IndexError, struct.error, _Unreadable):
        return frozenset()
    return frozenset(name for name in graph.outputs if name in _Walk(graph, input_ranks).aligned)


class _Walk:
    def __init__(self, graph: _Graph, input_ranks: Mapping[str, int | None]) -> None:
        self.opset = graph.opset
        self.constants = {k: v for k, v in graph.constants.items() if k not in input_ranks}
        # value name -> rank (None: unknown rank; SEQUENCE: ZipMap's sequence)
        self.aligned: dict[str, int | None] = dict(input_ranks)
        for node in graph.nodes:
            if node.op == "Constant" and node.domain in ("", "ai.onnx") and node.tensor is not None:
                self.constants[node.outputs[0]] = node.tensor
                continue
            ranks = self._ranks(node)
            for name, rank in zip(node.outputs, ranks, strict=False):
                if name:
                    self.aligned[name] = rank

    def _rank(self, name: str) -> int | None:
        return self.aligned.get(name)

    def _ranks(self, node: _Node) -> list[int | None]:
        """Ranks of the node's outputs when they are all row-aligned; [] when not."""
        op, inputs = node.op, [name for name in node.inputs]
        known = [name for name in inputs if name]
        if not known or not all(name in self.aligned or name in self.constants for name in known):
            return []
        first = inputs[0]
        if node.domain in ("", "ai.onnx"):
            return self._default_domain(node, op, inputs, first)
        if node.domain == ML:
            return self._ml(node, op, inputs, first)
        return []

    def _default_domain(self, node: _Node, op: str, inputs: list[str], first: str) -> list[int | None]:
        rank = self._rank(first) if first in self.aligned else None
        if op in _UNARY or op == "CastLike":
            if first not in self.aligned or rank == SEQUENCE:
                return []
            return [rank] * len(node.outputs)
        if op in _BROADCAST:
            return self._broadcast(inputs)
        if rank is None or rank == SEQUENCE or first not in self.aligned:
            return []
        if op == "Gemm":
            if rank != 2 or node.ints.get("transA", 0) or not self._constant(inputs[1:]):
                return []
            bias = self.constants.get(inputs[2]) if len(inputs) > 2 and inputs[2] else None
            if bias is not None and len(bias.dims) == 2 and bias.dims[0] != 1:
                return []
            return [2]
        if op == "MatMul":
            weight = self.constants.get(inputs[1])
            return [rank] if rank >= 2 and weight is not None and len(weight.dims) == 2 else []
        if op in ("Softmax", "LogSoftmax", "Hardmax"):
            default = -1 if self.opset >= 13 else 1
            return [rank] if _axis(node.ints.get("axis", default), rank) >= 1 else []
        if op in ("ArgMax", "ArgMin"):
            if _axis(node.ints.get("axis", 0), rank) < 1:
                return []
            return [rank if node.ints.get("keepdims", 1) else rank - 1]
        if op in _REDUCE:
            return self._reduce(node, inputs, rank)
        if op == "Concat":
            if not all(name in self.aligned and self._rank(name) == rank for name in inputs if name):
                return []
            return [rank] if _axis(node.ints.get("axis", 0), rank) >= 1 else []
        if op == "Flatten":
            return [2] if _axis(node.ints.get("axis", 1), rank) == 1 else []
        if op == "Transpose":
            perm = node.lists.get("perm")
            return [rank] if perm and perm[0] == 0 else []
        if op == "Reshape":
            shape = self.constants.get(inputs[1]) if len(inputs) > 1 else None
            if shape is None or shape.values is None or not shape.values or node.ints.get("allowzero", 0):
                return []
            values = shape.values
            # Row-major with the first dimension copied (0), or [N] -> [N, 1, ...].
            if values[0] == 0 or (rank == 1 and values[0] == -1 and all(v == 1 for v in values[1:])):
                return [len(values)]
            return []
        return []

    def _ml(self, node: _Node, op: str, inputs: list[str], first: str) -> list[int | None]:
        if first not in self.aligned:
            return []
        rank = self._rank(first)
        if op in _ML_ELEMENTWISE:
            return [rank] if rank != SEQUENCE else []
        if rank is None:
            return []
        if op in _ML_CLASSIFIERS:
            return [1, 2] if rank == 2 else []
        if op in _ML_REGRESSORS or op in _ML_ROWWISE_2D:
            return [2] if rank == 2 else []
        if op == "ZipMap":
            return [SEQUENCE] if rank == 2 else []
        if op == "OneHotEncoder":
            return [rank + 1] if rank >= 1 else []
        if op == "FeatureVectorizer":
            return [2] if all(self._rank(name) == 2 for name in inputs) else []
        if op == "ArrayFeatureExtractor":  # picks along the last axis
            return [rank] if rank >= 2 and self._constant(inputs[1:2]) else []
        return []

    def _constant(self, names: list[str]) -> bool:
        return all(name in self.constants for name in names if name)

    def _broadcast(self, inputs: list[str]) -> list[int | None]:
        """Elementwise with numpy broadcasting: every row-aligned input has the same known rank,
        and no constant can stretch or replace the first axis."""
        ranks = {self._rank(name) for name in inputs if name in self.aligned}
        if len(ranks) != 1:
            return []
        (rank,) = ranks
        if rank is None or rank == SEQUENCE:
            return []
        for name in inputs:
            if not name or name in self.aligned:
                continue
            dims = self.constants[name].dims
            if len(dims) > rank or (len(dims) == rank and dims[0] != 1):
                return []
        return [rank]

    def _reduce(self, node: _Node, inputs: list[str], rank: int) -> list[int | None]:
        axes: list[int] | None = node.lists.get("axes")
        if axes is None and len(inputs) > 1 and inputs[1]:
            constant = self.constants.get(inputs[1])
            axes = list(constant.values) if constant is not None and constant.values is not None else None
        if not axes:  # no axes: everything is reduced (or nothing, which is not worth proving)
            return []
        normalized = [_axis(axis, rank) for axis in axes]
        if min(normalized) < 1:
            return []
        return [rank if node.ints.get("keepdims", 1) else rank - len(set(normalized))]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis
