"""Attribution as shards (hour x node group): the ledger the job books, rollups byte-identical however the
shards are computed or re-run, and late data re-running only the shards it falls in."""

from __future__ import annotations

import hashlib

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gpuledger.analytics.hourly import HOURLY_COLUMNS, hourly
from gpuledger.analytics.ledger import LEDGER_COLUMNS
from gpuledger.analytics.shards import ProcessPool, Shard, ShardError, node_group, run_shards, shard_rollups
from gpuledger.store import Store
from gpuledger.timeutil import HOUR_NS
from tests.support.shards import GROUPS, add_raw, copy_raw, fleet, ledger, rollups


@pytest.fixture(scope="module")
def fleet_store() -> Store:
    return fleet()


@pytest.fixture(scope="module")
def sharded(fleet_store: Store, tmp_path_factory) -> Store:
    """The fleet's raw samples attributed by shard, in this process."""
    store = copy_raw(fleet_store, str(tmp_path_factory.mktemp("s") / "one.duckdb"))
    run_shards(store, groups=GROUPS)
    return store


def test_node_groups_are_a_stable_well_mixed_hash_of_the_name() -> None:
    # BLAKE2b: the same on every machine and version (Python's hash() is salted per process, DuckDB's may change)
    names = [f"gpu-node-{i}" for i in range(8)]
    assert [node_group(n, 1 << 62) for n in names] == [
        int.from_bytes(hashlib.blake2b(n.encode(), digest_size=8).digest(), "big") % (1 << 62) for n in names]
    assert {node_group(n, 3) for n in names} == {0, 1, 2}  # names one digit apart spread over the groups
    with pytest.raises(ValueError, match="at least 1"):
        node_group("n", 0)


@pytest.mark.slow
def test_shards_book_the_ledger_the_job_books_and_rollups_that_sum_it(fleet_store: Store, sharded: Store) -> None:
    assert fleet_store.query("SELECT count(DISTINCT sharing) FROM ledger").item() >= 5  # time-slicing, MIG, MPS...
    assert_frame_equal(ledger(sharded), ledger(fleet_store), check_exact=True)
    got = rollups(sharded)
    assert_frame_equal(got, hourly(ledger(sharded).lazy()).collect().sort(HOURLY_COLUMNS, nulls_last=False),
                       check_dtypes=False, check_exact=True)
    assert_frame_equal(got, rollups(fleet_store), check_exact=True)
    assert sharded.count("attributed") == fleet_store.count("messages")


@pytest.mark.slow
def test_a_rerun_replaces_every_shard_with_the_same_bytes(fleet_store: Store, sharded: Store, tmp_path) -> None:
    store = copy_raw(fleet_store, str(tmp_path / "again.duckdb"))
    first = run_shards(store, groups=GROUPS, commit_messages=50)  # several shards a commit, several commits
    hours = store.query("SELECT count(DISTINCT hour_start_ns) FROM ledger_hourly").item()
    groups = {node_group(n, GROUPS) for n in store.query("SELECT DISTINCT node FROM messages")["node"]}
    assert len(first.shards) == hours * len(groups) and hours >= 3 and len(groups) >= 2
    assert run_shards(store, groups=GROUPS).shards == []  # nothing pending: nothing read
    again = run_shards(store, groups=GROUPS, full=True)
    assert again.shards == first.shards
    assert_frame_equal(rollups(store), rollups(sharded), check_exact=True)
    assert_frame_equal(ledger(store), ledger(sharded), check_exact=True)


@pytest.mark.slow
def test_late_data_reruns_only_its_shard_and_books_what_on_time_data_books(fleet_store: Store, sharded: Store,
                                                                          tmp_path) -> None:
    node = "gpu-node-1"
    hour = fleet_store.query("SELECT min(interval_start_ns) FROM messages").item() // HOUR_NS * HOUR_NS + HOUR_NS
    late = f"node = '{node}' AND interval_start_ns >= {hour} AND interval_start_ns < {hour + HOUR_NS} AND seq % 7 = 3"
    store = copy_raw(fleet_store, str(tmp_path / "late.duckdb"), where=f"NOT ({late})")
    run_shards(store, groups=GROUPS)
    before = rollups(store)
    # The agent's spool replays the messages it could not send, hours later.
    keys = fleet_store.query(f"SELECT agent_id, boot_id, seq FROM messages WHERE {late}")
    assert keys.height > 0
    add_raw(fleet_store, store, keys)
    result = run_shards(store, groups=GROUPS)
    assert result.shards == [Shard(hour, node_group(node, GROUPS))]
    after = rollups(store)
    shard_nodes = [n for n in store.query("SELECT DISTINCT node FROM messages")["node"]
                   if node_group(n, GROUPS) == node_group(node, GROUPS)]
    outside = (after["hour_start_ns"] != hour) | ~after["node"].is_in(shard_nodes)
    assert_frame_equal(after.filter(outside), before.filter((before["hour_start_ns"] != hour)
                                                            | ~before["node"].is_in(shard_nodes)), check_exact=True)
    assert_frame_equal(after, rollups(sharded), check_exact=True)  # as if the messages had come on time
    assert_frame_equal(ledger(store), ledger(sharded), check_exact=True)


