"""Cost: ledger rows (GPU-seconds per tenant and kind) to priced lines that reconcile.

Pure functions, LazyFrame in, DataFrames out. The IO edges are
:func:`read_ledger` (the store) and :func:`chargeback_csv` (store to file text,
rendered by :mod:`~gpuledger.analytics.focus`).

How money closes exactly (all exact rationals, one rounding per pool):

1. Each ledger row is priced by its GPU model, MIG profile and the UTC day its
   interval starts (:meth:`PriceBook.price_for`). A *pool* is one
   (model, price entry): usually one per model per month, more when a price
   changes mid-month or a MIG profile has its own entry.
2. A pool's capacity is computed from integer nanoseconds, not from the
   float ``gpu_seconds``: every physical GPU interval (message key +
   ``gpu_index``) contributes ``interval_end_ns - interval_start_ns``. When one
   GPU's rows fall into several pools (MIG slices priced by profile), its
   interval is split by slice fraction in units of 1/840 (exact for MIG's
   sevenths and eighths), the largest pool taking the rounding remainder.
3. pool capacity cost = quantize(capacity_ns / 3.6e12 × per_gpu_hour).
   Optional energy: quantize(Σ energy_j / 3.6e6 × energy_per_kwh) — only over
   measured energy; unmeasured energy is not charged and stays null.
4. Each pool's cost is :func:`~analytics.money.allocate`-d to the lines in it
   by their GPU-seconds (energy cost by their joules), so lines sum to the
   pool and the file sums to Σ pool cost, to the cent.

Rows belong to the period that contains their ``interval_start_ns`` (UTC,
start inclusive, end exclusive); an interval spanning midnight is priced and
billed on the day it started.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import polars as pl

from gpuledger.analytics import kinds
from gpuledger.analytics.exact import exact, exact_sql, measure
from gpuledger.analytics.money import allocate, quantize_fraction
from gpuledger.analytics.prices import Price, PriceBook
from gpuledger.errors import GpuledgerError
from gpuledger.store import Store
from gpuledger.timeutil import DAY_NS, HOUR_NS, to_ns

__all__ = [
    "CHARGE_PERIODS",
    "GROUPABLE",
    "LINE_KEYS",
    "LedgerDataError",
    "Pool",
    "PoolMap",
    "ReconciliationError",
    "Totals",
    "Usage",
    "chargeback_csv",
    "chargeback_lines",
    "costed_lines",
    "hour_rows_sql",
    "line_keys",
    "price_usage",
    "read_usage",
    "usage_of",
    "usage_sql",
    "monthly_totals",
    "read_ledger",
    "showback",
]

#: Ledger columns a showback may group by.
GROUPABLE = ("tenant", "namespace", "model", "node", "sharing", "profile")
#: Keys of one chargeback line (before the price entry splits it): a tenant's use in two clusters is two lines.
LINE_KEYS = ("tenant", "cluster", "model", "profile", "line_kind")
#: Units of one physical GPU interval when MIG slices fall into different pools.
SLICE_UNITS = 840  # lcm(1..8): 1/7 and 1/8 slices are whole units
#: Charge period granularities of the file: one row per line per month, or per UTC day.
CHARGE_PERIODS = ("month", "day")
J_PER_KWH = 3_600_000
_GPU_INTERVAL = ["cluster", "agent_id", "boot_id", "seq", "gpu_index"]  # cluster: two clusters' node names may match
#: Ledger columns pricing reads (not pod names or memory).
_READ = ("agent_id, boot_id, seq, node, interval_start_ns, interval_end_ns, gpu_index, model, profile, "
         "sharing, kind, tenant, namespace, rule, gpu_seconds, energy_j, cluster")
#: A line's measures (float, what lines show) -> the exact integer sums they are computed from
#: (GPU-picoseconds, nanojoules: ``analytics/exact.py``); every sum of a bill adds these integers only.
METRIC_SUMS = {"gpu_seconds": "gpu_ps", "busy_seconds": "busy_ps", "idle_seconds": "idle_ps",
               "unmeasured_seconds": "unmeasured_ps", "unallocated_seconds": "unallocated_ps",
               "direct_busy_seconds": "direct_busy_ps", "energy_j": "energy_nj"}
_PS = pl.col("gpu_ps").cast(pl.Int128)
_METRICS = {
    # Null when a row's GPU-seconds were not finite: the line cannot be priced (LedgerDataError).
    "gpu_ps": pl.when(pl.col("gpu_ps").null_count() == 0).then(_PS.sum()),
    "busy_ps": _PS.filter(pl.col("kind") == kinds.BUSY).sum(),
    "idle_ps": _PS.filter(pl.col("kind") == kinds.ALLOCATED_IDLE).sum(),
    "unmeasured_ps": _PS.filter(pl.col("kind") == kinds.UNMEASURED).sum(),
    "unallocated_ps": _PS.filter(pl.col("kind") == kinds.UNALLOCATED).sum(),
    "direct_busy_ps": _PS.filter((pl.col("kind") == kinds.BUSY) & pl.col("rule").is_in(list(kinds.DIRECT_RULES)))
    .sum(),
    # Null when no row of the line measured energy: missing is not zero.
    "energy_nj": pl.when(pl.col("energy_nj").is_not_null().any()).then(pl.col("energy_nj").cast(pl.Int128).sum()),
}


def _known(column: str) -> pl.Expr:
    """Exact sum of the known values (Int128), null when none is known."""
    return pl.when(pl.col(column).is_not_null().any()).then(pl.col(column).cast(pl.Int128).sum())


def _measures() -> list[pl.Expr]:
    """The float measures of lines, each from its exact sum (:data:`METRIC_SUMS`)."""
    return [measure("energy_j" if name == "energy_j" else "gpu_seconds", column).alias(name)
            for name, column in METRIC_SUMS.items()]


class LedgerDataError(GpuledgerError):
    """Ledger rows that cannot be priced (NaN or negative GPU-seconds)."""

    hint = "re-run attribution for the period (`gpuledger attribute --full`) and report the bug"


class ReconciliationError(AssertionError):
    """Billed lines do not sum to what the fleet cost (a bug, never expected)."""


@dataclass(frozen=True)
class Pool:
    """One (model, price entry): what its capacity cost in a period."""

    model: str
    price: Price
    capacity_ns: Fraction  # GPU-nanoseconds of capacity (exact)
    capacity_cost: Decimal  # quantized to the book's quantum
    energy_j: float | None  # measured joules, None if none measured
    energy_cost: Decimal | None  # None: no energy price, or no energy measured

    @property
    def capacity_gpu_hours(self) -> Fraction:
        return self.capacity_ns / HOUR_NS


#: Pools by (model, price entry id).
PoolMap = dict[tuple[str, str], Pool]


@dataclass(frozen=True)
class Totals:
    """Fleet cost versus billed lines for one period (see :func:`monthly_totals`)."""

    currency: str
    capacity_cost: Decimal  # Σ pool capacity cost
    energy_cost: Decimal | None  # Σ pool energy cost, None when energy is not charged
    fleet_cost: Decimal  # capacity + energy
    billed_total: Decimal  # Σ BilledCost of the lines
    capacity_gpu_hours: Fraction

    @property
    def reconciled(self) -> bool:
        return self.fleet_cost == self.billed_total


@dataclass(frozen=True)
class Usage:
    """What a period's bill is computed from: sums per line keys and the GPU capacity behind them.

    ``sums``: one row per key × ``model`` × ``_profile`` (MIG profile, "" for a
    whole GPU) × ``_day`` (UTC date, the price's day) with the exact sums of
    :data:`METRIC_SUMS` (GPU-picoseconds, nanojoules; integers, so no sum
    depends on its order) and ``_sharing`` (list of sharing modes). ``capacity``: one row per
    ``model`` × ``_profile`` × ``_day`` with ``units`` (GPU-nanoseconds × 840,
    exact integers), ``min_k`` (the smallest slice share, a check) and
    ``energy_nj`` (measured nanojoules, null when none). Both are small: their size
    does not grow with the fleet's ticks or days beyond one row per day.
    """

    sums: pl.DataFrame
    capacity: pl.DataFrame


_PRICE_KEYS = ["model", "_profile", "_day"]


def _split_units(per: pl.LazyFrame, unit: list[str]) -> pl.LazyFrame:
    """Per physical GPU interval (``unit`` keys, length ``dt`` ns): its model × profile groups' shares in 1/840.

    ``per`` has one row per ``unit`` × model × ``_profile`` with ``secs`` (exact GPU-picoseconds); each share is
    ``secs / total`` × 840 rounded half up, in integers; the
    largest group (ties: model, profile) takes the rounding remainder so the
    shares of one interval sum to exactly 840.
    """
    total = pl.col("total")
    return (
        per.with_columns(total=pl.col("secs").sum().over(unit))
        .with_columns(k=pl.when(total > 0).then((pl.col("secs") * 2 * SLICE_UNITS + total) // (2 * total))
                      .otherwise(0).cast(pl.Int64))
        .sort([*unit, "secs", "model", "_profile"], descending=[False] * len(unit) + [True, False, False])
        .with_columns(first=pl.int_range(pl.len()).over(unit) == 0)
        .with_columns(k=pl.when("first").then(SLICE_UNITS - (pl.col("k").sum().over(unit) - pl.col("k")))
                      .otherwise("k"))
    )


def usage_of(ledger: pl.LazyFrame, by: Sequence[str]) -> Usage:
    """:class:`Usage` of ledger rows (interval grain; the API and the tests' path), grouped by ``by``."""
    ledger = _with_line_kind(ledger).with_columns(
        gpu_ps=exact("gpu_seconds"), energy_nj=exact("energy_j"),  # NaN energy: unmeasured (null)
        _day=pl.from_epoch("interval_start_ns", time_unit="ns").dt.date(),
        _profile=pl.col("profile").fill_null(""),
    )
    keys = list(dict.fromkeys([*by, *_PRICE_KEYS]))
    sums = ledger.group_by(keys).agg(**_METRICS, _sharing=pl.col("sharing").unique())
    per = (ledger.group_by([*_GPU_INTERVAL, *_PRICE_KEYS])
           .agg(secs=_PS.sum(), dt=(pl.col("interval_end_ns") - pl.col("interval_start_ns")).max(),
                energy_nj=pl.col("energy_nj").cast(pl.Int128).sum(), measured=pl.col("energy_nj").is_not_null().any())
           .with_columns(dt=pl.col("dt").max().over(_GPU_INTERVAL)))
    capacity = (_split_units(per, _GPU_INTERVAL).group_by(_PRICE_KEYS)
                .agg(units=(pl.col("dt").cast(pl.Int128) * pl.col("k")).sum(), min_k=pl.col("k").min(),
                     energy_nj=pl.when(pl.col("measured").any()).then(pl.col("energy_nj").filter("measured").sum())))
    collected = pl.collect_all([sums, capacity])
    return Usage(collected[0], collected[1])


def price_usage(usage: Usage, book: PriceBook, by: Sequence[str]) -> tuple[pl.DataFrame, PoolMap]:
    """Metrics and cost per ``by`` × model × price entry; the pools they came from.

    Columns: the keys, ``entry_id``, the measures of :data:`METRIC_SUMS` (seconds, joules: floats, each
    computed from its exact integer sum) and those sums, ``sharing_modes`` and ``capacity_cost`` /
    ``energy_cost`` (Decimal; energy null when not charged). Cost is split by GPU-seconds (joules)
    rounded to the microsecond (millijoule), from the exact sums.
    """
    days = pl.concat([usage.sums.select(_PRICE_KEYS), usage.capacity.select(_PRICE_KEYS)]).unique()
    prices: dict[str, Price] = {}
    entry_ids: list[str] = []
    for model, profile, day in days.iter_rows():
        price = book.price_for(model, profile or None, day)
        prices[price.entry_id] = price
        entry_ids.append(price.entry_id)
    lookup = days.with_columns(entry_id=pl.Series(entry_ids, dtype=pl.String))
    pool_map = _pools(usage.capacity.join(lookup, on=_PRICE_KEYS, how="left"), prices, book.quantum)
    keys = list(dict.fromkeys([*by, "model", "entry_id"]))
    summed = [pl.col(m).sum() for m in _METRICS if m not in ("gpu_ps", "energy_nj")]
    has_memory = "memory_byte_seconds" in usage.sums.columns
    memory = {"memory_byte_seconds": _known("memory_byte_seconds")} if has_memory else {}
    modes = pl.col("_sharing").list.explode(keep_nulls=False, empty_as_null=False).unique().sort().str.join(",")
    lines = (usage.sums.join(lookup, on=_PRICE_KEYS, how="left", nulls_equal=True)
             .group_by(keys)
             .agg(*summed, gpu_ps=pl.when(pl.col("gpu_ps").null_count() == 0).then(pl.col("gpu_ps").sum()),
                  energy_nj=_known("energy_nj"), sharing_modes=modes, **memory)
             .with_columns(*_measures(), *([measure("memory_gb_seconds")] if has_memory else []))
             .select(*keys, *METRIC_SUMS, *METRIC_SUMS.values(), "sharing_modes",
                     *(["memory_gb_seconds"] if has_memory else []))
             .sort(keys, nulls_last=True))
    bad = lines.filter(pl.col("gpu_ps").is_null() | (pl.col("gpu_ps") < 0))
    if bad.height:
        raise LedgerDataError(f"{bad.height} charge line(s) have NaN or negative GPU-seconds, "
                              f"e.g. {bad.select(keys).row(0)}")
    cap_cost: list[Decimal | None] = [None] * lines.height
    e_cost: list[Decimal | None] = [None] * lines.height
    index = lines.with_row_index("_i").partition_by("model", "entry_id", as_dict=True)
    for (model, entry_id), part in sorted(index.items()):
        pool = pool_map[(str(model), str(entry_id))]
        rows = part["_i"].to_list()
        # Weights: the exact sums rounded (half to even) to 1 µs / 1 mJ, the grain a line's share is weighed in.
        weights = [round(Fraction(int(p), 10**6)) for p in part["gpu_ps"].to_list()]
        for i, amount in zip(rows, allocate(pool.capacity_cost, weights, book.quantum)):
            cap_cost[i] = amount
        if pool.energy_cost is not None:
            weights = [round(Fraction(int(e or 0), 10**6)) for e in part["energy_nj"].to_list()]
            for i, amount, e in zip(rows, allocate(pool.energy_cost, weights, book.quantum), part["energy_j"]):
                e_cost[i] = amount if e is not None else None
    scale = max(0, -int(book.quantum.as_tuple().exponent))
    money = pl.Decimal(38, scale)
    return lines.with_columns(capacity_cost=pl.Series(cap_cost, dtype=money),
                              energy_cost=pl.Series(e_cost, dtype=money)), pool_map


def _pools(capacity: pl.DataFrame, prices: dict[str, Price], quantum: Decimal) -> PoolMap:
    """Capacity and its cost per (model, entry_id), from the exact integer units (energy: nanojoules)."""
    sums = (capacity.group_by("model", "entry_id")
            .agg(units=pl.col("units").cast(pl.Int128).sum(), min_k=pl.col("min_k").min(),
                 energy=_known("energy_nj")))
    out: PoolMap = {}
    for model, entry_id, units, min_k, energy in sums.sort("model", "entry_id").iter_rows():
        if min_k is not None and min_k < 0:
            raise ReconciliationError(f"negative slice share in pool {model}/{entry_id}")
        price = prices[entry_id]
        capacity_ns = Fraction(int(units), SLICE_UNITS)
        cost = quantize_fraction(capacity_ns / HOUR_NS * Fraction(price.per_gpu_hour), quantum)
        e_cost = None
        joules = None if energy is None else Fraction(int(energy), 10**9)
        if price.energy_per_kwh is not None and joules is not None:
            e_cost = quantize_fraction(joules / J_PER_KWH * Fraction(price.energy_per_kwh), quantum)
        out[(model, entry_id)] = Pool(model, price, capacity_ns, cost, None if joules is None else float(joules), e_cost)
    return out


def costed_lines(ledger: pl.LazyFrame, book: PriceBook, by: Sequence[str]) -> tuple[pl.DataFrame, PoolMap]:
    """:func:`price_usage` of ledger rows (interval grain)."""
    return price_usage(usage_of(ledger, by), book, by)


def line_keys(charge_period: str) -> list[str]:
    """The keys of a chargeback line for ``charge_period`` (``day`` adds ``charge_day_ns``)."""
    if charge_period not in CHARGE_PERIODS:
        raise ValueError(f"charge period must be one of {CHARGE_PERIODS}, got {charge_period!r}")
    return [*LINE_KEYS, "charge_day_ns"] if charge_period == "day" else list(LINE_KEYS)


def chargeback_lines(source: pl.LazyFrame | Usage, book: PriceBook, charge_period: str = "month",
                     ) -> tuple[pl.DataFrame, PoolMap]:
    """One line per tenant × model × MIG profile × kind of line × price entry (× UTC day).

    ``source``: ledger rows, or the :class:`Usage` :func:`read_usage` made with
    the same :func:`line_keys`. ``line_kind`` is ``unallocated`` for the
    platform's idle capacity, else ``usage``. With ``charge_period="day"``
    lines are also split by ``charge_day_ns`` (the UTC midnight, ns, of the day
    each interval starts); pools stay monthly, so the month's total is the
    same at either granularity.
    """
    keys = line_keys(charge_period)
    if isinstance(source, Usage):
        return price_usage(source, book, keys)
    if charge_period == "day":
        source = source.with_columns(charge_day_ns=pl.col("interval_start_ns") - pl.col("interval_start_ns") % DAY_NS)
    return costed_lines(source, book, keys)


def showback(ledger: pl.LazyFrame, book: PriceBook, by: Sequence[str]) -> pl.DataFrame:
    """Usage and cost per ``by`` (subset of :data:`GROUPABLE`), across price entries.

    Adds ``cost`` = capacity + energy cost (energy counted only where charged)
    and ``coverage`` = share of busy GPU-seconds attributed from direct
    per-process samples (null when nothing was busy).
    """
    bad = [b for b in by if b not in GROUPABLE]
    if bad or not by:
        raise ValueError(f"cannot group by {bad or 'nothing'}; choose from {', '.join(GROUPABLE)}")
    lines, _ = costed_lines(ledger, book, by)
    metric_sums = [pl.col(m).sum() for m in METRIC_SUMS.values() if m != "energy_nj"]
    return (
        lines.group_by(list(by))
        .agg(*metric_sums, energy_nj=_known("energy_nj"),
             capacity_cost=pl.col("capacity_cost").sum(),
             energy_cost=pl.when(pl.col("energy_cost").is_not_null().any()).then(pl.col("energy_cost").sum()))
        .with_columns(*_measures())
        .with_columns(cost=pl.col("capacity_cost") + pl.col("energy_cost").fill_null(0),
                      coverage=pl.when(pl.col("busy_seconds") > 0)
                      .then(pl.col("direct_busy_seconds") / pl.col("busy_seconds")))
        .sort(list(by), nulls_last=True)
    )


def monthly_totals(lines: pl.DataFrame, pool_map: PoolMap, currency: str) -> Totals:
    """Fleet cost (Σ pools) against billed lines; raises ReconciliationError if they differ."""
    capacity = sum((p.capacity_cost for p in pool_map.values()), Decimal(0))
    energies = [p.energy_cost for p in pool_map.values() if p.energy_cost is not None]
    energy = sum(energies, Decimal(0)) if energies else None
    billed = sum((c for c in lines["capacity_cost"].to_list() if c is not None), Decimal(0))
    billed += sum((c for c in lines["energy_cost"].to_list() if c is not None), Decimal(0))
    hours = sum((p.capacity_gpu_hours for p in pool_map.values()), Fraction(0))
    totals = Totals(currency, capacity, energy, capacity + (energy or 0), billed, hours)
    if not totals.reconciled:
        raise ReconciliationError(f"billed {billed} {currency} but the fleet cost {totals.fleet_cost} {currency}")
    return totals


def _with_line_kind(ledger: pl.LazyFrame) -> pl.LazyFrame:
    return ledger.with_columns(
        line_kind=pl.when(pl.col("kind") == kinds.UNALLOCATED).then(pl.lit("unallocated")).otherwise(pl.lit("usage"))
    )


# --- IO edges ------------------------------------------------------------------


def read_ledger(store: Store, start: datetime, end: datetime) -> pl.LazyFrame:
    """The ledger rows whose interval starts in [start, end), from the store (StoreError if it fails)."""
    sql = f"SELECT {_READ} FROM ledger WHERE interval_start_ns >= ? AND interval_start_ns < ?"
    return store.query(sql, [to_ns(start), to_ns(end)]).lazy()


#: SQL for the line keys :func:`read_usage` can group by (the rest are plain columns of the rollups).
_KEY_SQL = {
    "line_kind": f"CASE WHEN kind = '{kinds.UNALLOCATED}' THEN 'unallocated' ELSE 'usage' END",
    "charge_day_ns": f"hour_start_ns - hour_start_ns % {DAY_NS}",
}
_HOUR_COLUMNS = ("node, gpu_index, model, profile, sharing, kind, tenant, namespace, pod, rule, gpu_seconds, energy_j, "
                 "cluster")
#: The exact columns of hour-grain rows (``ledger_hourly``'s; a ledger row's own, ``analytics/exact.py``).
_HOUR_EXACT = "gpu_ps, energy_nj, capacity_ns"
_DIRECT = ", ".join(f"'{r}'" for r in kinds.DIRECT_RULES)
#: Null when a row's GPU-seconds were not finite (no integer): the line cannot be priced.
_KNOWN_PS = "CASE WHEN count(*) = count(gpu_ps) THEN sum(gpu_ps) END"
#: ``_METRICS`` in DuckDB SQL: integer sums (HUGEINT), a filtered sum over no row is 0, as Polars gives it.
_METRICS_SQL = (
    f"{_KNOWN_PS} AS gpu_ps, "
    + "".join(f"coalesce(sum(gpu_ps) FILTER (WHERE kind = '{k}'), 0) AS {name}, " for k, name in (
        (kinds.BUSY, "busy_ps"), (kinds.ALLOCATED_IDLE, "idle_ps"),
        (kinds.UNMEASURED, "unmeasured_ps"), (kinds.UNALLOCATED, "unallocated_ps")))
    + f"coalesce(sum(gpu_ps) FILTER (WHERE kind = '{kinds.BUSY}' AND rule IN ({_DIRECT})), 0) "
    "AS direct_busy_ps, sum(energy_nj) AS energy_nj"
)
#: One share of a physical GPU interval (or GPU-hour) in 1/840: ``secs / total`` rounded half up, in integers.
_SHARE_SQL = f"CASE WHEN total > 0 THEN (secs * {2 * SLICE_UNITS} + total) // (2 * total) ELSE 0 END"


def _ledger_hour_rows(where: str) -> str:
    """Ledger rows as hour-grain rows (``hour_rows_sql``'s columns) where ``where`` holds for their hour
    (``h``): the exact integers of each row, and each GPU interval's length (integer ns) on one of its rows,
    so a physical GPU-hour's ``capacity_ns`` sums to its capacity as the rollups' does."""
    hour = f"interval_start_ns - interval_start_ns % {HOUR_NS}"
    return (f"SELECT {hour} AS hour_start_ns, {_HOUR_COLUMNS}, 1::UINTEGER AS intervals, "
            f"{exact_sql('gpu_seconds')} AS gpu_ps, {exact_sql('energy_j')} AS energy_nj, "
            "CASE WHEN row_number() OVER (PARTITION BY cluster, agent_id, boot_id, seq, gpu_index) = 1 "
            "THEN interval_end_ns - interval_start_ns ELSE 0 END AS capacity_ns "
            f"FROM ledger WHERE {where.replace('h.hour_start_ns', f'({hour})')}")


def hour_rows_sql(store: Store) -> str:
    """SQL for the hour-grain rows of [$lo, $hi) (named parameters, ns): what the bill is made of.

    Columns: ``hour_start_ns``, the rollup's unit, holder, kind and rule
    columns, ``gpu_seconds``, ``energy_j``, ``intervals`` (ledger rows summed)
    and the exact ``gpu_ps``, ``energy_nj`` and ``capacity_ns`` (summed per
    physical GPU-hour: its capacity), see ``analytics/hourly.py``.

    The hourly rollups (``ledger_hourly``), except hours pending a recompute,
    which come from the interval ledger summed to the hour; a retired month
    (its ledger gone) and hours before the interval ledger's window keep
    their rollups whatever their mark. A file no writer
    has opened since the rollups were added has only the ledger.
    """
    span = "h.hour_start_ns >= $lo AND h.hour_start_ns < $hi"
    if not all(store.has_table(t) for t in ("ledger_hourly", "ledger_hourly_pending", "ledger_retired")):
        return _ledger_hour_rows(span)
    pending = "SELECT hour_start_ns FROM ledger_hourly_pending"
    retired = ("EXISTS (SELECT 1 FROM ledger_retired r "
               "WHERE h.hour_start_ns >= r.start_ns AND h.hour_start_ns < r.end_ns)")
    if store.has_table("ledger_window"):  # before the interval ledger's window: rollups only
        retired += " OR h.hour_start_ns < (SELECT coalesce(max(kept_from_ns), -1) FROM ledger_window)"
    return (f"SELECT hour_start_ns, {_HOUR_COLUMNS}, intervals, {_HOUR_EXACT} FROM ledger_hourly h "
            f"WHERE {span} AND (hour_start_ns NOT IN ({pending}) OR {retired}) "
            f"UNION ALL {_ledger_hour_rows(f'{span} AND h.hour_start_ns IN ({pending})')}")


def usage_sql(store: Store, rows_sql: str, params: Sequence[Any] | Mapping[str, Any],
              keys: Mapping[str, str], *, capacity: pl.DataFrame | None = None,
              hour_boot: str | None = None) -> Usage:
    """:func:`usage_of` computed in DuckDB: :class:`Usage` of the ledger-shaped rows ``rows_sql`` returns.

    ``keys``: output column -> SQL expression over those rows. The same sums
    and the same per-GPU-interval capacity split as the Polars path, so
    :func:`price_usage` gives the same lines (tests/api/test_showback_sql.py);
    only the sums leave DuckDB. Each row's measures are made exact integers
    first (``analytics/exact.py``), so no sum depends on its order. Adds
    ``memory_byte_seconds`` (known sum) to the sums. ``capacity``: the
    capacity of the same rows from an earlier call (it does not depend on the keys). ``hour_boot``: rows
    with this ``boot_id`` are GPU-hours of rollups (one "interval" per node, GPU and hour): their capacity
    is their GPU-seconds summed (conservation) and rounded to the nanosecond, whatever their interval end says.
    """
    key_sql = "".join(f"{expr} AS \"{name}\", " for name, expr in keys.items())
    rows = (f"SELECT *, {exact_sql('gpu_seconds')} AS gpu_ps, {exact_sql('energy_j')} AS energy_nj, "
            f"{exact_sql('memory_gb_seconds')} AS memory_byte_seconds FROM ({rows_sql})")
    metrics = f"{_METRICS_SQL}, sum(memory_byte_seconds) AS memory_byte_seconds"
    day = f"interval_start_ns - interval_start_ns % {DAY_NS}"
    sums_sql = (f"WITH h AS ({rows}) SELECT {key_sql}model AS _model, coalesce(profile, '') AS _profile, "
                f"{day} AS _day_ns, {metrics}, list(DISTINCT sharing) AS _sharing FROM h GROUP BY ALL")
    unit = "cluster, agent_id, boot_id, seq, gpu_index"
    dt = "max(dt0) OVER u" if hour_boot is None else \
        f"CASE WHEN boot_id = '{hour_boot}' THEN (sum(secs) OVER u + 500) // 1000 ELSE max(dt0) OVER u END"
    capacity_sql = f"""
        WITH h AS ({rows}),
        g AS (SELECT {unit}, model, coalesce(profile, '') AS _profile, {day} AS _day_ns, sum(gpu_ps) AS secs,
                     max(interval_end_ns - interval_start_ns) AS dt0, sum(energy_nj) AS energy_nj FROM h GROUP BY ALL),
        w AS (SELECT *, {dt} AS dt, sum(secs) OVER u AS total,
                     row_number() OVER (PARTITION BY {unit} ORDER BY secs DESC, model, _profile) AS r
              FROM g WINDOW u AS (PARTITION BY {unit})),
        k AS (SELECT *, {_SHARE_SQL} AS k0 FROM w),
        x AS (SELECT *, CASE WHEN r = 1 THEN {SLICE_UNITS} - (sum(k0) OVER (PARTITION BY {unit}) - k0) ELSE k0 END
                     AS k FROM k)
        SELECT model, _profile, _day_ns, sum(dt::HUGEINT * k) AS units, min(k) AS min_k, sum(energy_nj) AS energy_nj
        FROM x GROUP BY ALL"""
    as_day = pl.from_epoch("_day_ns", time_unit="ns").dt.date().alias("_day")
    sums = store.query(sums_sql, params)
    sums = sums.drop("_model") if "model" in keys else sums.rename({"_model": "model"})
    if capacity is None:
        capacity = store.query(capacity_sql, params).with_columns(as_day).drop("_day_ns")
        capacity = capacity.with_columns(pl.col("units").cast(pl.Int128))
    return Usage(sums.with_columns(as_day).drop("_day_ns"), capacity)


def read_usage(store: Store, start: datetime, end: datetime, by: Sequence[str], *, policy: str = "holder") -> Usage:
    """:class:`Usage` of [start, end) summed in the store (DuckDB), from the hourly rollups.

    Memory does not grow with the fleet's size, tick or days: DuckDB streams
    the rollups (spilling past its ``memory_limit``) and only the sums leave it
    (one row per line key × model × profile × day). Every sum adds integers
    (GPU-picoseconds, nanojoules, nanoseconds: ``analytics/exact.py``), so the
    bill does not depend on how the rollups were chunked or merged, nor on
    DuckDB's parallel aggregation. A physical GPU-hour's capacity is the sum
    of its rows' ``capacity_ns`` (interval lengths from integer bounds, the
    capacity the ledger path takes per GPU interval);
    tests/analytics/test_chargeback_rollups.py checks both paths give the same file. ``policy``: who pays
    for idle (``analytics/policy.py``), applied to the rows in DuckDB.
    """
    key_sql = ", ".join(f"{_KEY_SQL.get(k, k)} AS {k}" for k in by)
    metrics = _METRICS_SQL
    day = f"hour_start_ns - hour_start_ns % {DAY_NS}"
    from gpuledger.analytics.policy import POLICIES, apply_idle_policy_sql

    rows = hour_rows_sql(store)
    if policy not in POLICIES:
        raise ValueError(f"unknown idle policy {policy!r}; choose one of {', '.join(POLICIES)}")
    # Who pays for idle moves GPU-seconds between tenants within a GPU-hour: capacity does not change.
    sums_sql = (f"WITH h AS ({apply_idle_policy_sql(rows, policy, exact=True)}) SELECT {key_sql}"
                f"{', ' if key_sql else ''}model AS _model, "
                f"coalesce(profile, '') AS _profile, {day} AS _day_ns, {metrics}, list(DISTINCT sharing) AS _sharing "
                "FROM h GROUP BY ALL")
    unit = "hour_start_ns, cluster, node, gpu_index"
    capacity_sql = f"""
        WITH h AS ({rows}),
        g AS (SELECT {unit}, model, coalesce(profile, '') AS _profile, sum(gpu_ps) AS secs,
                     sum(capacity_ns) AS cap, sum(energy_nj) AS energy_nj FROM h GROUP BY ALL),
        w AS (SELECT *, sum(secs) OVER u AS total, sum(cap) OVER u AS dt,
                     row_number() OVER (PARTITION BY {unit} ORDER BY secs DESC, model, _profile) AS r
              FROM g WINDOW u AS (PARTITION BY {unit})),
        k AS (SELECT *, {_SHARE_SQL} AS k0 FROM w),
        x AS (SELECT *, CASE WHEN r = 1 THEN {SLICE_UNITS} - (sum(k0) OVER (PARTITION BY {unit}) - k0) ELSE k0 END
                     AS k FROM k)
        SELECT model, _profile, {day} AS _day_ns, sum(dt * k) AS units, min(k) AS min_k, sum(energy_nj) AS energy_nj
        FROM x GROUP BY ALL"""
    params = {"lo": to_ns(start), "hi": to_ns(end)}
    as_day = pl.from_epoch("_day_ns", time_unit="ns").dt.date().alias("_day")
    sums = store.query(sums_sql, params)
    if "model" not in by:
        sums = sums.rename({"_model": "model"})
    else:
        sums = sums.drop("_model")
    sums = sums.with_columns(as_day).drop("_day_ns")
    # A UTC day at a time: the window functions over GPU-hours hold their input in memory (they do not spill
    # as the sums' GROUP BY does), so a month of a 1,000-GPU fleet at once would not fit a small memory_limit.
    low, high = store.query(f"SELECT min(hour_start_ns), max(hour_start_ns) FROM ({rows})", params).row(0)
    first, last = (low, high + 1) if low is not None else (to_ns(start), to_ns(end))  # the days that hold rows
    days = [(max(d, first), min(d + DAY_NS, last)) for d in range(first - first % DAY_NS, last, DAY_NS)] or [(first, last)]
    capacity = pl.concat([store.query(capacity_sql, {"lo": lo, "hi": hi}) for lo, hi in days], how="vertical_relaxed")
    capacity = capacity.with_columns(as_day).drop("_day_ns")
    return Usage(sums, capacity.with_columns(pl.col("units").cast(pl.Int128)))


def chargeback_csv(store: Store, month: str, book: PriceBook) -> str:
    """The FOCUS chargeback file of ``month`` (YYYY-MM) as text, checked to reconcile.

    A closed month is its stored file, byte for byte; an open month includes
    the correction rows for closed months (see gpuledger/analytics/closing.py).
    """
    from gpuledger.analytics import closing  # closing imports this module

    return closing.export(store, month, book).content.decode("utf-8")
