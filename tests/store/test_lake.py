"""The lake store on real Iceberg tables (pyiceberg, a SQLite catalog, a local warehouse).

What ingest relies on: idempotent appends on (agent_id, boot_id, seq), a batch
half-committed by a killed worker completed and not doubled, a concurrent
commit refused and retried after re-reading the keys, an older table's schema
evolved in place, and an unreachable catalog retried, then reported with a hint.
The same behaviour on PostgreSQL + S3 with real workers: tests/ingest/test_lake_kafka.py.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

pytest.importorskip("pyiceberg", reason="the lake extra is not installed (pip install -e '.[test]')")

from pyiceberg.exceptions import CommitFailedException  # noqa: E402
from pyiceberg.schema import Schema  # noqa: E402

from gpuledger.errors import StoreError  # noqa: E402
from gpuledger.store import DeadLetter, Store  # noqa: E402
from gpuledger.store.lake import (  # noqa: E402
    LakeConfig,
    LakeStore,
    LakeUnavailable,
    evolve,
    lake_schema,
    materialize,
    scan,
)
from gpuledger.store.lake.schema import DAY_COLUMN, KEYED, LAKE_TABLES  # noqa: E402
from gpuledger.store.lake.writer import _RECORD_ORDER, TABLE_PROPERTIES  # noqa: E402
from tests.support.ingest_runs import stream  # noqa: E402
from tests.support.lake_race import race_on_devices  # noqa: E402
from tests.support.system import free_port  # noqa: E402

RAW = ("messages", "devices", "processes", "allocations", "field_errors", "pods")


def config(tmp: Path, **kw: object) -> LakeConfig:
    return LakeConfig(f"sqlite:///{tmp}/catalog.db", str(tmp / "warehouse"), **kw)  # type: ignore[arg-type]


def raw_tables(store: Store) -> dict[str, pl.DataFrame]:
    return {t: store.query(f"SELECT * EXCLUDE (ingested_at) FROM {t} ORDER BY ALL" if t == "messages"
                           else f"SELECT * FROM {t} ORDER BY ALL") for t in RAW}


def lake_counts(lake: LakeStore) -> dict[str, int]:
    return {t: scan(lake, t).num_rows for t in KEYED}


def test_every_column_of_the_duckdb_tables_is_in_the_lake_schema_with_its_nullability() -> None:
    with Store(":memory:") as store:
        for table in LAKE_TABLES:
            cols = store.query("SELECT column_name, is_nullable FROM duckdb_columns() WHERE table_name = ? "
                               "ORDER BY column_index", [table])
            schema = lake_schema(table)
            names = [f.name for f in schema.fields]
            assert names[:cols.height] == cols["column_name"].to_list()
            assert [not f.required for f in schema.fields[:cols.height]] == cols["is_nullable"].to_list()
            assert names[cols.height:] == ([DAY_COLUMN] if table in KEYED else [])


def test_a_redelivered_batch_adds_nothing_and_the_lake_materialises_as_the_duckdb_store(tmp_path: Path) -> None:
    msgs = stream(6, nodes=3, n_gpus=2)
    lake = LakeStore(config(tmp_path))
    assert lake.write_messages(msgs[:7]) == 7
    assert lake.write_messages(msgs + msgs[:2]) == len(msgs) - 7  # a replay overlapping, repeats inside the batch
    assert lake.write_messages(msgs) == 0
    with Store(":memory:") as want, Store(":memory:") as got:
        want.write_messages(msgs)
        assert materialize(lake, got) == len(msgs)
        assert materialize(lake, got) == 0  # idempotent too
        expected, actual = raw_tables(want), raw_tables(got)
        for t in RAW:
            assert actual[t].equals(expected[t]), t
    assert lake_counts(lake)["devices"] == sum(len(m.devices) for m in msgs)


def test_rows_are_partitioned_by_the_utc_day_of_the_interval_start(tmp_path: Path) -> None:
    lake = LakeStore(config(tmp_path))
    msgs = stream(2, nodes=1)
    day_ns = 86_400 * 10**9
    msgs[1].interval_start_ns += day_ns  # the next day
    msgs[1].interval_end_ns += day_ns
    lake.write_messages(msgs)
    rows = scan(lake, "devices")
    micros = rows.column(DAY_COLUMN).cast(pa.int64()).to_pylist()
    assert micros == [ns // 1000 for ns in rows.column("interval_start_ns").to_pylist()]
    days = sorted(p["day"] for p in lake.table("devices").inspect.partitions().column("partition").to_pylist())
    want = sorted({datetime.datetime.fromtimestamp(m.interval_start_ns / 1e9, datetime.UTC).date() for m in msgs})
    assert days == want and len(days) == 2


class _Killed(Exception):
    """Stands for SIGKILL between two tables' commits."""


