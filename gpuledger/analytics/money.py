"""Exact money: Decimal amounts, exact rationals in between, one rounding at the end.

- :func:`to_fraction` turns a float, Decimal, int or string into the exact
  rational it denotes (a float's binary value, not its repr).
- :func:`quantize` / :func:`quantize_fraction` round once, half-to-even
  (banker's rounding: no drift over many lines), to a quantum such as a cent.
- :func:`allocate` splits a total into parts proportional to weights by the
  largest-remainder method: the parts are multiples of the quantum and always
  sum to the total exactly, each within one quantum of its exact share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction

__all__ = ["CENT", "to_fraction", "quantize", "quantize_fraction", "allocate"]

CENT = Decimal("0.01")

Number = int | float | Decimal | Fraction | str


def to_fraction(value: Number) -> Fraction:
    """The exact rational value of ``value``; ValueError for NaN/infinity."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    if isinstance(value, str):
        value = Decimal(value)
        if not value.is_finite():
            raise ValueError(f"not a finite number: {value!r}")
    return Fraction(value)


def quantize(amount: Decimal, quantum: Decimal = CENT) -> Decimal:
    """``amount`` rounded half-to-even to a multiple of ``quantum``."""
    return quantize_fraction(Fraction(amount), quantum)


def quantize_fraction(amount: Fraction, quantum: Decimal = CENT) -> Decimal:
    """An exact rational rounded half-to-even to a multiple of ``quantum``, as Decimal.

    Exact for any size (integer arithmetic, no Decimal context precision).
    """
    q = _positive_quantum(quantum)
    units = round(amount / q)  # Fraction.__round__ rounds half to even
    return _from_units(units, quantum)


def allocate(total: Decimal, weights: Sequence[float | Decimal | int | Fraction],
             quantum: Decimal = CENT) -> list[Decimal]:
    """Split ``total`` into ``len(weights)`` parts proportional to ``weights``.

    Largest-remainder method on units of ``quantum``: every part gets the floor
    of its exact share, then the units left over go one each to the largest
    fractional remainders (ties: larger weight first, then earlier position),
    so the result is deterministic. ``sum(parts) == total`` exactly and
    ``|part - exact share| < quantum``. A negative total (a credit) is split
    as its magnitude and negated.

    Raises ValueError if ``total`` is not a multiple of ``quantum``, a weight is
    negative or not finite, or a non-zero total meets all-zero weights.
    """
    q = _positive_quantum(quantum)
    units_f = Fraction(total) / q
    if units_f.denominator != 1:
        raise ValueError(f"total {total} is not a multiple of the quantum {quantum}; quantize it first")
    units = int(units_f)
    exact = [to_fraction(w) for w in weights]
    if any(w < 0 for w in exact):
        raise ValueError("weights must not be negative")
    if not exact:
        if units:
            raise ValueError(f"cannot allocate {total} over no weights")
        return []
    weight_sum = sum(exact, Fraction(0))
    if weight_sum == 0:
        if units:
            raise ValueError(f"cannot allocate {total} over weights that are all zero")
        return [_from_units(0, quantum)] * len(exact)
    sign, magnitude = (-1 if units < 0 else 1), abs(units)
    shares = [magnitude * w / weight_sum for w in exact]
    floors = [math.floor(s) for s in shares]
    left = magnitude - sum(floors)
    order = sorted(range(len(shares)), key=lambda i: (-(shares[i] - floors[i]), -exact[i], i))
    for i in order[:left]:
        floors[i] += 1
    return [_from_units(sign * f, quantum) for f in floors]


def _positive_quantum(quantum: Decimal) -> Fraction:
    q = Fraction(quantum)
    if q <= 0:
        raise ValueError(f"quantum must be positive, got {quantum}")
    return q


def _from_units(units: int, quantum: Decimal) -> Decimal:
    """``units × quantum`` as a Decimal with the quantum's exponent (e.g. 2 places for 0.01)."""
    sign, digits, exponent = quantum.as_tuple()
    coefficient = int("".join(map(str, digits)) or "0")
    assert isinstance(exponent, int)
    value = units * coefficient
    return Decimal((0 if value >= 0 else 1, tuple(int(d) for d in str(abs(value))), exponent))