@pytest.mark.slow
def test_a_process_pool_books_the_same_bytes(fleet_store: Store, sharded: Store, tmp_path) -> None:
    store = copy_raw(fleet_store, str(tmp_path / "pool.duckdb"))
    result = run_shards(store, groups=GROUPS, executor=ProcessPool(2))
    assert len(result.shards) > 2
    assert_frame_equal(rollups(store), rollups(sharded), check_exact=True)
    assert_frame_equal(ledger(store), ledger(sharded), check_exact=True)


@pytest.mark.slow
def test_a_shard_whose_booked_raw_samples_are_gone_is_not_replaced(fleet_store: Store, sharded: Store,
                                                                   tmp_path) -> None:
    store = copy_raw(fleet_store, str(tmp_path / "gone.duckdb"))
    run_shards(store, groups=GROUPS)
    first = store.query("SELECT min(hour_start_ns) FROM ledger_hourly").item()
    gone = f"interval_start_ns < {first + HOUR_NS}"
    keys = store.query(f"SELECT agent_id, boot_id, seq FROM messages WHERE {gone}")
    for table in ("devices", "processes", "allocations", "field_errors", "messages"):  # retention took the hour
        store.execute(f"DELETE FROM {table} WHERE {gone}")
    add_raw(fleet_store, store, keys.slice(0, 1))  # ... and one of its messages comes again, unattributed
    store.execute("DELETE FROM attributed WHERE (agent_id, boot_id, seq) = (?, ?, ?)", list(keys.row(0)))
    before = rollups(store)
    with pytest.raises(ShardError, match="no longer stored") as err:
        run_shards(store, groups=GROUPS)
    assert err.value.hint
    assert_frame_equal(rollups(store), before, check_exact=True)


@pytest.mark.slow
def test_a_ledger_window_keeps_recent_interval_rows_and_the_same_rollups(fleet_store: Store, sharded: Store,
                                                                         tmp_path) -> None:
    store = copy_raw(fleet_store, str(tmp_path / "window.duckdb"))
    result = run_shards(store, groups=GROUPS, ledger_window_s=3600.0)
    kept_from = store.scalar("SELECT kept_from_ns FROM ledger_window")
    assert kept_from % HOUR_NS == 0 and store.scalar("SELECT min(interval_start_ns) FROM ledger") >= kept_from
    assert 0 < result.ledger_rows_kept == store.count("ledger") < result.ledger_rows == sharded.count("ledger")
    assert_frame_equal(rollups(store), rollups(sharded), check_exact=True)
    assert_frame_equal(ledger(store), ledger(sharded).filter(ledger(sharded)["interval_start_ns"] >= kept_from),
                       check_exact=True)


def test_rollup_sums_are_exact_whatever_the_row_order() -> None:
    key = {"agent_id": "a", "boot_id": "b", "node": "n0", "interval_end_ns": 10, "gpu_uuid": "GPU-0", "gpu_index": 0,
           "mig_index": -1, "model": "H100", "profile": None, "sharing": "time_slicing", "kind": "busy",
           "tenant": "nlp", "namespace": "nlp", "pod": "p", "rule": "process_samples", "cluster": "default"}
    values = [1.0] + [0.1, 0.2, 0.3, 1 / 3, 7e-7, 123.456] * 4  # float sums of these differ by order
    rows = [{**key, "seq": i, "interval_start_ns": i, "gpu_seconds": v, "energy_j": None if i % 2 else v,
             "memory_gb_seconds": None} for i, v in enumerate(values)]
    frame = pl.DataFrame(rows).select(*LEDGER_COLUMNS, "cluster")
    orders = [frame.sample(fraction=1.0, shuffle=True, seed=seed) for seed in range(8)]
    assert len({sum(o["gpu_seconds"].to_list()) for o in orders}) > 1  # the float sum does depend on the order
    sums = {shard_rollups(o).row(0, named=True)["gpu_seconds"] for o in orders}
    picoseconds = sum(round(v * 10**12) for v in values)  # each value rounded once to GPU-ps, then added exactly
    assert sums == {picoseconds * (1 / 10**12)}
    out = shard_rollups(frame).row(0, named=True)
    assert out["energy_j"] == sum(round(v * 10**9) for v in values[::2]) * (1 / 10**9)
    assert out["memory_gb_seconds"] is None  # unknown stays null
    assert (out["intervals"], out["energy_intervals"]) == (len(values), len(values[::2]))


@pytest.mark.slow
def test_a_failing_shard_books_nothing_of_itself_and_the_shards_before_it_stay_booked(fleet_store: Store,
                                                                                      tmp_path) -> None:
    from gpuledger.analytics.job import ChunkError

    store = copy_raw(fleet_store, str(tmp_path / "bad.duckdb"))
    last = store.query("SELECT max(interval_start_ns) FROM messages").item() // HOUR_NS * HOUR_NS
    store.execute("UPDATE devices SET interval_end_ns = interval_start_ns - 1 WHERE interval_start_ns >= ?", [last])
    with pytest.raises(ChunkError, match="cannot be booked"):
        run_shards(store, groups=1)  # one shard an hour: the last hour's fails
    assert store.query("SELECT DISTINCT hour_start_ns FROM ledger_hourly ORDER BY 1")["hour_start_ns"].max() < last
    assert store.scalar("SELECT count(*) FROM messages ANTI JOIN attributed USING (agent_id, boot_id, seq)") == \
        store.scalar("SELECT count(*) FROM messages WHERE interval_start_ns >= ?", [last]) > 0
    assert store.count("ledger_hourly") > 0
