"""The query parameters the routes share: their declarations, parsing and limits, in one place.

Routes declare shared parameters with the constants here (:data:`START`,
:data:`END`, :data:`LIMIT`, :data:`CURSOR`, :data:`MONTH`, the
:func:`filter_params` dependency), so each has one description in the
OpenAPI document, and turn them into values with the ``parse_*`` functions
and :func:`resolve_period`, which answer a bad value with its 400 code.

Times: ``start``/``end`` take an ISO 8601 date or datetime (UTC when no
offset) or integer epoch milliseconds, which is what Grafana's ``${__from}``
and ``${__to}`` expand to. Periods are start inclusive, end exclusive; a
ledger row belongs to the period containing its interval start.
"""

from __future__ import annotations

import base64
import csv
import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from fastapi import Query

from gpuledger.analytics import closing
from gpuledger.api import errors as E
from gpuledger.api.errors import ApiError
from gpuledger.api.reader import Session
from gpuledger.timeutil import EPOCH, from_ns, month_of_day
from gpuledger.timeutil import iso_utc as iso  # the routes' name for it
from gpuledger.wire import DEFAULT_CLUSTER

__all__ = [
    "CURSOR",
    "DEFAULT_CLUSTER",
    "DEFAULT_PAGE",
    "DIMENSIONS",
    "END",
    "FILTERS",
    "GRANULARITIES",
    "LABEL_PREFIX",
    "LIMIT",
    "MAX_BUCKETS",
    "MAX_PAGE",
    "MAX_RANGE_DAYS",
    "MAX_RESULT_ROWS",
    "MONTH",
    "START",
    "Filters",
    "Page",
    "Period",
    "buckets_in",
    "check_size",
    "filter_params",
    "filter_values",
    "join_values",
    "iso",
    "is_label",
    "latest_ns",
    "next_cursor",
    "parse_granularity",
    "parse_group_by",
    "parse_moment",
    "parse_month",
    "parse_page",
    "parse_period",
    "period_out",
    "resolve_period",
    "split_values",
]

#: What showback and series may group by (ledger columns plus derived ``workload``, ``gpu`` and ``cluster``).
DIMENSIONS = ("tenant", "namespace", "node", "model", "sharing", "profile", "pod", "workload", "gpu", "cluster")
#: Filters every data route accepts (exact match; several values mean any of them: :func:`filter_values`).
FILTERS = ("tenant", "namespace", "node", "model", "sharing", "pod", "workload", "gpu", "cluster")
#: ``group_by=label:KEY`` groups by a pod label (showback only): KEY as Kubernetes spells label keys.
LABEL_PREFIX = "label:"
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
GRANULARITIES = ("hour", "day", "month")
MAX_RANGE_DAYS = 400  # the longest period one request may cover
MAX_BUCKETS = 2_000  # time buckets one series or showback may return
MAX_PAGE = 1_000  # rows per page
MAX_RESULT_ROWS = 200_000  # rows one answer may hold across all its pages (memory of the cache)
DEFAULT_PAGE = 100
_MIN, _MAX = EPOCH, datetime(9999, 1, 1, tzinfo=UTC)

# --- declarations (one description each in the OpenAPI document) ----------------------
START = Query(None, description="period start: ISO date/datetime (UTC) or epoch ms; omit with end for the "
              "latest month with data")
END = Query(None, description="period end (exclusive): ISO date/datetime (UTC) or epoch ms")
LIMIT = Query(DEFAULT_PAGE, description=f"rows per page, 1..{MAX_PAGE}")
CURSOR = Query(None, description="next_cursor of the previous page")
MONTH = Query(..., description="billing month, YYYY-MM (UTC), or `previous`")


_REPEAT = " (repeat the parameter for several; a single value is comma-separated, \"double-quote\" a comma)"


def filter_params(
    tenant: list[str] | None = Query(None, description="tenant(s)" + _REPEAT),
    namespace: list[str] | None = Query(None, description="Kubernetes namespace(s)" + _REPEAT),
    node: list[str] | None = Query(None, description="node name(s)" + _REPEAT),
    model: list[str] | None = Query(None, description="GPU model name(s), e.g. NVIDIA H100 80GB HBM3" + _REPEAT),
    sharing: list[str] | None = Query(None, description="exclusive, time_sliced, fractional, mig, mps, unallocated"),
    pod: list[str] | None = Query(None, description="pod name(s)" + _REPEAT),
    workload: list[str] | None = Query(None, description="workload(s): pod name without its generated suffixes"),
    gpu: list[str] | None = Query(None, description="GPU UUID(s)" + _REPEAT),
    cluster: list[str] | None = Query(None, description="cluster(s): the agents' `cluster` setting; a message "
                                      f"naming none is in the default cluster ({DEFAULT_CLUSTER!r} unless "
                                      "default_cluster says otherwise)" + _REPEAT),
) -> dict[str, list[str] | None]:
    """The exact-match filters every data route accepts (a dependency; see ``auth.data_filters``)."""
    return {"tenant": tenant, "namespace": namespace, "node": node, "model": model, "sharing": sharing,
            "pod": pod, "workload": workload, "gpu": gpu, "cluster": cluster}


