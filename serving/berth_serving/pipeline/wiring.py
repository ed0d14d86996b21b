"""How one stage's outputs feed the next stage's inputs: by name when every input finds an
output of its name, else by position. A wiring that cannot work (a count, dtype, rank or
fixed-dimension mismatch) is refused before the pipeline takes a request, naming both
signatures. Pure: signatures in, a mapping or a WiringError out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from berth_serving.signature import TensorSpec


class WiringError(ValueError):
    """Two stages that cannot be chained; the message names both signatures."""


@dataclass(frozen=True)
class Wiring:
    """input name of the next stage -> output name of this one."""

    feeds: tuple[tuple[str, str], ...]
    by_name: bool


def describe(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(spec.describe() for spec in specs) or "nothing"


def wire(giver: str, outputs: Sequence[TensorSpec], taker: str, inputs: Sequence[TensorSpec]) -> Wiring:
    def refuse(why: str) -> WiringError:
        return WiringError(
            f"stage {giver!r} cannot feed stage {taker!r}: {why}; {giver!r} gives {describe(outputs)},"
            f" {taker!r} takes {describe(inputs)}"
        )

    names = {spec.name: spec for spec in outputs}
    by_name = all(spec.name in names for spec in inputs)
    if by_name:
        pairs = [(names[spec.name], spec) for spec in inputs]
    else:
        if len(outputs) != len(inputs):
            raise refuse(
                f"{len(outputs)} output{'s' if len(outputs) != 1 else ''} for {len(inputs)}"
                f" input{'s' if len(inputs) != 1 else ''}, and the names do not match"
            )
        pairs = list(zip(outputs, inputs, strict=True))
    for given, taken in pairs:
        problem = _mismatch(given, taken)
        if problem is not None:
            raise refuse(f"{given.name!r} -> {taken.name!r}: {problem}")
    return Wiring(tuple((taken.name, given.name) for given, taken in pairs), by_name)


def _mismatch(given: TensorSpec, taken: TensorSpec) -> str | None:
    if not given.is_tensor:
        return f"{given.name!r} is {given.onnx_type}, not a tensor"
    if not taken.is_tensor:
        return f"{taken.name!r} takes {taken.onnx_type}"
    if given.dtype != taken.dtype:
        return f"{given.describe()} is not {taken.describe()}"
    if given.shape is None or taken.shape is None:
        return None  # a rank not declared: checked by ONNX Runtime per request
    if len(given.shape) != len(taken.shape):
        return f"rank {len(given.shape)} is not rank {len(taken.shape)}"
    for index, (a, b) in enumerate(zip(given.shape, taken.shape, strict=True)):
        if a is not None and b is not None and a != b:
            return f"dimension {index} is {a}, not {b}"
    return None
