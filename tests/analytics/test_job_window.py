"""Rollups are the product; the interval ledger is a recent window; the kernel runs on both cores.

- The job books each chunk's hourly sums with the chunk (no pass over stored
  ledger rows): the rollups equal the ledger summed per hour.
- With a ledger window, older interval rows are not kept, yet the bill (read
  from the rollups) is the same file, byte for byte, and ``explain`` of an
  older hour recomputes its interval rows from the raw samples -- the same
  rows the job booked.
- A process pool gives the same ledger and rollups as one process.
"""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gpuledger import wire
from gpuledger.analytics import closing
from gpuledger.analytics.explain import explain_command
from gpuledger.analytics.hourly import HOURLY_COLUMNS, hourly
from gpuledger.analytics.job import RecomputeError, ledger_window_start, recompute_rows, run_attribution
from gpuledger.analytics.ledger import LEDGER_COLUMNS
from gpuledger.analytics.prices import default_price_book
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.sim.accuracy import simulate
from gpuledger.sim.fleetsim import demo_fleet
from gpuledger.store import Store
from gpuledger.timeutil import HOUR_NS

HORIZON_S = 4 * 3600.0



def _copy_raw(src: Store, path: str) -> Store:
    """A file with ``src``'s raw samples only (nothing attributed)."""
    dst = Store(path)
    for table in (*wire.RECORD_TABLES, "messages", "pods"):
        dst.append(table, src.query(f"SELECT * FROM {table}"))
    return dst