def filter_values(given: str | list[str] | None) -> tuple[str, ...]:
    """The values of one filter parameter, as docs/api.md states the rule.

    Repeated (``tenant=a&tenant=Acme, Inc.``): each occurrence is one value,
    commas and all. Given once: a comma-separated list, for compatibility
    with the form the API always took (``tenant=a,b``); a value holding a
    comma is double-quoted there (``tenant="Acme, Inc.",b``, CSV quoting).
    Surrounding spaces and empty values are dropped, duplicates merged.
    """
    if given is None:
        return ()
    if isinstance(given, str):
        given = [given]
    if len(given) == 1:
        given = _split(given[0])
    return tuple(dict.fromkeys(v.strip() for v in given if v.strip()))


def _split(text: str) -> list[str]:
    """Comma-separated values, CSV quoting (``"a, b"``, ``""`` a quote inside); any other character is data
    (the csv module would reject a CR or LF in an unquoted value; here it is part of the value)."""
    values, cur, quoted, i = [], "", False, 0
    while i < len(text):
        ch = text[i]
        if quoted and ch == '"' and text[i + 1:i + 2] == '"':
            cur, i = cur + '"', i + 1
        elif quoted and ch == '"':
            quoted = False
        elif not quoted and ch == '"' and not cur.strip():
            cur, quoted = "", True
        elif not quoted and ch == ",":
            values.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    values.append(cur)
    return values


def join_values(values: tuple[str, ...] | list[str]) -> str:
    """Values as one parameter that :func:`filter_values` reads back (``a,b``; ``"Acme, Inc."`` quoted)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(values)
    return buf.getvalue()


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
        if raw.isascii() and raw.lstrip("-").isdigit():
            return _in_range(EPOCH + timedelta(milliseconds=int(raw)), text, name)
        moment = datetime.fromisoformat(raw)
    except (ValueError, OverflowError):
        if raw.isascii() and raw.lstrip("-").isdigit():  # epoch ms beyond what datetime holds
            raise _out_of_range(text, name) from None
        raise ApiError(E.BAD_PERIOD, f"{name}={text!r} is not an ISO 8601 date/datetime or epoch milliseconds",
                       "e.g. 2025-03-01, 2025-03-01T12:00:00Z, or 1740787200000 (Grafana's ${__from})") from None
    try:  # a valid ISO text whose UTC instant falls outside datetime (0001-01-01T00:00+01:00) is a range problem
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _out_of_range(text, name) from None
    return _in_range(moment, text, name)


def _out_of_range(text: str, name: str) -> ApiError:
    return ApiError(E.BAD_PERIOD, f"{name}={text!r} is outside 1970-01-01..9999-01-01 (UTC)",
                    "use a date within the ledger's range, e.g. 2025-03-01")


def _in_range(moment: datetime, text: str, name: str) -> datetime:
    if not _MIN <= moment < _MAX:
        raise _out_of_range(text, name)
    return moment


def parse_period(start: str | None, end: str | None, latest_ns: int | None) -> Period | None:
    """The requested period; without start/end the latest calendar month with data (None: no data)."""
    if start is None and end is None:
        if latest_ns is None:
            return None
        begin, finish = month_of_day(from_ns(latest_ns).date())
        return Period(begin, finish)
    if start is None or end is None:
        raise ApiError(E.BAD_PERIOD, "give both start and end, or neither",
                       "e.g. start=2025-03-01&end=2025-04-01 (end exclusive); neither = latest month with data")
    begin, finish = parse_moment(start, "start"), parse_moment(end, "end")
    if begin >= finish:
        raise ApiError(E.BAD_PERIOD, f"start {start} is not before end {end}", "end is exclusive")
    period = Period(begin, finish)
    if period.days > MAX_RANGE_DAYS:
        raise ApiError(E.RANGE_TOO_LARGE, f"the period covers {period.days:.0f} days; at most "
                       f"{MAX_RANGE_DAYS} are allowed", "split the request into shorter periods")
    return period


def latest_ns(s: Session, filters: Filters) -> int | None:
    """Interval start of the newest ledger row (of the tenant, for a tenant token)."""
    tenants = filters.values.get("tenant", ())
    where = f" WHERE tenant IN ({', '.join('?' for _ in tenants)})" if tenants else ""
    sql = f"SELECT max(interval_start_ns) AS latest FROM ledger{where}"
    params = list(tenants)
    if s.store.has_table("ledger_hourly"):  # hours that exist only as rollups (retired, or served from the lake)
        sql = f"SELECT greatest(({sql}), (SELECT max(hour_start_ns) FROM ledger_hourly{where})) AS latest"
        params += list(tenants)
    frame = s.query(sql, params)
    latest = None if frame.is_empty() else frame["latest"][0]
    return None if latest is None else int(latest)


def resolve_period(s: Session, start: str | None, end: str | None, filters: Filters) -> Period | None:
    """The request's period: start/end as given, else the latest month with data (None: no data)."""
    if start is None and end is None:
        return parse_period(None, None, latest_ns(s, filters))
    return parse_period(start, end, None)


