"""Time vocabulary shared by every stage (standard library only).

Times travel and are stored as integer nanoseconds since the Unix epoch,
UTC (wire headers, every table's ``*_ns`` column). Calendar periods are UTC:
a month is named ``YYYY-MM`` and is the half-open range [first day 00:00Z,
next month's first day 00:00Z); an interval belongs to the hour, day and
month holding its *start* (the rule rollups, chargeback and retention share).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

__all__ = [
    "DAY_NS",
    "EPOCH",
    "HOUR_NS",
    "from_ns",
    "hour_start",
    "iso_utc",
    "month_bounds",
    "month_of",
    "month_of_day",
    "parse_iso_utc",
    "to_ns",
]

#: One hour in ns: the grain of ``ledger_hourly`` (an interval belongs to the hour of its start).
HOUR_NS = 3_600 * 10**9
#: One day in ns: the grain of daily charge periods and of the lake's day partitions.
DAY_NS = 24 * HOUR_NS
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ISO = "%Y-%m-%dT%H:%M:%SZ"


def to_ns(moment: datetime) -> int:
    """Nanoseconds since the Unix epoch of an aware datetime (naive = UTC); exact, no float."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1_000


def from_ns(ns: int) -> datetime:
    """The UTC datetime of ``ns`` (truncated to microseconds, datetime's resolution); exact, no float."""
    return EPOCH + timedelta(microseconds=ns // 1_000)


def hour_start(ns: int) -> int:
    """Start (ns) of the UTC hour holding ``ns``."""
    return ns - ns % HOUR_NS


def iso_utc(moment: datetime) -> str:
    """``2025-03-01T00:00:00Z``: whole seconds, UTC (the form of FOCUS periods and API times)."""
    return moment.astimezone(UTC).strftime(_ISO)


def parse_iso_utc(text: str) -> datetime:
    """The inverse of :func:`iso_utc` (ValueError for any other form)."""
    return datetime.strptime(text, _ISO).replace(tzinfo=UTC)


_MONTH = re.compile(r"[0-9]{4}-[0-9]{2}")  # [0-9], not \d: \d matches any Unicode digit


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``"2025-03"`` → (2025-03-01T00:00Z, 2025-04-01T00:00Z); ValueError otherwise.

    Only ASCII ``YYYY-MM``: ``int()`` alone would take full-width or other
    Unicode digits (``２０２６-１０``), and a month is a key of the close tables.
    """
    if not _MONTH.fullmatch(month):
        raise ValueError(f"month must be YYYY-MM (ASCII digits), got {month!r}")
    year, mon = int(month[:4]), int(month[5:])
    if not 1 <= mon <= 12:
        raise ValueError(f"month must be YYYY-MM with MM 01..12, got {month!r}")
    if year == 0 or (year, mon) == (9999, 12):  # datetime spans 0001-01-01 .. 9999-12-31
        raise ValueError(f"month {month!r} is out of range: months run 0001-01..9999-11 "
                         "(a month ends where the next one starts)")
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)
    return start, end


def month_of_day(day: date) -> tuple[datetime, datetime]:
    """The calendar month (UTC) containing ``day``, as :func:`month_bounds` gives it."""
    return month_bounds(f"{day.year:04d}-{day.month:02d}")


def month_of(ns: int) -> tuple[str, int, int]:
    """``YYYY-MM`` of the UTC month containing ``ns``, and its [start, end) in ns."""
    t = from_ns(ns)
    start, end = month_of_day(t.date())
    return f"{t.year:04d}-{t.month:02d}", to_ns(start), to_ns(end)
