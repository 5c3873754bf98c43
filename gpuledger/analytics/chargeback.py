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

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

import polars as pl

from gpuledger.analytics import kinds
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
    "attach_prices",
    "chargeback_csv",
    "chargeback_lines",
    "costed_lines",
    "monthly_totals",
    "pools",
    "read_ledger",
    "showback",
]

#: Ledger columns a showback may group by.
GROUPABLE = ("tenant", "namespace", "model", "node", "sharing", "profile")
#: Keys of one chargeback line (before the price entry splits it).
LINE_KEYS = ("tenant", "model", "profile", "line_kind")
#: Units of one physical GPU interval when MIG slices fall into different pools.
SLICE_UNITS = 840  # lcm(1..8): 1/7 and 1/8 slices are whole units
#: Charge period granularities of the file: one row per line per month, or per UTC day.
CHARGE_PERIODS = ("month", "day")
J_PER_KWH = 3_600_000
_GPU_INTERVAL = ["agent_id", "boot_id", "seq", "gpu_index"]
#: Ledger columns pricing reads (not pod names or memory).
_READ = ("agent_id, boot_id, seq, node, interval_start_ns, interval_end_ns, gpu_index, model, profile, "
         "sharing, kind, tenant, namespace, rule, gpu_seconds, energy_j")
_METRICS = {
    "gpu_seconds": pl.col("gpu_seconds").sum(),
    "busy_seconds": pl.col("gpu_seconds").filter(pl.col("kind") == kinds.BUSY).sum(),
    "idle_seconds": pl.col("gpu_seconds").filter(pl.col("kind") == kinds.ALLOCATED_IDLE).sum(),
    "unmeasured_seconds": pl.col("gpu_seconds").filter(pl.col("kind") == kinds.UNMEASURED).sum(),
    "unallocated_seconds": pl.col("gpu_seconds").filter(pl.col("kind") == kinds.UNALLOCATED).sum(),
    "direct_busy_seconds": pl.col("gpu_seconds")
    .filter((pl.col("kind") == kinds.BUSY) & pl.col("rule").is_in(list(kinds.DIRECT_RULES)))
    .sum(),
    # Null when no row of the line measured energy: missing is not zero.
    "energy_j": pl.when(pl.col("energy_j").is_not_null().any()).then(pl.col("energy_j").sum()),
    "energy_measured_seconds": pl.col("gpu_seconds").filter(pl.col("energy_j").is_not_null()).sum(),
}


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


def attach_prices(ledger: pl.LazyFrame, book: PriceBook) -> tuple[pl.LazyFrame, dict[str, Price]]:
    """Add ``entry_id`` (the price entry of each row) and return the prices by entry id."""
    ledger = ledger.with_columns(
        _day=pl.from_epoch("interval_start_ns", time_unit="ns").dt.date(),
        _profile=pl.col("profile").fill_null(""),
    )
    keys = ledger.select("model", "_profile", "_day").unique().collect()
    prices: dict[str, Price] = {}
    entry_ids: list[str] = []
    for model, profile, day in keys.iter_rows():
        price = book.price_for(model, profile or None, day)
        prices[price.entry_id] = price
        entry_ids.append(price.entry_id)
    lookup = keys.with_columns(entry_id=pl.Series(entry_ids, dtype=pl.String)).lazy()
    priced = ledger.join(lookup, on=["model", "_profile", "_day"], how="left").drop("_day", "_profile")
    return priced, prices


def pools(priced: pl.LazyFrame, prices: dict[str, Price], quantum: Decimal) -> PoolMap:
    """Capacity and its cost per (model, entry_id), from integer interval nanoseconds."""
    per = (
        priced.group_by([*_GPU_INTERVAL, "model", "entry_id"])
        .agg(secs=pl.col("gpu_seconds").sum(), dt=(pl.col("interval_end_ns") - pl.col("interval_start_ns")).max(),
             energy=pl.col("energy_j").sum(), measured=pl.col("energy_j").is_not_null().any())
        .with_columns(total=pl.col("secs").sum().over(_GPU_INTERVAL), dt=pl.col("dt").max().over(_GPU_INTERVAL))
        .with_columns(k=(pl.col("secs") / pl.col("total") * SLICE_UNITS).fill_nan(0).round().cast(pl.Int64))
        .sort([*_GPU_INTERVAL, "secs", "model", "entry_id"], descending=[False] * 4 + [True, False, False])
        .with_columns(first=pl.int_range(pl.len()).over(_GPU_INTERVAL) == 0)
        .with_columns(k=pl.when("first").then(SLICE_UNITS - (pl.col("k").sum().over(_GPU_INTERVAL) - pl.col("k")))
                      .otherwise("k"))
    )
    sums = (
        per.group_by("model", "entry_id")
        .agg(units=(pl.col("dt").cast(pl.Int128) * pl.col("k")).sum(), min_k=pl.col("k").min(),
             energy=pl.when(pl.col("measured").any()).then(pl.col("energy").filter("measured").sum()))
        .collect()
    )
    out: PoolMap = {}
    for model, entry_id, units, min_k, energy in sums.sort("model", "entry_id").iter_rows():
        if min_k < 0:
            raise ReconciliationError(f"negative slice share in pool {model}/{entry_id}")
        price = prices[entry_id]
        capacity = Fraction(int(units), SLICE_UNITS)
        cost = quantize_fraction(capacity / HOUR_NS * Fraction(price.per_gpu_hour), quantum)
        e_cost = None
        if price.energy_per_kwh is not None and energy is not None:
            e_cost = quantize_fraction(Fraction(energy) / J_PER_KWH * Fraction(price.energy_per_kwh), quantum)
        out[(model, entry_id)] = Pool(model, price, capacity, cost, energy, e_cost)
    return out