def _sorted_ledger(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(LEDGER_COLUMNS).with_columns(pl.col(pl.Enum).cast(pl.String)).sort(
        ["agent_id", "boot_id", "seq", "gpu_index", "mig_index", "kind", "rule", "tenant", "pod"], nulls_last=True)


@pytest.fixture(scope="module")
def fleet_store() -> Store:
    """Four hours of an 8-GPU node at a 60 s tick, attributed by one process, every interval kept."""
    return simulate(demo_fleet(1, 8, seed=4, horizon_s=HORIZON_S), tick_s=60.0, horizon_s=HORIZON_S)


def test_the_job_books_rollups_equal_to_the_ledger_summed_per_hour(fleet_store: Store) -> None:
    got = fleet_store.query(f"SELECT {', '.join(HOURLY_COLUMNS)} FROM ledger_hourly ORDER BY ALL")
    want = hourly(fleet_store.query("SELECT * FROM ledger").lazy()).collect().sort(HOURLY_COLUMNS, nulls_last=True)
    assert got.height == want.height > 0
    assert_frame_equal(got, want.select(got.columns), check_dtypes=False, check_exact=True)
    assert fleet_store.count("ledger_hourly_unmerged") == 0


def test_a_ledger_window_keeps_recent_intervals_and_the_bill_and_explain_unchanged(fleet_store: Store,
                                                                                   tmp_path) -> None:
    store = _copy_raw(fleet_store, str(tmp_path / "w.duckdb"))
    result = run_attribution(store, ledger_window_s=3600.0, chunk_messages=40)
    kept_from = ledger_window_start(store)
    newest = fleet_store.scalar("SELECT max(interval_start_ns) FROM messages")
    assert kept_from is not None and kept_from % HOUR_NS == 0 and kept_from <= newest - 3600 * 10**9
    assert store.scalar("SELECT min(interval_start_ns) FROM ledger") >= kept_from
    assert 0 < result.ledger_rows_kept < result.ledger_rows == fleet_store.count("ledger")
    # The bill is made from the rollups: the same file as with every interval kept.
    month = fleet_store.query("SELECT strftime(make_timestamp(min(interval_start_ns) // 1000), '%Y-%m') AS m "
                              "FROM ledger")["m"][0]
    book = default_price_book()
    assert closing.export(store, month, book).content == closing.export(fleet_store, month, book).content
    # An older hour's interval rows, recomputed from the raw samples, are the rows the job booked.
    first = fleet_store.scalar("SELECT min(interval_start_ns) FROM ledger")
    hour = first - first % HOUR_NS
    stored = fleet_store.query("SELECT * FROM ledger WHERE interval_start_ns >= ? AND interval_start_ns < ?",
                               [hour, hour + HOUR_NS])
    again = recompute_rows(store, hour, hour + HOUR_NS, TenancyRules())
    assert stored.height > 0
    assert_frame_equal(_sorted_ledger(again), _sorted_ledger(stored))
    store.close()
    full_path = tmp_path / "full.duckdb"
    full = _copy_raw(fleet_store, str(full_path))
    run_attribution(full)
    full.close()
    tenant = fleet_store.query("SELECT tenant FROM ledger WHERE kind = 'busy' LIMIT 1")["tenant"][0]
    windowed = explain_command(str(tmp_path / "w.duckdb"), tenant, None, None, "csv").splitlines()
    whole = explain_command(str(full_path), tenant, None, None, "csv").splitlines()
    assert len(windowed) == len(whole) > 1
    for a, b in zip(windowed, whole, strict=True):  # the same rows; sums equal up to float summation order
        for x, y in zip(a.split(","), b.split(","), strict=True):
            assert x == y or float(x) == pytest.approx(float(y), rel=1e-12)


def test_recompute_refuses_other_tenancy_rules_and_missing_raw_samples(fleet_store: Store, tmp_path) -> None:
    store = _copy_raw(fleet_store, str(tmp_path / "r.duckdb"))
    run_attribution(store, ledger_window_s=3600.0)
    first = store.scalar("SELECT min(hour_start_ns) FROM ledger_hourly")
    with pytest.raises(RecomputeError, match="tenancy rules"):
        recompute_rows(store, first, first + HOUR_NS, TenancyRules(version="2026-12-01", overrides={"x": "y"}))
    store.execute("DELETE FROM messages WHERE interval_start_ns < ?", [first + HOUR_NS])  # retention took them
    with pytest.raises(RecomputeError, match="no longer stored"):
        recompute_rows(store, first, first + HOUR_NS, TenancyRules())
    tenant = store.query("SELECT tenant FROM ledger_hourly WHERE hour_start_ns = ? AND kind = 'busy' LIMIT 1",
                         [first])["tenant"][0]
    store.close()
    text = explain_command(str(tmp_path / "r.duckdb"), tenant, None, None)
    assert "not listed: 1 hour(s) of this tenant before the interval ledger's window" in text


@pytest.mark.slow
def test_a_process_pool_books_what_one_process_books(fleet_store: Store, tmp_path) -> None:
    store = _copy_raw(fleet_store, str(tmp_path / "p.duckdb"))
    result = run_attribution(store, workers=2, chunk_messages=25)
    assert result.messages == fleet_store.count("messages") > 2 * 25
    assert_frame_equal(_sorted_ledger(store.query("SELECT * FROM ledger")),
                       _sorted_ledger(fleet_store.query("SELECT * FROM ledger")))
    rollups = f"SELECT {', '.join(HOURLY_COLUMNS)} FROM ledger_hourly ORDER BY ALL"
    assert_frame_equal(store.query(rollups), fleet_store.query(rollups), check_exact=True)


def test_the_ledger_is_bit_identical_whatever_the_chunking_and_arrival_order(fleet_store: Store, tmp_path) -> None:
    """Each message's rows come from that message alone, in a fixed row order: re-runs after a crash (other
    chunk boundaries) or messages stored in another order book the same bits (issue 15)."""
    want = _sorted_ledger(fleet_store.query("SELECT * FROM ledger"))
    for chunk, order in ((7, "seq"), (13, "hash(agent_id, seq)")):
        store = _copy_raw(fleet_store, str(tmp_path / f"b{chunk}.duckdb"))
        store.execute(f"CREATE OR REPLACE TABLE messages AS SELECT * FROM messages ORDER BY {order} DESC")
        run_attribution(store, chunk_messages=chunk)
        got = _sorted_ledger(store.query("SELECT * FROM ledger"))
        assert_frame_equal(got, want, check_exact=True)


def test_rollups_and_the_bill_are_bit_identical_whatever_the_chunking_and_arrival_order(fleet_store: Store,
                                                                                        tmp_path) -> None:
    """The rollups sum exact integers (GPU-picoseconds, nanojoules, byte-seconds, capacity in ns), so partial
    sums merged in any order, chunked anyhow, give the same bits, and so does the bill (issue 15)."""
    rollups = "SELECT * FROM ledger_hourly ORDER BY ALL"
    want = fleet_store.query(rollups)
    month = fleet_store.query("SELECT strftime(make_timestamp(min(interval_start_ns) // 1000), '%Y-%m') AS m "
                              "FROM ledger")["m"][0]
    book = default_price_book()
    bill = closing.export(fleet_store, month, book).content
    for chunk, order in ((7, "seq"), (13, "hash(agent_id, seq)"), (29, "hash(seq) % 5, seq")):
        store = _copy_raw(fleet_store, str(tmp_path / f"r{chunk}.duckdb"))
        store.execute(f"CREATE OR REPLACE TABLE messages AS SELECT * FROM messages ORDER BY {order} DESC")
        run_attribution(store, chunk_messages=chunk)
        assert_frame_equal(store.query(rollups), want, check_exact=True)
        assert closing.export(store, month, book).content == bill
        store.close()
