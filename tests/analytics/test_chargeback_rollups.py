"""The bill from the hourly rollups (DuckDB sums, bounded memory) is the bill from the interval ledger.

Exports, closes and reconciliation read ``ledger_hourly`` through
``chargeback.read_usage``; the interval-grain path (``chargeback.usage_of``)
stays for the API's cut hours and for tests. On simulated fleets -- every
sharing mode, MIG with per-profile prices, agent quirks, an hour boundary
inside the run -- both give the same file, byte for byte.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gpuledger.analytics import chargeback as cb
from gpuledger.analytics.focus import ExportContext, charges, csv_bytes
from gpuledger.analytics.hourly import mark_hours
from gpuledger.analytics.prices import default_price_book, parse_price_book
from gpuledger.sim import scenarios as simscenarios
from gpuledger.sim.accuracy import simulate
from gpuledger.sim.fleetsim import FleetSim, demo_fleet
from gpuledger.sim.spec import Quirks
from gpuledger.store import Store
from gpuledger.timeutil import month_bounds

#: Per-profile MIG prices and charged energy: one GPU's slices fall into different pools.
SPLIT_BOOK = parse_price_book("""
currency = "USD"
[[price]]
id = "h100"
model = "NVIDIA H100 80GB HBM3"
per_gpu_hour = "3.10"
effective_from = "2020-01-01"
energy_per_kwh = "0.21"
[[price]]
id = "h100-3g"
model = "NVIDIA H100 80GB HBM3"
profile = "3g.40gb"
per_gpu_hour = "1.45"
effective_from = "2020-01-01"
""")


def _file(source: Store | object, month: str, book: object, period: str) -> bytes:
    rows, totals = charges(source, book, month, ExportContext(charge_period=period))  # type: ignore[arg-type]
    assert totals.reconciled
    return csv_bytes(rows)


@pytest.mark.parametrize("build", [
    lambda: FleetSim(simscenarios.timeslice(3, 5400.0), seed=3),
    lambda: FleetSim(simscenarios.mps(5, 5400.0, clients_hidden=True), seed=5),
    lambda: FleetSim(simscenarios.mig_mix(6, 5400.0), seed=6),
    lambda: demo_fleet(1, 8, seed=9, horizon_s=5400.0, quirks=Quirks(
        missing_sample_rate=0.05, process_noise=0.2, silent_process=True, pid_reuse=True, energy_reset=True,
        gpu_lost=True)),
], ids=["timeslice", "mps-hidden", "mig", "demo-all-quirks-gpu-lost"])
def test_the_bill_from_rollups_is_the_bill_from_the_ledger(build) -> None:
    store = simulate(build(), tick_s=30.0, horizon_s=5400.0)  # crosses at least one hour boundary
    month = store.query("SELECT strftime(make_timestamp(min(interval_start_ns) // 1000), '%Y-%m') AS m "
                        "FROM ledger")["m"][0]
    start, end = month_bounds(month)
    assert store.count("ledger_hourly") and not store.count("ledger_hourly_pending")
    for book in (default_price_book(), SPLIT_BOOK):
        for period in ("month", "day"):
            from_ledger = _file(cb.read_ledger(store, start, end), month, book, period)
            assert _file(store, month, book, period) == from_ledger
    # Pending hours are read from the ledger (a crash between booking and rollup): same file again.
    from_ledger = _file(cb.read_ledger(store, start, end), month, SPLIT_BOOK, "month")
    store.execute("DELETE FROM ledger_hourly WHERE hour_start_ns = (SELECT min(hour_start_ns) FROM ledger_hourly)")
    assert _file(store, month, SPLIT_BOOK, "month") != from_ledger  # the stale rollup shows ...
    mark_hours(store, store.query("SELECT min(interval_start_ns) AS t FROM ledger")["t"].to_list())
    assert _file(store, month, SPLIT_BOOK, "month") == from_ledger  # ... until its hour is marked pending


def test_usage_leaves_duckdb_as_sums_not_rows() -> None:
    store = simulate(demo_fleet(1, 8, seed=2, horizon_s=1800.0), tick_s=10.0, horizon_s=1800.0)
    start, end = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    usage = cb.read_usage(store, start, end, cb.line_keys("month"))
    assert store.count("ledger") > 20 * usage.sums.height
    assert usage.capacity.height == store.query("SELECT DISTINCT model, profile FROM ledger").height


def test_usage_summed_in_duckdb_prices_like_the_polars_path() -> None:
    store = simulate(FleetSim(simscenarios.mig_mix(6, 5400.0), seed=6), tick_s=60.0, horizon_s=5400.0)
    day = "epoch_ms(date_trunc('hour', make_timestamp(interval_start_ns // 1000)))"
    keys = {"time": day, "tenant": "tenant", "namespace": "namespace", "kind": "kind"}
    rows = store.query("SELECT * FROM ledger").lazy().with_columns(
        time=pl.from_epoch("interval_start_ns", time_unit="ns").dt.truncate("1h").dt.epoch("ms"))
    book = SPLIT_BOOK
    want, want_pools = cb.price_usage(cb.usage_of(rows, list(keys)), book, list(keys))
    got, got_pools = cb.price_usage(cb.usage_sql(store, "SELECT * FROM ledger", [], keys), book, list(keys))
    assert got_pools.keys() == want_pools.keys()
    for key, pool in want_pools.items():  # exact capacity and money; joules up to float summation order
        other = got_pools[key]
        assert (other.capacity_ns, other.capacity_cost, other.energy_cost) == \
            (pool.capacity_ns, pool.capacity_cost, pool.energy_cost)
        assert other.energy_j == pytest.approx(pool.energy_j, rel=1e-12)
    assert_frame_equal(got.drop("memory_gb_seconds"), want, check_dtypes=False, rel_tol=1e-12)
    assert got["memory_gb_seconds"].null_count() < got.height


def test_a_month_closes_to_the_same_file_under_a_small_duckdb_memory_limit(tmp_path) -> None:
    from gpuledger.analytics import closing
    from gpuledger.store import configure

    store = simulate(demo_fleet(1, 8, seed=5, horizon_s=5400.0), tick_s=30.0, horizon_s=5400.0)
    month = store.query("SELECT strftime(make_timestamp(min(interval_start_ns) // 1000), '%Y-%m') AS m "
                        "FROM ledger")["m"][0]
    path = tmp_path / "m.duckdb"
    store.execute(f"ATTACH '{path}' AS f; COPY FROM DATABASE memory TO f; DETACH f")
    want = closing.export(store, month, default_price_book()).content
    try:
        configure(memory_limit="16MB")
        with Store(path, read_only=True) as small:
            assert small.scalar("SELECT current_setting('memory_limit')") in ("16.0 MiB", "15.2 MiB", "16.0 MB")
            assert closing.export(small, month, default_price_book()).content == want
    finally:
        configure(memory_limit=None)


@pytest.mark.parametrize("policy", ["share_unallocated", "platform"])
def test_who_pays_for_idle_is_applied_in_duckdb_as_in_polars(policy: str) -> None:
    store = simulate(FleetSim(simscenarios.timeslice(3, 5400.0), seed=3), tick_s=60.0, horizon_s=5400.0)
    month = store.query("SELECT strftime(make_timestamp(min(interval_start_ns) // 1000), '%Y-%m') AS m "
                        "FROM ledger")["m"][0]
    start, end = month_bounds(month)
    for period in ("month", "day"):
        ctx = ExportContext(charge_period=period, idle_policy=policy)  # type: ignore[arg-type]
        rows, totals = charges(store, SPLIT_BOOK, month, ctx)
        want, want_totals = charges(cb.read_ledger(store, start, end), SPLIT_BOOK, month, ctx)
        assert csv_bytes(rows) == csv_bytes(want) and totals == want_totals
        holder, _ = charges(store, SPLIT_BOOK, month, ExportContext(charge_period=period))
        assert csv_bytes(rows) != csv_bytes(holder)  # the policy moved money


def test_the_bills_sums_do_not_depend_on_the_order_of_the_rollup_rows() -> None:
    """DuckDB adds in whatever order it scans (and splits a sum across threads): the bill's sums are of
    integers, so storing the same rollup rows in another order gives the same bits (issue 15)."""
    store = simulate(demo_fleet(1, 8, seed=9, horizon_s=5400.0), tick_s=30.0, horizon_s=5400.0)
    start, end = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    keys = cb.line_keys("day")

    def usage() -> tuple[pl.DataFrame, pl.DataFrame]:
        got = cb.read_usage(store, start, end, keys)
        sums = got.sums.with_columns(pl.col("_sharing").list.sort())
        return sums.sort([*keys, "_profile", "_day"]), got.capacity.sort("model", "_profile", "_day")

    want = usage()
    for seed in (1, 2, 3):
        store.execute(f"CREATE OR REPLACE TABLE ledger_hourly AS SELECT * FROM ledger_hourly "
                      f"ORDER BY hash(rowid * {seed} + {seed})")
        got = usage()
        assert_frame_equal(got[0], want[0], check_exact=True)
        assert_frame_equal(got[1], want[1], check_exact=True)
