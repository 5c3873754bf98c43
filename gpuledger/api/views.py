"""Ledger rows to the API's answers: pure functions, LazyFrame/DataFrame in, rows out.

The IO edge is :func:`read_rows` (one SQL query per request, pushed down to
the period). Costs come from :func:`~gpuledger.analytics.chargeback.costed_lines`
over the *whole* period, and only then are filters applied: a tenant's line
costs the same whether or not other tenants' rows are shown beside it, and the
capacity of a GPU shared by several tenants is never charged whole to one of
them. Each answer's lines sum to what the lines in it cost; lines of different
groupings may differ by a rounding cent (one largest-remainder allocation per
grouping).

Units: GPU-seconds and joules in the ledger; GPU-hours, memory GB-hours and
kWh in answers (6 decimals), money as decimal strings in JSON answers and as
numbers in series rows (charts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import polars as pl

from gpuledger.analytics import chargeback as cb
from gpuledger.analytics import kinds as K
from gpuledger.analytics.policy import Policy, apply_idle_policy_sql
from gpuledger.analytics.prices import PriceBook
from gpuledger.api.params import DEFAULT_CLUSTER, LABEL_PREFIX, Filters, Period
from gpuledger.api.reader import Session
from gpuledger.timeutil import HOUR_NS, to_ns

__all__ = ["HOURLY_BOOT", "WORKLOAD", "SqlRows", "apply_filters", "costed", "data_span", "hours", "read_rows",
           "rows_sql", "showback_rows", "with_dimensions", "with_labels"]

_COLUMNS = ("agent_id, boot_id, seq, node, interval_start_ns, interval_end_ns, gpu_uuid, gpu_index, mig_index, "
            "model, profile, sharing, kind, tenant, namespace, pod, rule, gpu_seconds, energy_j, memory_gb_seconds, "
            "cluster")
#: ``boot_id`` of rows read from the hourly rollups (drill-down rows say ``grain: hour``).
HOURLY_BOOT = "hourly"
#: ``ledger_hourly`` rows in the ledger's columns (see ``read_rows``). Each physical GPU-hour
#: stands in for one GPU interval (key: node, HOURLY_BOOT, hour number; chargeback prices a
#: GPU interval once): it spans the GPU's GPU-seconds summed over the hour, which
#: conservation makes its capacity (the ledger's rows of a GPU interval sum to its length
#: within 1e-4 ns, so rounding to the nanosecond gives the integer capacity pricing used).
_FROM_HOURLY = (f"node, '{HOURLY_BOOT}', (hour_start_ns // {HOUR_NS})::UBIGINT, node, hour_start_ns, "
                "hour_start_ns + round(sum(gpu_seconds) OVER (PARTITION BY hour_start_ns, cluster, node, gpu_index) * 1e9)"
                "::BIGINT, gpu_uuid, gpu_index, mig_index, model, profile, sharing, "
                "kind, tenant, namespace, pod, rule, gpu_seconds, energy_j, memory_gb_seconds, cluster")
_FROM_HOURLY_FAST = _FROM_HOURLY.replace(
    "round(sum(gpu_seconds) OVER (PARTITION BY hour_start_ns, cluster, node, gpu_index) * 1e9)", str(HOUR_NS))
#: pod name -> workload: drop a ReplicaSet hash and the 5-character pod suffix Kubernetes generates.
WORKLOAD = r"^(.+?)(?:-[0-9a-f]{8,10})?-[a-z0-9]{5}$"
_ROUND = 6
_BUCKET = {"hour": "1h", "day": "1d", "month": "1mo"}


def read_rows(s: Session, period: Period, nodes: Sequence[str] = (), *, hourly: bool = False) -> pl.LazyFrame:
    """Ledger rows whose interval starts in the period (node filter pushed down), read into Polars (``rows_sql``)."""
    sql, params = rows_sql(s, period, nodes, hourly=hourly)
    return s.query(sql, params).lazy()


def rows_sql(s: Session, period: Period, nodes: Sequence[str] = (), *, hourly: bool = False,
             hour_ends: bool = True) -> tuple[str, list[Any]]:
    """SQL (and its parameters) for the ledger rows whose interval starts in the period (node filter pushed
    down: a node's GPUs are whole). ``hour_ends=False``: rollup rows end at their hour's end instead of
    their GPU-hour's seconds (no window function; for ``chargeback.usage_sql(hour_boot=HOURLY_BOOT)``,
    which takes a GPU-hour's capacity from its seconds).

    Hourly rollups (``ledger_hourly``) stand in for the ledger, one row per
    hour and group with ``interval_start_ns`` the hour's start (see
    ``_FROM_HOURLY``; their drill-down rows say ``grain: hour``):

    - always for months whose interval-grain ledger retention removed
      (``ledger_retired``) and for hours before the ledger's window
      (``ledger_window``: the attribution job keeps interval rows for recent
      days only);
    - with ``hourly`` (answers bucketed by hour or coarser: showback, series,
      efficiency), for every whole hour of the period that is rolled up: not
      pending in ``ledger_hourly_pending`` and older than the newest rolled-up
      hour (which may still be filling). Edge hours the period cuts, pending
      hours and the newest hour come from the ledger. A month of 1,000 GPUs
      at a 10 s tick is then ~720 x fewer rows to read and price.

    Totals, costs and hourly or coarser buckets come out as the ledger gives
    them (tests/api/test_hourly_reads.py, tests/ingest/test_retention_rollups.py).
    """
    lo, hi = to_ns(period.start), to_ns(period.end)
    node_sql = f" AND node IN ({', '.join('?' for _ in nodes)})" if nodes else ""
    # A file no writer has opened since these tables were added lacks them (the API opens read-only).
    rolled = s.store.has_table("ledger_hourly") and s.store.has_table("ledger_retired")
    a = b = 0  # live hours [a, b) answered from rollups
    if hourly and rolled:
        newest = s.query("SELECT max(hour_start_ns) AS h FROM ledger_hourly WHERE hour_start_ns < ?", [hi])["h"][0]
        a, b = -(-lo // HOUR_NS) * HOUR_NS, min(hi // HOUR_NS * HOUR_NS, newest if newest is not None else 0)
        a, b = (a, b) if a < b else (0, 0)
    if not s.store.scalar("SELECT count(*) FROM duckdb_columns() WHERE table_name = 'ledger' "
                          "AND column_name = 'cluster'"):  # a file no writer opened since migration 12
        return (f"SELECT {_COLUMNS.replace('cluster', repr(DEFAULT_CLUSTER) + ' AS cluster')} FROM ledger "
                f"WHERE interval_start_ns >= ? AND interval_start_ns < ?{node_sql}", [lo, hi, *nodes])
    if not rolled:
        return (f"SELECT {_COLUMNS} FROM ledger WHERE interval_start_ns >= ? AND interval_start_ns < ?{node_sql}",
                [lo, hi, *nodes])
    pending = "NOT IN (SELECT hour_start_ns FROM ledger_hourly_pending)"
    ledger_sql = (f"SELECT {_COLUMNS} FROM ledger WHERE interval_start_ns >= ? AND interval_start_ns < ?{node_sql} "
                  f"AND NOT (interval_start_ns >= ? AND interval_start_ns < ? "
                  f"AND interval_start_ns - interval_start_ns % {HOUR_NS} {pending})")
    params: list[Any] = [lo, hi, *nodes, a, b]
    retired = s.query("SELECT start_ns, end_ns FROM ledger_retired WHERE end_ns > ? AND start_ns < ?", [lo, hi]).rows()
    if s.store.has_table("ledger_window"):  # hours before the interval ledger's window exist only as rollups
        retired += [(lo, int(k)) for (k,) in s.query("SELECT max(kept_from_ns) FROM ledger_window").rows()
                    if k is not None]
    ranges = [(a, b, True), *((max(lo, start), min(hi, end), False) for start, end in retired)]
    ranges = [(x, y, live) for x, y, live in ranges if x < y]
    if not ranges:
        return ledger_sql, params
    where = " OR ".join(f"(hour_start_ns >= ? AND hour_start_ns < ?{' AND hour_start_ns ' + pending if live else ''})"
                        for _, _, live in ranges)
    hourly_cols = _FROM_HOURLY if hour_ends else _FROM_HOURLY_FAST
    sql = f"{ledger_sql} UNION ALL SELECT {hourly_cols} FROM ledger_hourly WHERE ({where}){node_sql}"
    params += [v for x, y, _ in ranges for v in (x, y)] + list(nodes)
    return sql, params


def with_dimensions(rows: pl.LazyFrame, granularity: str | None = None) -> pl.LazyFrame:
    """Add ``workload`` and ``gpu`` (the physical GPU's UUID) and, with a granularity, ``time`` (bucket
    start, ms); ``cluster`` is the ledger's own column."""
    out = rows.with_columns(workload=pl.col("pod").str.extract(WORKLOAD, 1).fill_null(pl.col("pod")),
                            gpu=pl.col("gpu_uuid"))
    if granularity:
        start = pl.from_epoch("interval_start_ns", time_unit="ns").dt.truncate(_BUCKET[granularity])
        out = out.with_columns(time=start.dt.epoch("ms"))
    return out


