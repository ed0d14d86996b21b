"""Kubernetes resource quantities in canonical form, as the API server stores them.

The API server rewrites every quantity it stores ("0.5" as 500m, "1000m" as 1, "1024Mi" as 1Gi,
an HPA averageValue "1000" as 1k). Children planned with the stored spelling compare equal to
what a read returns, so an unchanged Deployment or HPA is never written again.

The rules are apimachinery's: values are kept to nano precision (finer is rounded up); a binary
suffix (Ki, Mi, ...) stays binary when the value is a whole number of at least 1024, with the
largest power of 1024 that leaves a whole mantissa; everything else is decimal, with the largest
exponent that is a multiple of 3 and leaves a whole mantissa.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

_SUFFIX = r"(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?"
_PATTERN = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))" + _SUFFIX + "$")
# A resource quantity as settings and the chart's values.schema.json accept it (never negative);
# a test keeps the chart's pattern equal to this one.
QUANTITY_PATTERN = r"^(\d+\.?\d*|\.\d+)" + _SUFFIX + "$"
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_SUFFIX = {exponent: suffix for suffix, exponent in _DECIMAL.items()}
_NANO = Decimal("1e-9")


def canonical(value: int | float | str) -> str:
    """The API server's spelling of a quantity; a string it cannot parse is returned unchanged
    (the API server then refuses it with a message that names the field)."""
    if isinstance(value, bool):
        return str(value)
    text = str(value).strip() if isinstance(value, str) else repr(value)
    match = _PATTERN.match(text)
    if match is None:
        return value if isinstance(value, str) else text
    suffix = match.group(2) or ""
    try:
        amount = _amount(match).quantize(_NANO, rounding=ROUND_CEILING)
    except InvalidOperation:
        return text
    if amount == 0:
        return "0"
    if suffix in _BINARY and abs(amount) >= 1024 and amount == amount.to_integral_value():
        return _binary(int(amount))
    return _decimal(amount, exponent_form=suffix[:1] in ("e", "E"))


def _binary(amount: int) -> str:
    power = 0
    while power < 6 and amount % 1024 == 0:
        amount //= 1024
        power += 1
    suffix = next((s for s, p in _BINARY.items() if p == power), "")
    return f"{amount}{suffix}"


def _decimal(amount: Decimal, exponent_form: bool) -> str:
    mantissa, exponent = int(amount.scaleb(9)), -9  # exact: amount is a whole number of nanos
    while exponent < 18 and mantissa % 1000 == 0:
        mantissa //= 1000
        exponent += 3
    if exponent_form:  # "1e3" stays in exponent notation, as apimachinery keeps the format
        return f"{mantissa}e{exponent}" if exponent else str(mantissa)
    return f"{mantissa}{_DECIMAL_SUFFIX[exponent]}"


def to_bytes(value: int | float | str) -> int:
    """A quantity as a whole number (bytes for memory and storage), rounded up."""
    match = _PATTERN.match(str(value).strip())
    if match is None:
        raise ValueError(f"not a quantity: {value!r}")
    return int(_amount(match).to_integral_value(rounding=ROUND_CEILING))


def _amount(match: re.Match[str]) -> Decimal:
    amount, suffix = Decimal(match.group(1)), match.group(2) or ""
    if suffix in _BINARY:
        return amount * Decimal(1024) ** _BINARY[suffix]
    if suffix[:1] in ("e", "E"):
        return amount.scaleb(int(suffix[1:]))
    return amount.scaleb(_DECIMAL[suffix])
