"""Hourly rollups equal the ledger summed per hour: after incremental runs, late
and out-of-order messages, ``--full``, and a crash between booking and the merge."""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gpuledger import wire
from gpuledger.analytics.hourly import (
    HOUR_NS,
    HOURLY_COLUMNS,
    hourly,
    refresh_hourly,
)
from gpuledger.analytics.job import run_attribution
from gpuledger.analytics.ledger import LEDGER_COLUMNS
from gpuledger.ingest.batch import decode_batch
from gpuledger.store import Store
from tests.support.factories import EPOCH_NS, make_message

MINUTE_NS = 60 * 10**9


def write(store: Store, messages: list[wire.Message]) -> None:
    store.write_arrow(decode_batch([wire.encode(m) for m in messages]).tables)


def tick(seq: int, minutes: float, **kw: object) -> wire.Message:
    """A 5-minute interval starting ``minutes`` after the epoch of the factories."""
    return make_message(seq=seq, start_ns=EPOCH_NS + int(minutes * MINUTE_NS), tick_ns=5 * MINUTE_NS, **kw)  # type: ignore[arg-type]


def rollups(store: Store) -> pl.DataFrame:
    return store.query(f"SELECT {', '.join(HOURLY_COLUMNS)} FROM ledger_hourly ORDER BY ALL")


def expected(store: Store) -> pl.DataFrame:
    """The ledger summed per hour, by the pure function (the specification)."""
    frame = hourly(store.query("SELECT * FROM ledger").lazy()).collect()
    return frame.sort(HOURLY_COLUMNS, nulls_last=False)


def assert_rollups_match(store: Store) -> None:
    got = rollups(store)
    want = expected(store)
    assert got.height == want.height > 0
    assert_frame_equal(got, want.select(got.columns), check_dtypes=False, check_exact=True)
    assert store.count("ledger_hourly_pending") == 0
    # The headline invariant in plain SQL: per hour, GPU-seconds and interval counts agree.
    diff = store.query(
        f"SELECT l.h, l.s, r.s AS rs, l.n, r.n AS rn FROM "
        f"(SELECT interval_start_ns - interval_start_ns % {HOUR_NS} AS h, sum(gpu_seconds) s, count(*) n "
        "FROM ledger GROUP BY h) l FULL JOIN (SELECT hour_start_ns AS h, sum(gpu_seconds) s, sum(intervals) n "
        "FROM ledger_hourly GROUP BY h) r USING (h) WHERE abs(l.s - r.s) > 1e-6 OR l.n <> r.n OR l.s IS NULL OR r.s IS NULL")
    assert diff.is_empty(), diff
    # Capacity, exactly: per physical GPU-hour the rollups' capacity_ns is its GPU intervals' lengths (integer
    # bounds, each interval once), carried by one row.
    intervals = store.query(
        f"SELECT h, node, gpu_index, sum(dt) AS c FROM (SELECT DISTINCT agent_id, boot_id, seq, gpu_index, node, "
        f"interval_start_ns - interval_start_ns % {HOUR_NS} AS h, interval_end_ns - interval_start_ns AS dt "
        "FROM ledger) GROUP BY ALL ORDER BY ALL")
    carried = store.query("SELECT hour_start_ns AS h, node, gpu_index, sum(capacity_ns) AS c, "
                          "count(*) FILTER (WHERE capacity_ns <> 0) AS carriers FROM ledger_hourly GROUP BY ALL "
                          "ORDER BY ALL")
    assert carried.drop("carriers").equals(intervals) and set(carried["carriers"]) == {1}


def test_the_pure_rollup_sums_per_hour_and_keeps_unknown_energy_null() -> None:
    base = {c: None for c in LEDGER_COLUMNS}
    key = {"node": "n0", "gpu_uuid": "GPU-0", "gpu_index": 0, "mig_index": -1, "model": "H100", "profile": None,
           "sharing": "exclusive", "kind": "busy", "tenant": "nlp", "namespace": "nlp", "pod": "p", "rule": "r",
           "cluster": "default"}
    rows = [
        {**base, **key, "interval_start_ns": 0, "gpu_seconds": 10.0, "energy_j": 100.0, "memory_gb_seconds": None},
        {**base, **key, "interval_start_ns": HOUR_NS - 1, "gpu_seconds": 10.0, "energy_j": None, "memory_gb_seconds": None},
        {**base, **key, "interval_start_ns": HOUR_NS, "gpu_seconds": 5.0, "energy_j": None, "memory_gb_seconds": None},
    ]
    schema = {"interval_start_ns": pl.Int64, "gpu_index": pl.Int64, "mig_index": pl.Int64, "gpu_seconds": pl.Float64,
              "energy_j": pl.Float64, "memory_gb_seconds": pl.Float64}
    out = hourly(pl.DataFrame(rows, schema_overrides=schema).lazy()).collect()
    assert out.select("hour_start_ns", "gpu_seconds", "energy_j", "energy_intervals", "memory_gb_seconds",
                      "intervals").rows() == [
        (0, 20.0, 100.0, 1, None, 2),  # the interval starting a nanosecond before the hour ends belongs to it
        (HOUR_NS, 5.0, None, 0, None, 1),  # energy unknown: null, not 0
    ]