@pytest.mark.parametrize("killed_after", range(len(_RECORD_ORDER) + 1))
def test_a_batch_half_committed_by_a_killed_writer_is_completed_not_doubled(tmp_path: Path, killed_after: int) -> None:
    msgs = stream(4, nodes=2)
    dying = LakeStore(config(tmp_path))
    committed: list[str] = []
    real = dying._append_keyed

    def append_then_die(name: str, *args: object) -> None:
        if len(committed) == killed_after:
            raise _Killed
        real(name, *args)  # type: ignore[arg-type]
        committed.append(name)

    dying._append_keyed = append_then_die  # type: ignore[method-assign]
    with pytest.raises(_Killed):
        dying.write_messages(msgs)
    counts = lake_counts(dying)
    assert [t for t in _RECORD_ORDER if counts[t]] == committed and counts["messages"] == 0
    # The batch comes again (its offsets were never committed) to another worker:
    successor = LakeStore(config(tmp_path))
    assert successor.write_messages(msgs) == len(msgs)
    with Store(":memory:") as want:
        want.write_messages(msgs)
        assert lake_counts(successor) == {t: want.count(t) for t in KEYED}


def test_a_commit_lost_to_a_concurrent_writer_rereads_the_keys_and_appends_nothing_twice(tmp_path: Path) -> None:
    msgs = stream(3, nodes=2)
    first, second = LakeStore(config(tmp_path)), LakeStore(config(tmp_path))
    race_on_devices(first, second, msgs)
    # `first` found none of them stored, then `second` stored them all mid-flush: `first` adds no row, and says so
    assert first.write_messages(msgs) == 0
    with Store(":memory:") as want:
        want.write_messages(msgs)
        assert lake_counts(first) == {t: want.count(t) for t in KEYED}  # nothing twice
    assert first.conflicts >= 1  # its devices commit was refused, then re-read the keys