def with_labels(s: Session, rows: pl.LazyFrame, dimensions: Sequence[str]) -> pl.LazyFrame:
    """Add a ``label:KEY`` column per such dimension: the pod's label value (null: no pod, or no such label).

    Labels come from the ``pods`` table (latest seen wins), matched on namespace and pod name.
    """
    keys = [d.removeprefix(LABEL_PREFIX) for d in dimensions if d.startswith(LABEL_PREFIX)]
    if not keys:
        return rows
    cols = ", ".join(f"json_extract_string(labels, ?) AS \"{LABEL_PREFIX}{k}\"" for k in keys)
    pods = s.query(f"SELECT namespace, name AS pod, {cols} FROM (SELECT namespace, name, "
                   "arg_max(labels, last_seen_ns) AS labels FROM pods GROUP BY namespace, name)",
                   ['$."' + k.replace('"', '') + '"' for k in keys])
    return rows.join(pods.lazy(), on=["namespace", "pod"], how="left", nulls_equal=False)


def data_span(rows: pl.LazyFrame, period: Period) -> dict[str, Any]:
    """When the rows' data starts and ends within the period, and how many UTC hours hold any (None: no rows)."""
    frame = rows.select(first=pl.col("interval_start_ns").min(), last=pl.col("interval_end_ns").max(),
                        hours=(pl.col("interval_start_ns") // HOUR_NS).n_unique()).collect()
    return _span(frame.row(0), period)


def _span(row: tuple[Any, ...], period: Period) -> dict[str, Any]:
    lo, hi = to_ns(period.start), to_ns(period.end)
    first, last, n = row
    if first is None:
        return {"first": None, "last": None, "hours_with_data": 0, "period_hours": (hi - lo) / HOUR_NS}
    return {"first": int(max(lo, first)), "last": int(min(hi, last)), "hours_with_data": int(n),
            "period_hours": (hi - lo) / HOUR_NS}


#: SQL of the derived dimensions ``with_dimensions`` adds in Polars (``time`` is added per granularity).
_DIMENSION_SQL = {
    "workload": f"CASE WHEN regexp_matches(pod, '{WORKLOAD}') THEN regexp_extract(pod, '{WORKLOAD}', 1) ELSE pod END",
    "gpu": "gpu_uuid",
}
_TRUNC = {"hour": "hour", "day": "day", "month": "month"}


@dataclass
class SqlRows:
    """The rows of :func:`rows_sql` with the derived dimensions, left in DuckDB: costing sums them there.

    The Polars path (``read_rows`` + ``with_dimensions`` + ``costed``) reads
    every row into memory -- a month of 1,000 GPUs is millions of rollup rows;
    here only the sums leave DuckDB (``chargeback.usage_sql``), the same
    figures (tests/api/test_showback_sql.py). Not for ``label:KEY`` groups.
    """

    s: Session
    sql: str  # rollup rows end at their hour's end (costing takes a GPU-hour's capacity from its seconds)
    params: list[Any]
    exact_sql: str  # the same rows as ``read_rows`` gives them (``data_span``'s last end)
    _capacity: pl.DataFrame | None = None

    @classmethod
    def of(cls, s: Session, period: Period, nodes: Sequence[str], granularity: str | None,
           idle_policy: Policy = "holder") -> SqlRows:
        """The period's rows, re-booked under ``idle_policy`` (who pays for idle) for costing."""
        base, params = rows_sql(s, period, nodes, hourly=True, hour_ends=False)
        base = apply_idle_policy_sql(base, idle_policy)
        exact, _ = rows_sql(s, period, nodes, hourly=True)
        dims = {**_DIMENSION_SQL, "cluster": "cluster"}
        if granularity:
            dims["time"] = f"epoch_ms(date_trunc('{_TRUNC[granularity]}', make_timestamp(interval_start_ns // 1000)))"
        cols = ", ".join(f"{expr} AS \"{name}\"" for name, expr in dims.items())
        return cls(s, f"SELECT *, {cols} FROM ({base})", params, f"SELECT *, {cols} FROM ({exact})")

    def costed(self, book: PriceBook, keys: Sequence[str]) -> pl.DataFrame:
        """As :func:`costed` over these rows."""
        keys = list(dict.fromkeys(keys))
        usage = cb.usage_sql(self.s.store, self.sql, self.params, {k: f'"{k}"' for k in keys},
                             capacity=self._capacity, hour_boot=HOURLY_BOOT)
        self._capacity = usage.capacity  # the same GPUs whatever the keys: one capacity query per answer
        lines, _ = cb.price_usage(usage, book, keys)
        return _summed(lines, keys)

    def data_span(self, period: Period, filters: Filters) -> dict[str, Any]:
        """As :func:`data_span` of these rows with ``filters`` applied."""
        where = [f'"{dim}" IN ({", ".join("?" for _ in values)})' for dim, values in filters.values.items() if values]
        values = [v for vs in filters.values.values() if vs for v in vs]
        frame = self.s.query(f"SELECT min(interval_start_ns) AS first, max(interval_end_ns) AS last, "
                             f"count(DISTINCT interval_start_ns // {HOUR_NS}) AS hours FROM ({self.exact_sql}) "
                             f"WHERE {' AND '.join(where) or 'TRUE'}", [*self.params, *values])
        return _span(frame.row(0), period)


def _summed(lines: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    memory = ({"memory_gb_seconds": pl.when(pl.col("memory_gb_seconds").is_not_null().any())
               .then(pl.col("memory_gb_seconds").sum())} if "memory_gb_seconds" in lines.columns else {})
    return lines.group_by(keys).agg(
        *[pl.col(m).sum() for m in ("gpu_seconds", "busy_seconds", "idle_seconds", "unmeasured_seconds",
                                    "unallocated_seconds", "direct_busy_seconds")],
        energy_j=pl.when(pl.col("energy_j").is_not_null().any()).then(pl.col("energy_j").sum()),
        capacity_cost=pl.col("capacity_cost").sum(),
        energy_cost=pl.when(pl.col("energy_cost").is_not_null().any()).then(pl.col("energy_cost").sum()),
        **memory,
    )


def costed(rows: pl.LazyFrame, book: PriceBook, keys: Sequence[str]) -> pl.DataFrame:
    """Metrics and cost per ``keys`` (any ledger or derived columns), costed over all ``rows``."""
    keys = list(dict.fromkeys(keys))
    lines, _ = cb.costed_lines(rows, book, keys)
    memory = (rows.group_by(keys).agg(memory_gb_seconds=pl.when(pl.col("memory_gb_seconds").is_not_null().any())
                                      .then(pl.col("memory_gb_seconds").sum())).collect())
    summed = _summed(lines, keys)
    if summed.is_empty():
        return summed.with_columns(memory_gb_seconds=pl.lit(None, pl.Float64))
    return summed.join(memory, on=keys, how="left", nulls_equal=True)


_Frame = TypeVar("_Frame", pl.DataFrame, pl.LazyFrame)


def apply_filters(frame: _Frame, filters: Filters) -> _Frame:
    """Keep rows matching every filter (values of one filter: any of them)."""
    for dim, values in filters.values.items():
        if values:
            frame = frame.filter(pl.col(dim).is_in(list(values)))
    return frame


def hours(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 3600, _ROUND)


def money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def showback_rows(rows: pl.LazyFrame | SqlRows, book: PriceBook, by: list[str], filters: Filters,
                  granularity: str | None) -> pl.DataFrame:
    """One row per group (and bucket): metrics, ``cost`` (capacity + charged energy), ``coverage``,
    ``idle_cost`` and ``utilization``. Groups holding nothing (zero GPU-seconds, energy and cost) are left out.

    ``idle_cost`` is the cost of the group's ``allocated_idle`` lines, costed
    by group and kind as ``/v1/efficiency`` does (so the two routes agree to
    the cent); ``utilization`` is used / (used + allocated idle), null when
    the group held nothing measured.
    """
    keys = [*(["time"] if granularity else []), *by]

    def cost(keys: list[str]) -> pl.DataFrame:
        return rows.costed(book, keys) if isinstance(rows, SqlRows) else costed(rows, book, keys)

    lines = apply_filters(cost([*keys, *filters.dims()]), filters)
    by_kind = apply_filters(cost([*keys, "kind", *filters.dims()]), filters)
    idle = (by_kind.filter(pl.col("kind") == K.ALLOCATED_IDLE)
            .group_by(keys).agg(idle_cost=(pl.col("capacity_cost") + pl.col("energy_cost").fill_null(0)).sum()))
    out = lines.group_by(keys).agg(
        *[pl.col(m).sum() for m in ("gpu_seconds", "busy_seconds", "idle_seconds", "unmeasured_seconds",
                                    "unallocated_seconds", "direct_busy_seconds", "capacity_cost")],
        energy_j=pl.when(pl.col("energy_j").is_not_null().any()).then(pl.col("energy_j").sum()),
        memory_gb_seconds=pl.when(pl.col("memory_gb_seconds").is_not_null().any())
        .then(pl.col("memory_gb_seconds").sum()),
        energy_cost=pl.when(pl.col("energy_cost").is_not_null().any()).then(pl.col("energy_cost").sum()),
    )
    measured = pl.col("busy_seconds") + pl.col("idle_seconds")
    # A group whose rows hold nothing (the ledger books a zero-second ``unattributed`` row per unit
    # when it checks for busy time held by nobody) is not a line: no zero-valued rows on a bill.
    out = out.filter((pl.col("gpu_seconds") != 0) | (pl.col("energy_j").fill_null(0) != 0)
                     | (pl.col("capacity_cost") != 0))
    out = out.join(idle, on=keys, how="left", nulls_equal=True)
    return out.with_columns(
        # A group without allocated-idle lines held nothing idle: its idle cost is zero, not unknown.
        idle_cost=pl.col("idle_cost").fill_null(pl.lit(0).cast(out.schema["capacity_cost"])),
        cost=pl.col("capacity_cost") + pl.col("energy_cost").fill_null(0),
        coverage=pl.when(pl.col("busy_seconds") > 0).then(pl.col("direct_busy_seconds") / pl.col("busy_seconds")),
        utilization=pl.when(measured > 0).then(pl.col("busy_seconds") / measured),
    ).sort(keys, nulls_last=True)


def metric_fields(r: dict[str, Any]) -> dict[str, Any]:
    """The usage fields of an answer row, from a :func:`showback_rows` row."""
    return {
        "gpu_hours": hours(r["gpu_seconds"]),
        "used_gpu_hours": hours(r["busy_seconds"]),
        "allocated_idle_gpu_hours": hours(r["idle_seconds"]),
        "unmeasured_gpu_hours": hours(r["unmeasured_seconds"]),
        "unallocated_gpu_hours": hours(r["unallocated_seconds"]),
        "memory_gb_hours": hours(r["memory_gb_seconds"]),
        "energy_kwh": None if r["energy_j"] is None else round(r["energy_j"] / cb.J_PER_KWH, _ROUND),
        "coverage": None if r["coverage"] is None else round(r["coverage"], _ROUND),
        "utilization": None if r.get("utilization") is None else round(r["utilization"], _ROUND),
    }


def read_last_end(rows: pl.LazyFrame) -> dict[tuple[str, str], int]:
    """Per (cluster, node), the end (ns) of its newest interval among ``rows``."""
    frame = rows.group_by("cluster", "node").agg(last=pl.col("interval_end_ns").max()).collect()
    return {(c, n): last for c, n, last in frame.iter_rows()}