def costed_lines(ledger: pl.LazyFrame, book: PriceBook, by: Sequence[str]) -> tuple[pl.DataFrame, PoolMap]:
    """Metrics and cost per ``by`` × model × price entry; the pools they came from.

    Columns: the keys, ``entry_id``, the ``_METRICS`` (seconds, joules) and
    ``capacity_cost`` / ``energy_cost`` (Decimal; energy null when not charged).
    """
    ledger = ledger.with_columns(energy_j=pl.col("energy_j").fill_nan(None))  # NaN energy: unmeasured
    priced, prices = attach_prices(_with_line_kind(ledger), book)
    pool_map = pools(priced, prices, book.quantum)
    keys = list(dict.fromkeys([*by, "model", "entry_id"]))
    lines = (priced.group_by(keys).agg(**_METRICS, sharing_modes=pl.col("sharing").unique().sort().str.join(","))
             .sort(keys, nulls_last=True).collect())
    bad = lines.filter(pl.col("gpu_seconds").is_nan() | (pl.col("gpu_seconds") < 0))
    if bad.height:
        raise LedgerDataError(f"{bad.height} charge line(s) have NaN or negative GPU-seconds, "
                              f"e.g. {bad.select(keys).row(0)}")
    cap_cost: list[Decimal | None] = [None] * lines.height
    e_cost: list[Decimal | None] = [None] * lines.height
    index = lines.with_row_index("_i").partition_by("model", "entry_id", as_dict=True)
    for (model, entry_id), part in sorted(index.items()):
        pool = pool_map[(str(model), str(entry_id))]
        rows = part["_i"].to_list()
        # Weights rounded to 1 µs / 1 mJ: float summation noise must not decide who gets a cent.
        weights = [round(s, 6) for s in part["gpu_seconds"].to_list()]
        for i, amount in zip(rows, allocate(pool.capacity_cost, weights, book.quantum)):
            cap_cost[i] = amount
        if pool.energy_cost is not None:
            weights = [round(e or 0.0, 3) for e in part["energy_j"].to_list()]
            for i, amount, e in zip(rows, allocate(pool.energy_cost, weights, book.quantum), part["energy_j"]):
                e_cost[i] = amount if e is not None else None
    scale = max(0, -int(book.quantum.as_tuple().exponent))
    money = pl.Decimal(38, scale)
    return lines.with_columns(capacity_cost=pl.Series(cap_cost, dtype=money),
                              energy_cost=pl.Series(e_cost, dtype=money)), pool_map


def chargeback_lines(ledger: pl.LazyFrame, book: PriceBook, charge_period: str = "month",
                     ) -> tuple[pl.DataFrame, PoolMap]:
    """One line per tenant × model × MIG profile × kind of line × price entry (× UTC day).

    ``line_kind`` is ``unallocated`` for the platform's idle capacity, else ``usage``.
    With ``charge_period="day"`` lines are also split by ``charge_day_ns`` (the
    UTC midnight, ns, of the day each interval starts); pools stay monthly, so
    the month's total is the same at either granularity.
    """
    if charge_period not in CHARGE_PERIODS:
        raise ValueError(f"charge period must be one of {CHARGE_PERIODS}, got {charge_period!r}")
    if charge_period == "day":
        ledger = ledger.with_columns(charge_day_ns=pl.col("interval_start_ns") - pl.col("interval_start_ns") % DAY_NS)
        return costed_lines(ledger, book, [*LINE_KEYS, "charge_day_ns"])
    return costed_lines(ledger, book, LINE_KEYS)


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
    metric_sums = [pl.col(m).sum() for m in _METRICS if m != "energy_j"]
    return (
        lines.group_by(list(by))
        .agg(*metric_sums, energy_j=pl.when(pl.col("energy_j").is_not_null().any()).then(pl.col("energy_j").sum()),
             capacity_cost=pl.col("capacity_cost").sum(),
             energy_cost=pl.when(pl.col("energy_cost").is_not_null().any()).then(pl.col("energy_cost").sum()))
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


def chargeback_csv(store: Store, month: str, book: PriceBook) -> str:
    """The FOCUS chargeback file of ``month`` (YYYY-MM) as text, checked to reconcile.

    A closed month is its stored file, byte for byte; an open month includes
    the correction rows for closed months (see gpuledger/analytics/closing.py).
    """
    from gpuledger.analytics import closing  # closing imports this module

    return closing.export(store, month, book).content.decode("utf-8")
