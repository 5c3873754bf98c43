"""The shared time vocabulary: exact ns conversions and UTC calendar months."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuledger.timeutil import (
    DAY_NS,
    HOUR_NS,
    from_ns,
    hour_start,
    iso_utc,
    month_bounds,
    month_of,
    month_of_day,
    parse_iso_utc,
    to_ns,
)

MOMENTS = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC))


@given(MOMENTS)
def test_ns_round_trip_is_exact_to_the_microsecond(moment: datetime) -> None:
    assert from_ns(to_ns(moment)) == moment
    assert to_ns(moment) % 1_000 == 0


def test_to_ns_reads_naive_as_utc_and_honours_offsets() -> None:
    assert to_ns(datetime(2025, 3, 1)) == to_ns(datetime(2025, 3, 1, tzinfo=UTC)) == 1_740_787_200 * 10**9
    assert to_ns(datetime(2025, 3, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == 1_740_787_200 * 10**9
    assert from_ns(1_740_787_200 * 10**9 + 999) == datetime(2025, 3, 1, tzinfo=UTC)  # truncated, not rounded


def test_month_bounds() -> None:
    assert month_bounds("2025-12") == (datetime(2025, 12, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
    for bad in ("2025-13", "2025-3", "March", "2025-03-01"):
        with pytest.raises(ValueError, match="YYYY-MM"):
            month_bounds(bad)
    assert month_of_day(date(2024, 2, 29)) == month_bounds("2024-02")


def test_an_instant_belongs_to_the_month_and_hour_holding_it() -> None:
    start, end = (to_ns(t) for t in month_bounds("2024-12"))
    assert month_of(start) == month_of(end - 1) == ("2024-12", start, end)
    assert month_of(end)[0] == "2025-01"
    assert hour_start(start + HOUR_NS - 1) == start and hour_start(start + HOUR_NS) == start + HOUR_NS
    assert DAY_NS == 24 * HOUR_NS == 86_400 * 10**9


def test_iso_utc_round_trips_whole_seconds_in_utc() -> None:
    moment = datetime(2025, 3, 1, 12, 30, 5, tzinfo=timezone(timedelta(hours=2)))
    assert iso_utc(moment) == "2025-03-01T10:30:05Z"
    assert parse_iso_utc("2025-03-01T10:30:05Z") == moment
