"""Attribution on the lake (SQLite catalog, local warehouse): shards read from the raw Iceberg tables book into the
lake's ``ledger_hourly`` exactly the rollups the embedded DuckDB job books from the same messages; late data re-runs
only its shard; a run with nothing new commits nothing; a failing shard leaves the rollups as they were."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

pytest.importorskip("pyiceberg", reason="the lake extra is not installed (pip install -e '.[test]')")

from gpuledger.analytics.hourly import HOURLY_COLUMNS  # noqa: E402
from gpuledger.analytics.job import ChunkError  # noqa: E402
from gpuledger.analytics.shard_lake import run_lake_shards  # noqa: E402
from gpuledger.analytics.shards import ProcessPool, Shard, node_group  # noqa: E402
from gpuledger.analytics.tenancy import TenancyRules  # noqa: E402
from gpuledger.store import Store  # noqa: E402
from gpuledger.store.lake import LakeConfig, LakeStore, scan  # noqa: E402
from gpuledger.timeutil import HOUR_NS  # noqa: E402
from tests.support.shards import GROUPS, fleet, lake_batch, rollups  # noqa: E402

pytestmark = pytest.mark.slow  # the simulated fleet takes seconds, each lake attribution a few more


@pytest.fixture(scope="module")
def source() -> Store:
    """Four 8-GPU nodes over three hours, attributed by the embedded message-chunk job."""
    return fleet()


def lake_at(tmp: Path) -> tuple[LakeConfig, LakeStore]:
    config = LakeConfig(f"sqlite:///{tmp}/catalog.db", str(tmp / "warehouse"))
    return config, LakeStore(config)


def lake_rollups(lake: LakeStore) -> pl.DataFrame:
    """The lake's ledger_hourly without its lake-only ``hour``, in the DuckDB table's column order."""
    frame = pl.from_arrow(scan(lake, "ledger_hourly"))
    assert isinstance(frame, pl.DataFrame)
    return frame.select(HOURLY_COLUMNS).sort(HOURLY_COLUMNS, nulls_last=True)


def embedded(store: Store) -> pl.DataFrame:
    return rollups(store).sort(HOURLY_COLUMNS, nulls_last=True)


def snapshot_of(lake: LakeStore) -> tuple[int | None, str]:
    table = lake.table("ledger_hourly").refresh()
    snap = table.current_snapshot()
    return (None if snap is None else snap.snapshot_id), table.metadata_location


def data_files(lake: LakeStore) -> dict[str, set[int]]:
    """ledger_hourly's data files -> the hours each holds."""
    table = lake.table("ledger_hourly").refresh()
    return {task.file.file_path: set(pq.read_table(task.file.file_path.removeprefix("file://"),
                                                   columns=["hour_start_ns"])["hour_start_ns"].to_pylist())
            for task in table.scan().plan_files()}


def test_the_lake_books_exactly_the_embedded_rollups_in_one_process_and_in_a_pool(source: Store,
                                                                                  tmp_path: Path) -> None:
    config, lake = lake_at(tmp_path)
    lake.write_arrow(lake_batch(source))
    one = run_lake_shards(config, groups=GROUPS, lake=lake)
    hours = source.query("SELECT count(DISTINCT hour_start_ns) FROM ledger_hourly").item()
    groups = {node_group(n, GROUPS) for n in source.query("SELECT DISTINCT node FROM messages")["node"]}
    assert len(one.shards) == hours * len(groups) and hours >= 3 and len(groups) >= 2
    assert one.messages == source.count("messages") and one.ledger_rows_kept == 0  # rollups only
    assert source.query("SELECT count(DISTINCT sharing) FROM ledger").item() >= 5  # time-slicing, MIG, MPS...
    assert_frame_equal(lake_rollups(lake), embedded(source), check_dtypes=False, check_exact=True)

    # a pool's workers read their shards from the lake themselves; every shard re-run replaces its rows
    pool = run_lake_shards(config, groups=GROUPS, executor=ProcessPool(2), full=True)
    assert pool.shards == one.shards
    assert_frame_equal(lake_rollups(lake), embedded(source), check_dtypes=False, check_exact=True)


def test_a_run_with_nothing_new_commits_nothing_and_a_rules_change_reruns_every_shard(source: Store,
                                                                                      tmp_path: Path) -> None:
    config, lake = lake_at(tmp_path)
    lake.write_arrow(lake_batch(source))
    first = run_lake_shards(config, groups=GROUPS, lake=lake)
    before = snapshot_of(lake)
    assert run_lake_shards(config, groups=GROUPS, lake=lake).shards == []
    assert snapshot_of(lake) == before  # no snapshot, not even a metadata change
    changed = run_lake_shards(config, TenancyRules(version="corrected-2"), groups=GROUPS, lake=lake)
    assert changed.shards == first.shards
    assert run_lake_shards(config, TenancyRules(version="corrected-2"), groups=GROUPS, lake=lake).shards == []
    assert_frame_equal(lake_rollups(lake), embedded(source), check_dtypes=False, check_exact=True)


