"""Exact money: allocation always sums to the total, each part within a quantum."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuledger.analytics.money import CENT, allocate, quantize, quantize_fraction, to_fraction


def test_three_way_split_gives_the_spare_cent_to_the_first_tie() -> None:
    assert allocate(Decimal("100.00"), [1, 1, 1]) == [Decimal("33.34"), Decimal("33.33"), Decimal("33.33")]


def test_largest_remainder_wins_the_spare_unit() -> None:
    # exact shares 0.333.., 0.666.. cents of 1 cent: the larger remainder gets it
    assert allocate(Decimal("0.01"), [1, 2]) == [Decimal("0.00"), Decimal("0.01")]


def test_tie_prefers_larger_weight_then_earlier_position() -> None:
    # shares 0.5 / 0.5 / 0 cents: tie on remainder and weight -> position
    assert allocate(Decimal("0.01"), [1.0, 1.0, 0.0]) == [Decimal("0.01"), Decimal("0.00"), Decimal("0.00")]


def test_negative_total_is_split_as_a_credit() -> None:
    assert allocate(Decimal("-0.05"), [1, 1]) == [Decimal("-0.03"), Decimal("-0.02")]


def test_zero_weights_allocate_only_zero() -> None:
    assert allocate(Decimal("0.00"), [0, 0]) == [Decimal("0.00"), Decimal("0.00")]
    with pytest.raises(ValueError, match="all zero"):
        allocate(Decimal("1.00"), [0, 0])
    assert allocate(Decimal("0"), []) == []


@pytest.mark.parametrize("weights", [[1, -1], [float("nan")], [float("inf")]])
def test_bad_weights_are_refused(weights: list[float]) -> None:
    with pytest.raises(ValueError):
        allocate(Decimal("1.00"), weights)


def test_total_must_already_be_quantized() -> None:
    with pytest.raises(ValueError, match="quantize it first"):
        allocate(Decimal("1.005"), [1, 1])


def test_parts_carry_the_quantum_exponent() -> None:
    parts = allocate(Decimal("10"), [1, 1, 1], quantum=Decimal("1"))
    assert parts == [Decimal("4"), Decimal("3"), Decimal("3")]
    assert [str(p) for p in allocate(Decimal("1.00"), [1, 3])] == ["0.25", "0.75"]


def test_quantize_rounds_half_to_even() -> None:
    assert quantize(Decimal("0.005")) == Decimal("0.00")
    assert quantize(Decimal("0.015")) == Decimal("0.02")
    assert quantize(Decimal("-0.015")) == Decimal("-0.02")
    assert quantize_fraction(Fraction(1, 3)) == Decimal("0.33")
    assert str(quantize_fraction(Fraction(10**30, 3), Decimal("1"))) == str(10**30 // 3)  # no precision loss


def test_to_fraction_is_exact() -> None:
    assert to_fraction(0.1) == Fraction(0.1)  # the binary value, not 1/10
    assert to_fraction("0.1") == Fraction(1, 10)
    with pytest.raises(ValueError):
        to_fraction(Decimal("NaN"))


weights = st.lists(
    st.one_of(
        st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False),
        st.decimals(min_value=0, max_value=10**6, places=4),
        st.integers(min_value=0, max_value=10**6),
    ),
    min_size=1,
    max_size=40,
).filter(lambda ws: sum(to_fraction(w) for w in ws) > 0)
quanta = st.sampled_from([Decimal("0.01"), Decimal("1"), Decimal("0.05"), Decimal("0.001")])


@given(cents=st.integers(min_value=-(10**12), max_value=10**12), ws=weights, quantum=quanta)
def test_parts_sum_to_total_and_stay_within_one_quantum(cents: int, ws: list, quantum: Decimal) -> None:
    total = quantum * cents
    parts = allocate(total, ws, quantum)
    assert sum(parts, Decimal(0)) == total
    weight_sum = sum(to_fraction(w) for w in ws)
    for part, w in zip(parts, ws):
        exact = Fraction(total) * to_fraction(w) / weight_sum
        assert abs(Fraction(part) - exact) < Fraction(quantum)
        assert Fraction(part) / Fraction(quantum) == int(Fraction(part) / Fraction(quantum))


@given(cents=st.integers(min_value=0, max_value=10**9), ws=weights)
def test_allocation_is_deterministic(cents: int, ws: list) -> None:
    total = CENT * cents
    assert allocate(total, ws) == allocate(total, list(ws))
