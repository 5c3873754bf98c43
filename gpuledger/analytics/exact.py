"""Exact sums: the ledger's float measures as integers of a fixed unit, so that no sum depends on its order.

A float sum's last bits depend on the order it adds in: how the attribution
job chunked the messages, in which order ``merge_hourly`` sums an hour's
partial rollup rows, how DuckDB's parallel aggregation splits a ``sum``. The
rollups and the bills (cents are rounded from these sums) therefore sum
integers: each ledger value is rounded once, on its own, to an integer of
its unit (:data:`UNITS`), and only integers are added (BIGINT per rollup
row, HUGEINT / Int128 beyond). Integer addition is associative, so any
chunking, arrival order or merge order gives the same bits.

The rounding is half away from zero of the value times the scale, both
computed in IEEE double: Polars and DuckDB give the same integer for every
value (tests/analytics/test_exact.py). A non-finite value (NaN, infinity)
has no integer: it becomes null, which the bill refuses
(``chargeback.LedgerDataError``) and energy/memory treat as unknown.

The units are fine enough that a sum of millions of rounded rows stays far
below what is written (GPU-hours and kWh to 6 decimals: 3.6 ms, 3.6 J) and
coarse enough that a rollup row (one GPU-hour) fits a BIGINT many times over.
A GPU's *capacity* is not a sum of these rounded parts (rounding each part
would let the parts of a GPU interval miss its length): it is summed from
interval bounds, integer nanoseconds (``ledger_hourly.capacity_ns``,
docs/storage.md, "Exact sums").
"""

from __future__ import annotations

import polars as pl

__all__ = ["UNITS", "exact", "exact_sql", "measure", "measure_sql"]

#: ledger measure (float) -> (exact column, integer units per unit of the measure).
UNITS: dict[str, tuple[str, int]] = {
    "gpu_seconds": ("gpu_ps", 10**12),  # GPU-picoseconds
    "energy_j": ("energy_nj", 10**9),  # nanojoules
    "memory_gb_seconds": ("memory_byte_seconds", 10**9),  # GB x s, 1 GB = 1e9 B: byte-seconds
}


def exact(measure: str) -> pl.Expr:
    """The ledger column ``measure`` as integers of its unit (Int64, null where not finite), named as its exact
    column."""
    name, scale = UNITS[measure]
    value = pl.col(measure)
    return (pl.when(value.is_finite()).then((value * float(scale)).round(0, mode="half_away_from_zero"))
            .cast(pl.Int64).alias(name))


def exact_sql(measure: str, source: str | None = None) -> str:
    """:func:`exact` in DuckDB SQL (``source``: the expression to convert, default the column ``measure``)."""
    _, scale = UNITS[measure]
    value = source or measure
    return f"CASE WHEN isfinite({value}) THEN round({value} * {scale}::DOUBLE)::BIGINT END"


def measure(name: str, column: str | None = None) -> pl.Expr:
    """An exact sum (integer column ``column``, default the exact column of ``name``) back in the measure's unit,
    as a float: a function of the integer alone, so as order-free as it.

    Computed as the integer (as a double) times the double nearest to 1/scale: Polars divides a column by a
    scalar that way (``x * (1 / y)``), DuckDB divides exactly, so both multiply to give the same bits.
    """
    exact_column, scale = UNITS[name]
    return (pl.col(column or exact_column).cast(pl.Float64) * (1 / scale)).alias(name)


def measure_sql(name: str, source: str) -> str:
    """:func:`measure` in DuckDB SQL: ``source`` (an integer expression) in the unit of ``name``."""
    _, scale = UNITS[name]
    return f"({source})::DOUBLE * {1 / scale!r}::DOUBLE"