def test_a_table_written_by_an_older_version_gains_the_new_column_and_old_rows_read_null(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    current = lake_schema("messages")
    older = Schema(*[f for f in current.fields if f.name != "allocations_unavailable"])
    from gpuledger.store.lake import open_catalog, partition_spec

    catalog = open_catalog(cfg)
    table = catalog.create_table((cfg.namespace, "messages"), schema=older, partition_spec=partition_spec("messages", older))
    old_row = {f.name: [None] for f in older.fields}
    old_row.update(agent_id=["old"], boot_id=["b"], seq=[1], node=["n"], interval_start_ns=[0], interval_end_ns=[10],
                   schema_version=[1], interval_start=[0])
    table.append(pa.Table.from_pydict(old_row).cast(table.schema().as_arrow()))

    lake = LakeStore(cfg)  # upgrade: the column is added by Iceberg schema evolution, no file rewritten
    msg = stream(1, nodes=1)[0]
    msg.extra["allocations_unavailable"] = "kubelet socket missing"
    lake.write_messages([msg])
    rows = scan(lake, "messages").sort_by("agent_id").select(["agent_id", "allocations_unavailable"]).to_pylist()
    assert rows == [{"agent_id": "agent-0", "allocations_unavailable": "kubelet socket missing"},
                    {"agent_id": "old", "allocations_unavailable": None}]


def test_dead_letters_are_kept_once_per_topic_partition_and_offset(tmp_path: Path) -> None:
    lake = LakeStore(config(tmp_path))
    letters = [DeadLetter("bad magic", b"\x00", "t", 0, 5), DeadLetter("bad magic", b"\x00", "t", 0, 6),
               DeadLetter("no origin", b"x")]
    assert lake.write_dead_letters(letters) == 3
    assert lake.write_dead_letters(letters) == 1  # the one without an origin cannot be recognised
    assert scan(lake, "dead_letters").num_rows == 4
    with Store(":memory:") as store:  # copied once into a DuckDB file, however often it is materialised
        materialize(lake, store)
        materialize(lake, store)
        assert store.count("dead_letters") == 4


def test_an_unreachable_catalog_is_retried_with_doubling_pauses_then_reported_with_a_hint(tmp_path: Path) -> None:
    pauses: list[float] = []
    now = [0.0]

    def sleep(s: float) -> None:
        pauses.append(s)
        now[0] += s

    cfg = LakeConfig(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nothing", str(tmp_path), unavailable_s=3.0)
    with pytest.raises(LakeUnavailable) as err:
        LakeStore(cfg, sleep=sleep, clock=lambda: now[0])
    assert pauses == [0.25, 0.5, 1.0]  # then 2.0 would pass the 3 s
    assert "did not answer" in str(err.value) and "nothing was committed to Kafka" in err.value.hint
    assert isinstance(err.value, StoreError)  # the Ingestor stops on it, committing nothing


@pytest.mark.slow
def test_an_object_store_gone_mid_run_is_retried_then_reported_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("moto", reason="moto[server] is a test extra (pip install -e '.[test]')")
    from tests.support.s3 import CREDENTIALS, MotoS3

    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    s3 = MotoS3(tmp_path)
    s3.start()
    try:
        warehouse = s3.bucket("lake") + "/raw"
        cfg = LakeConfig(f"sqlite:///{tmp_path}/catalog.db", warehouse, s3_endpoint=s3.endpoint, unavailable_s=1.0)
        pauses: list[float] = []
        lake = LakeStore(cfg, sleep=pauses.append, clock=lambda: sum(pauses))  # time passes only in pauses
        msgs = stream(4, nodes=2)
        assert lake.write_messages(msgs[:4]) == 4 and pauses == []
        s3.stop()  # the object store goes away (moto keeps objects in memory: no coming back to test here;
        # exactly once across an outage is tested with the catalog in tests/ingest/test_lake_kafka.py)
        with pytest.raises(LakeUnavailable) as err:
            lake.write_messages(msgs)
        assert "did not answer for 1 s" in str(err.value) and "AWS_ACCESS_KEY_ID" in err.value.hint
        assert pauses == [0.25, 0.5]  # retried with doubling pauses, then reported
    finally:
        s3.stop()


def test_a_worker_starting_beside_one_that_just_evolved_the_table_takes_the_change_as_done(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    from gpuledger.store.lake import open_catalog, partition_spec

    catalog = open_catalog(cfg)
    older = Schema(*[f for f in lake_schema("messages").fields if f.name != "allocations_unavailable"])
    catalog.create_table((cfg.namespace, "messages"), schema=older, partition_spec=partition_spec("messages", older),
                         properties=TABLE_PROPERTIES)
    stale = catalog.load_table((cfg.namespace, "messages"))  # what the second worker loaded ...
    LakeStore(cfg)  # ... before the first one added the column
    with pytest.raises(CommitFailedException):
        evolve(stale, "messages")  # the race exists: a schema change from stale metadata is refused

    second = LakeStore(cfg)
    real_load = second.catalog.load_table
    loads: list[int] = []

    def load_stale_once(ident: object) -> object:
        loads.append(1)
        return stale if len(loads) == 1 else real_load(ident)  # type: ignore[arg-type]

    second.catalog.load_table = load_stale_once  # type: ignore[method-assign,assignment]
    table = second._ensure("messages")
    assert "allocations_unavailable" in [f.name for f in table.schema().fields]
    assert second.conflicts == 1 and len(loads) == 2


def test_each_message_s_cluster_goes_through_the_lake_to_messages_and_pods(tmp_path: Path) -> None:
    msgs = stream(3, nodes=3, n_gpus=2)
    for m in msgs:  # node-0 in east, node-1 in west, node-2 names none (a v1 agent)
        m.cluster = {"node-0": "east", "node-1": "west"}.get(m.node)
    lake = LakeStore(config(tmp_path))
    assert lake.write_messages(msgs) == len(msgs)
    with Store(":memory:") as want, Store(":memory:") as got:
        want.write_messages(msgs)
        assert materialize(lake, got) == len(msgs)
        expected, actual = raw_tables(want), raw_tables(got)
        for t in RAW:
            assert actual[t].equals(expected[t]), t
        assert got.query("SELECT node, cluster FROM messages GROUP BY ALL ORDER BY 1").rows() == [
            ("node-0", "east"), ("node-1", "west"), ("node-2", None)]
        assert got.query("SELECT DISTINCT cluster FROM pods ORDER BY 1 NULLS LAST").rows() == [
            ("east",), ("west",), (None,)]
