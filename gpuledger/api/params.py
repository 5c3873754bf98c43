"""Query parameters shared by the routes: periods, filters, granularity, pages, limits.

Times: ``start``/``end`` take an ISO 8601 date or datetime (UTC when no
offset) or integer epoch milliseconds, which is what Grafana's ``${__from}``
and ``${__to}`` expand to. Periods are start inclusive, end exclusive; a
ledger row belongs to the period containing its interval start.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gpuledger.api.errors import ApiError

from gpuledger.timeutil import EPOCH, from_ns, month_of_day
from gpuledger.timeutil import iso_utc as iso  # the routes' name for it

__all__ = [
    "DIMENSIONS",
    "FILTERS",
    "GRANULARITIES",
    "MAX_BUCKETS",
    "MAX_PAGE",
    "MAX_RANGE_DAYS",
    "Filters",
    "Page",
    "Period",
    "buckets_in",
    "iso",
    "parse_granularity",
    "parse_group_by",
    "parse_moment",
    "parse_page",
    "parse_period",
]

#: What showback and series may group by (ledger columns plus derived ``workload`` and ``gpu``).
DIMENSIONS = ("tenant", "namespace", "node", "model", "sharing", "profile", "pod", "workload", "gpu")
#: Filters every data route accepts (exact match; comma-separated values mean any of them).
FILTERS = ("tenant", "namespace", "node", "model", "sharing", "pod", "workload", "gpu")
GRANULARITIES = ("hour", "day", "month")
MAX_RANGE_DAYS = 400  # the longest period one request may cover
MAX_BUCKETS = 2_000  # time buckets one series or showback may return
MAX_PAGE = 1_000  # rows per page
MAX_RESULT_ROWS = 200_000  # rows one answer may hold across all its pages (memory of the cache)
DEFAULT_PAGE = 100
_MIN, _MAX = EPOCH, datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime

    @property
    def days(self) -> float:
        return (self.end - self.start).total_seconds() / 86_400


@dataclass(frozen=True)
class Filters:
    """Exact-match filters, each a tuple of accepted values (empty: no filter)."""

    values: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def key(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return tuple(sorted(self.values.items()))

    def dims(self) -> list[str]:
        return [k for k, v in self.values.items() if v]


@dataclass(frozen=True)
class Page:
    offset: int
    limit: int


def parse_moment(text: str, name: str) -> datetime:
    """ISO 8601 date/datetime or epoch milliseconds -> aware UTC datetime (400 bad_period otherwise)."""
    raw = text.strip()
    try:
        if raw.lstrip("-").isdigit():
            moment = EPOCH + timedelta(milliseconds=int(raw))
        else:
            moment = datetime.fromisoformat(raw)
            moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ApiError(400, "bad_period", f"{name}={text!r} is not an ISO 8601 date/datetime or epoch milliseconds",
                       "e.g. 2025-03-01, 2025-03-01T12:00:00Z, or 1740787200000 (Grafana's ${__from})") from None
    if not _MIN <= moment < _MAX:
        raise ApiError(400, "bad_period", f"{name}={text!r} is outside 1970..9999", "use a real date")
    return moment


def parse_period(start: str | None, end: str | None, latest_ns: int | None) -> Period | None:
    """The requested period; without start/end the latest calendar month with data (None: no data)."""
    if start is None and end is None:
        if latest_ns is None:
            return None
        begin, finish = month_of_day(from_ns(latest_ns).date())
        return Period(begin, finish)
    if start is None or end is None:
        raise ApiError(400, "bad_period", "give both start and end, or neither",
                       "e.g. start=2025-03-01&end=2025-04-01 (end exclusive); neither = latest month with data")
    begin, finish = parse_moment(start, "start"), parse_moment(end, "end")
    if begin >= finish:
        raise ApiError(400, "bad_period", f"start {start} is not before end {end}", "end is exclusive")
    period = Period(begin, finish)
    if period.days > MAX_RANGE_DAYS:
        raise ApiError(400, "range_too_large", f"the period covers {period.days:.0f} days; at most "
                       f"{MAX_RANGE_DAYS} are allowed", "split the request into shorter periods")
    return period


def parse_group_by(raw: str, allowed: tuple[str, ...] = DIMENSIONS) -> list[str]:
    by = list(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))
    bad = [b for b in by if b not in allowed]
    if bad or not by:
        raise ApiError(400, "bad_group_by", f"cannot group by {', '.join(bad) or 'nothing'}",
                       f"group_by is a comma-separated list of: {', '.join(allowed)}")
    return by


def parse_granularity(raw: str | None, period: Period, *, auto: bool = False) -> str | None:
    """hour | day | month | None (none); ``auto`` picks by the period's length."""
    if raw in (None, "", "none"):
        if not auto:
            return None
        raw = "hour" if period.days <= 3 else "day" if period.days <= 93 else "month"
    if raw not in GRANULARITIES:
        raise ApiError(400, "bad_granularity", f"granularity={raw!r} is not one of {', '.join(GRANULARITIES)}",
                       "hour, day or month (UTC buckets)")
    n = buckets_in(period, raw)
    if n > MAX_BUCKETS:
        raise ApiError(400, "too_many_buckets", f"{raw} buckets over this period: {n}, at most {MAX_BUCKETS}",
                       "use a coarser granularity or a shorter period")
    return raw


def buckets_in(period: Period, granularity: str) -> int:
    if granularity == "month":
        return (period.end.year - period.start.year) * 12 + period.end.month - period.start.month + 1
    step = 3600 if granularity == "hour" else 86_400
    return int((period.end - period.start).total_seconds() // step) + 1


def parse_page(limit: int, cursor: str | None) -> Page:
    if not 1 <= limit <= MAX_PAGE:
        raise ApiError(400, "bad_limit", f"limit={limit} is outside 1..{MAX_PAGE}",
                       "page through larger results with the next_cursor of each answer")
    if cursor is None or cursor == "":
        return Page(0, limit)
    try:
        offset = int(base64.urlsafe_b64decode(cursor.encode("ascii") + b"==").decode("ascii"))
        if offset < 0:
            raise ValueError
    except (ValueError, UnicodeError):
        raise ApiError(400, "bad_cursor", f"cursor={cursor!r} is not one this API issued",
                       "pass next_cursor from the previous page unchanged, or omit it") from None
    return Page(offset, limit)


def next_cursor(page: Page, total: int) -> str | None:
    end = page.offset + page.limit
    return base64.urlsafe_b64encode(str(end).encode()).decode().rstrip("=") if end < total else None


def check_size(rows: int, what: str) -> None:
    """400 ``result_too_large`` beyond :data:`MAX_RESULT_ROWS`."""
    if rows > MAX_RESULT_ROWS:
        raise ApiError(400, "result_too_large", f"{rows} {what}, at most {MAX_RESULT_ROWS} per request",
                       "narrow the period or filter (tenant, node, gpu, pod), or group by fewer dimensions")


def split_values(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    return tuple(dict.fromkeys(v.strip() for v in raw.split(",") if v.strip()))