def test_late_data_reruns_only_its_shard_and_leaves_the_other_hours_files_untouched(source: Store,
                                                                                   tmp_path: Path) -> None:
    node = "gpu-node-1"
    hour = source.query("SELECT min(interval_start_ns) FROM messages").item() // HOUR_NS * HOUR_NS + HOUR_NS
    late = f"node = '{node}' AND interval_start_ns >= {hour} AND interval_start_ns < {hour + HOUR_NS} AND seq % 7 = 3"
    config, lake = lake_at(tmp_path)  # ``lake`` is the ingest worker; attribution opens the lake itself, once
    lake.write_arrow(lake_batch(source, source.query(f"SELECT agent_id, boot_id, seq FROM messages WHERE NOT ({late})")))
    run_lake_shards(config, groups=GROUPS)
    on_time = lake_rollups(lake)
    files = data_files(lake)
    # The agent's spool replays the messages it could not send, hours later.
    keys = source.query(f"SELECT agent_id, boot_id, seq FROM messages WHERE {late}")
    assert keys.height > 0
    lake.write_arrow(lake_batch(source, keys))
    again = run_lake_shards(config, groups=GROUPS)  # the same process: its open tables are older than the late data
    assert again.shards == [Shard(hour, node_group(node, GROUPS))]
    after = data_files(lake)
    assert {f: h for f, h in files.items() if hour not in h} == {f: h for f, h in after.items() if hour not in h}
    assert all(h == {hour} for f, h in after.items() if f not in files)  # the rewritten file: that hour only
    got = lake_rollups(lake)
    assert_frame_equal(got, embedded(source), check_dtypes=False, check_exact=True)
    others = (pl.col("hour_start_ns") != hour) | (pl.col("node").map_elements(
        lambda n: node_group(n, GROUPS), return_dtype=pl.Int64) != node_group(node, GROUPS))
    assert_frame_equal(got.filter(others), on_time.filter(others), check_exact=True)


def test_a_failing_shard_leaves_the_lakes_rollups_as_they_were_and_is_named(source: Store, tmp_path: Path) -> None:
    first_hour = source.query("SELECT min(interval_start_ns) FROM messages").item() // HOUR_NS * HOUR_NS
    config, lake = lake_at(tmp_path)
    early = source.query(f"SELECT agent_id, boot_id, seq FROM messages WHERE interval_start_ns < {first_hour + HOUR_NS}")
    lake.write_arrow(lake_batch(source, early))
    run_lake_shards(config, groups=1, lake=lake)
    booked, before = lake_rollups(lake), snapshot_of(lake)
    later = source.query(f"SELECT agent_id, boot_id, seq FROM messages WHERE interval_start_ns >= {first_hour + HOUR_NS}")
    batch = lake_batch(source, later)
    devices = pl.from_arrow(batch["devices"])
    assert isinstance(devices, pl.DataFrame)
    batch["devices"] = devices.with_columns(interval_end_ns=pl.when(pl.col("node") == "gpu-node-2").then(
        pl.col("interval_start_ns") - 1).otherwise(pl.col("interval_end_ns"))).to_arrow()
    lake.write_arrow(batch)
    second = f"hour {first_hour + HOUR_NS} group 0"
    for _ in range(2):  # the failed shard stays dirty: the next run fails on it again
        with pytest.raises(ChunkError, match=f"shard {second} \\(nodes gpu-node-0, gpu-node-1, gpu-node-2"):
            run_lake_shards(config, groups=1, lake=lake)
        assert snapshot_of(lake) == before
        assert_frame_equal(lake_rollups(lake), booked, check_exact=True)


@pytest.mark.external
def test_on_postgresql_and_s3_the_lake_books_the_embedded_rollups_and_late_data_reruns_its_shard(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuledger.analytics.job import run_attribution
    from tests.support.factories import EPOCH_NS, make_message
    from tests.support.postgres import running_postgres
    from tests.support.s3 import CREDENTIALS, running_moto

    def tick(seq: int, node: str):  # type: ignore[no-untyped-def]
        return make_message(seq=seq, start_ns=EPOCH_NS + seq * 600 * 10**9, tick_ns=600 * 10**9,  # type: ignore[arg-type]
                            node=node, agent_id=f"agent-{node}")

    on_time = [tick(i, node) for node in ("n0", "n1", "n2") for i in range(12) if (node, i) != ("n1", 8)]
    with running_postgres() as pg, running_moto(tmp_path) as s3:
        for key, value in CREDENTIALS.items():
            monkeypatch.setenv(key, value)
        config = LakeConfig(pg.uri, s3.bucket("lake") + "/raw", s3_endpoint=s3.endpoint)
        lake = LakeStore(config)
        lake.write_messages(on_time)
        first = run_lake_shards(config, groups=2, lake=lake)
        assert len(first.shards) >= 3
        lake.write_messages([tick(8, "n1")])  # late
        late = run_lake_shards(config, groups=2, lake=lake)
        assert late.shards == [Shard((EPOCH_NS + 8 * 600 * 10**9) // HOUR_NS * HOUR_NS, node_group("n1", 2))]
        assert run_lake_shards(config, groups=2, lake=lake).shards == []
        with Store(":memory:") as file:
            file.write_messages([*on_time, tick(8, "n1")])
            run_attribution(file)
            assert_frame_equal(lake_rollups(lake), embedded(file), check_dtypes=False, check_exact=True)


def test_an_empty_lake_runs_nothing_and_records_nothing(tmp_path: Path) -> None:
    config, lake = lake_at(tmp_path)
    assert run_lake_shards(config, lake=lake).shards == []
    table = lake.table("ledger_hourly").refresh()
    assert table.current_snapshot() is None and not any(k.startswith("gpuledger.") for k in table.properties)