def period_out(period: Period | None) -> dict[str, str] | None:
    return None if period is None else {"start": iso(period.start), "end": iso(period.end)}


def parse_month(month: str) -> str:
    """A billing month: ``YYYY-MM``, or ``previous`` / ``current`` (UTC) resolved now (400 bad_month)."""
    try:
        return closing.resolve_month(month)
    except ValueError as exc:
        raise ApiError(E.BAD_MONTH, str(exc), "e.g. month=2026-10, or month=previous") from None


def parse_group_by(raw: str, allowed: tuple[str, ...] = DIMENSIONS, *, labels: bool = False) -> list[str]:
    """Dimensions to group by; with ``labels`` also ``label:KEY`` (a pod label, e.g. ``label:team``)."""
    by = list(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))
    bad = [b for b in by if b not in allowed and not (labels and is_label(b))]
    if bad or not by:
        more = ", or label:KEY (a pod label, e.g. label:team)" if labels else ""
        raise ApiError(E.BAD_GROUP_BY, f"cannot group by {', '.join(map(repr, bad)) or 'nothing'}",
                       f"group_by is a comma-separated list of: {', '.join(allowed)}{more}")
    return by


def is_label(dimension: str) -> bool:
    """``label:KEY`` with a well-formed Kubernetes label key (``team``, ``example.com/cost-center``)."""
    key = dimension.removeprefix(LABEL_PREFIX)
    return dimension.startswith(LABEL_PREFIX) and len(key) <= 316 and _LABEL_KEY.match(key) is not None


def parse_granularity(raw: str | None, period: Period, *, auto: bool = False) -> str | None:
    """hour | day | month | None (none); ``auto`` picks by the period's length."""
    if raw in (None, "", "none"):
        if not auto:
            return None
        raw = "hour" if period.days <= 3 else "day" if period.days <= 93 else "month"
    if raw not in GRANULARITIES:
        raise ApiError(E.BAD_GRANULARITY, f"granularity={raw!r} is not one of {', '.join(GRANULARITIES)}",
                       "hour, day or month (UTC buckets)")
    n = buckets_in(period, raw)
    if n > MAX_BUCKETS:
        raise ApiError(E.TOO_MANY_BUCKETS, f"{raw} buckets over this period: {n}, at most {MAX_BUCKETS}",
                       "use a coarser granularity or a shorter period")
    return raw


def buckets_in(period: Period, granularity: str) -> int:
    if granularity == "month":
        return (period.end.year - period.start.year) * 12 + period.end.month - period.start.month + 1
    step = 3600 if granularity == "hour" else 86_400
    return int((period.end - period.start).total_seconds() // step) + 1


def parse_page(limit: int, cursor: str | None) -> Page:
    if not 1 <= limit <= MAX_PAGE:
        raise ApiError(E.BAD_LIMIT, f"limit={limit} is outside 1..{MAX_PAGE}",
                       "page through larger results with the next_cursor of each answer")
    if cursor is None or cursor == "":
        return Page(0, limit)
    try:
        offset = int(base64.urlsafe_b64decode(cursor.encode("ascii") + b"==").decode("ascii"))
        if offset < 0:
            raise ValueError
    except (ValueError, UnicodeError):
        raise ApiError(E.BAD_CURSOR, f"cursor={cursor!r} is not one this API issued",
                       "pass next_cursor from the previous page unchanged, or omit it") from None
    return Page(offset, limit)


def next_cursor(page: Page, total: int) -> str | None:
    end = page.offset + page.limit
    return base64.urlsafe_b64encode(str(end).encode()).decode().rstrip("=") if end < total else None


def check_size(rows: int, what: str) -> None:
    """400 ``result_too_large`` beyond :data:`MAX_RESULT_ROWS`."""
    if rows > MAX_RESULT_ROWS:
        raise ApiError(E.RESULT_TOO_LARGE, f"{rows} {what}, at most {MAX_RESULT_ROWS} per request",
                       "narrow the period or filter (tenant, node, gpu, pod), or group by fewer dimensions")


def split_values(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    return tuple(dict.fromkeys(v.strip() for v in raw.split(",") if v.strip()))