def test_incremental_runs_keep_rollups_equal_to_the_ledger() -> None:
    store = Store()
    write(store, [tick(i, 5 * i) for i in range(30)])  # 2.5 hours
    run_attribution(store, chunk_messages=7)
    assert_rollups_match(store)
    write(store, [tick(i, 5 * i) for i in range(30, 40)])
    run_attribution(store)
    assert_rollups_match(store)
    assert rollups(store)["hour_start_ns"].n_unique() == 4


def test_a_late_replay_recomputes_exactly_the_hours_it_touches() -> None:
    store = Store()
    write(store, [tick(i, 5 * i) for i in range(36)])  # hours 0, 1, 2
    run_attribution(store)
    untouched = store.query(f"SELECT * FROM ledger_hourly WHERE hour_start_ns >= {EPOCH_NS + HOUR_NS} ORDER BY ALL")
    # An agent replays its spool hours later: another node's intervals in hour 0, out of order.
    write(store, [tick(100 + i, 55 - 5 * i, node="n1", agent_id="late") for i in range(6)])
    run_attribution(store)
    assert_rollups_match(store)
    assert store.query("SELECT DISTINCT hour_start_ns FROM ledger_hourly WHERE node = 'n1'").rows() == [(EPOCH_NS,)]
    assert_frame_equal(untouched, store.query(f"SELECT * FROM ledger_hourly WHERE hour_start_ns >= "
                                              f"{EPOCH_NS + HOUR_NS} ORDER BY ALL"))


def test_full_reattribution_rebuilds_the_rollups() -> None:
    store = Store()
    write(store, [tick(i, 5 * i, namespace="team-a") for i in range(24)])
    run_attribution(store)
    # Someone edits a rollup by hand, and the tenancy changes: --full puts both right.
    store.execute("UPDATE ledger_hourly SET gpu_seconds = gpu_seconds * 2")
    from gpuledger.analytics.tenancy import TenancyRules

    run_attribution(store, TenancyRules(overrides={"team-a": "vision"}), full=True)
    assert store.query("SELECT DISTINCT tenant FROM ledger_hourly WHERE kind = 'busy'").rows() == [("vision",)]
    assert_rollups_match(store)


class Killed(Exception):
    pass


def test_a_crash_between_booking_and_refresh_is_repaired_by_the_next_run() -> None:
    store = Store()
    write(store, [tick(i, 5 * i) for i in range(12)])
    run_attribution(store)
    write(store, [tick(50 + i, 7 + 5 * i, node="n1", agent_id="late") for i in range(3)])

    def die(done: int, total: int) -> None:  # called after a chunk's transaction commits
        raise Killed

    with pytest.raises(Killed):
        run_attribution(store, progress=die)
    # Booked in one transaction with the chunk: the rollups already hold n1's intervals, as partial rows
    # of an hour listed for a merge (readers sum them anyway).
    assert store.count("ledger_hourly_unmerged") == 1
    assert store.query("SELECT count(*) AS n FROM ledger WHERE node = 'n1'")["n"][0] > 0
    assert store.query("SELECT count(*) AS n FROM ledger_hourly WHERE node = 'n1'")["n"][0] > 0
    assert run_attribution(store).messages == 0  # nothing new to book; the listed hour is merged
    assert store.count("ledger_hourly_unmerged") == 0
    assert_rollups_match(store)


def test_refresh_of_an_hour_with_many_rows_sums_in_node_buckets_to_the_same_rows() -> None:
    store = Store()
    write(store, [tick(i, 5 * i % 60, node=f"n{i % 5}", agent_id=f"a{i % 5}") for i in range(30)])
    run_attribution(store)
    whole = rollups(store)
    refresh_hourly(store, [EPOCH_NS], max_rows=7)  # forces several buckets for the hour
    assert_frame_equal(rollups(store), whole)
