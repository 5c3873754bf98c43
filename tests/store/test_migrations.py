"""Numbered migrations: each runs once per file, and files written before them are upgraded once.

The old files are made the way the code before ``gpuledger/store/`` made them:
its schema text (``OLD_SCHEMA``, verbatim from ``gpuledger/store.py`` at
fd4c7d5) run through DuckDB directly, rows inserted beside it. This test
talks to DuckDB itself only to make such a file; the code under test never
sees it until ``Store(path)`` opens it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from gpuledger import wire
from gpuledger.errors import StoreTooNew
from gpuledger.store import MIGRATIONS, TABLES, Store, batch_to_arrow
from gpuledger.store.migrations import applied, migrate
from gpuledger.timeutil import HOUR_NS
from tests.support.factories import make_message

_KEY = "agent_id VARCHAR NOT NULL, boot_id VARCHAR NOT NULL, seq UBIGINT NOT NULL"
_INTERVAL = "node VARCHAR NOT NULL, interval_start_ns BIGINT NOT NULL, interval_end_ns BIGINT NOT NULL"
_DEVICE_METRICS = ", ".join(f"{name} DOUBLE" for name in wire.DEVICE_METRICS)
#: The schema every writable open ran before migrations were recorded (gpuledger/store.py at fd4c7d5).
OLD_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS messages (
    {_KEY}, {_INTERVAL},
    schema_version USMALLINT NOT NULL, driver_version VARCHAR,
    source VARCHAR, ingested_at TIMESTAMPTZ DEFAULT now(),
    PRIMARY KEY (agent_id, boot_id, seq));
ALTER TABLE messages ADD COLUMN IF NOT EXISTS allocations_unavailable VARCHAR;
CREATE TABLE IF NOT EXISTS devices (
    {_KEY}, {_INTERVAL},
    gpu_index USMALLINT NOT NULL, mig_index SMALLINT NOT NULL,
    uuid VARCHAR, model VARCHAR, profile VARCHAR,
    slice_fraction DOUBLE NOT NULL, health UTINYINT NOT NULL, util_samples UINTEGER NOT NULL,
    {_DEVICE_METRICS});
CREATE TABLE IF NOT EXISTS processes (
    {_KEY}, {_INTERVAL},
    gpu_index USMALLINT NOT NULL, mig_index SMALLINT NOT NULL, pid UINTEGER NOT NULL,
    pod_uid VARCHAR, namespace VARCHAR, pod VARCHAR, container VARCHAR, slurm_job VARCHAR,
    kind UTINYINT NOT NULL, samples UINTEGER NOT NULL,
    sm_util_sum DOUBLE, mem_util_sum DOUBLE, used_memory_bytes DOUBLE);
CREATE TABLE IF NOT EXISTS allocations (
    {_KEY}, {_INTERVAL},
    gpu_index USMALLINT NOT NULL, mig_index SMALLINT NOT NULL, replica SMALLINT NOT NULL,
    pod_uid VARCHAR, namespace VARCHAR, pod VARCHAR, container VARCHAR, resource VARCHAR,
    share DOUBLE NOT NULL);
CREATE TABLE IF NOT EXISTS field_errors (
    {_KEY}, {_INTERVAL},
    gpu_index USMALLINT NOT NULL, mig_index SMALLINT NOT NULL, pid UINTEGER NOT NULL,
    field VARCHAR NOT NULL, reason VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS pods (
    pod_uid VARCHAR PRIMARY KEY, namespace VARCHAR NOT NULL, name VARCHAR NOT NULL,
    labels JSON NOT NULL, last_seen_ns BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    topic VARCHAR, partition INTEGER, "offset" BIGINT, reason VARCHAR NOT NULL,
    payload BLOB, size_bytes BIGINT NOT NULL, received_at TIMESTAMPTZ DEFAULT now());
CREATE TABLE IF NOT EXISTS ledger (
    {_KEY}, {_INTERVAL},
    gpu_uuid VARCHAR NOT NULL, gpu_index USMALLINT NOT NULL, mig_index SMALLINT NOT NULL,
    model VARCHAR NOT NULL, profile VARCHAR, sharing VARCHAR NOT NULL,
    kind VARCHAR NOT NULL, tenant VARCHAR NOT NULL, namespace VARCHAR, pod VARCHAR,
    rule VARCHAR NOT NULL, gpu_seconds DOUBLE NOT NULL, energy_j DOUBLE,
    memory_gb_seconds DOUBLE);
CREATE TABLE IF NOT EXISTS attributed ({_KEY}, rules_version VARCHAR, PRIMARY KEY (agent_id, boot_id, seq));
ALTER TABLE attributed ADD COLUMN IF NOT EXISTS rules_version VARCHAR;
CREATE TABLE IF NOT EXISTS ledger_hourly (
    hour_start_ns BIGINT NOT NULL, node VARCHAR NOT NULL,
    gpu_uuid VARCHAR NOT NULL, gpu_index USMALLINT NOT NULL, mig_index SMALLINT NOT NULL,
    model VARCHAR NOT NULL, profile VARCHAR, sharing VARCHAR NOT NULL,
    kind VARCHAR NOT NULL, tenant VARCHAR NOT NULL, namespace VARCHAR, pod VARCHAR,
    rule VARCHAR NOT NULL, gpu_seconds DOUBLE NOT NULL, energy_j DOUBLE, energy_intervals UINTEGER NOT NULL,
    memory_gb_seconds DOUBLE, intervals UINTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ledger_hourly_pending (hour_start_ns BIGINT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS merged_segments (file VARCHAR PRIMARY KEY, merged_at TIMESTAMPTZ DEFAULT now());
CREATE TABLE IF NOT EXISTS ledger_retired (
    month VARCHAR PRIMARY KEY, start_ns BIGINT NOT NULL, end_ns BIGINT NOT NULL,
    ledger_rows BIGINT NOT NULL, gpu_seconds DOUBLE, retired_at TIMESTAMPTZ DEFAULT now());
"""
#: What a gpuledger before hourly rollups, segments and retention lacked (and its two later columns).
BEFORE_ROLLUPS = """
DROP TABLE ledger_hourly; DROP TABLE ledger_hourly_pending; DROP TABLE merged_segments; DROP TABLE ledger_retired;
ALTER TABLE messages DROP COLUMN allocations_unavailable; ALTER TABLE attributed DROP COLUMN rules_version;
"""
T0 = 1_740_787_200 * 10**9  # 2025-03-01T00:00Z
LEDGER_HOURS = (T0, T0 + 5 * HOUR_NS)


def old_file(path: Path, *, before_rollups: bool = False) -> None:
    """A file as the pre-migration code left it: 4 messages with their rows, a dead letter, ledger rows in two
    hours and their attributed keys (and, ``before_rollups``, without the tables and columns added later)."""
    con = duckdb.connect(str(path))
    con.execute(OLD_SCHEMA)
    if before_rollups:
        con.execute(BEFORE_ROLLUPS)
    tables = batch_to_arrow([make_message(seq=i) for i in range(4)], [f"t/0/{i}" for i in range(4)])
    for name, table in tables.items():
        have = {r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = ?",
                                          [name]).fetchall()}
        con.register("_t", table.select([c for c in table.column_names if c in have]))
        con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM _t")
        con.unregister("_t")
    con.execute("INSERT INTO dead_letters (topic, partition, \"offset\", reason, payload, size_bytes) "
                "VALUES ('t', 0, 9, 'bad magic', 'x'::BLOB, 1)")
    for seq, start in enumerate(LEDGER_HOURS):
        con.execute("INSERT INTO ledger VALUES ('a', 'b', ?, 'n', ?, ?, 'GPU-0', 0, -1, 'A100', NULL, 'exclusive', "
                    "'busy', 'team', 'ns', 'pod', 'direct', 10.0, NULL, NULL)", [seq, start, start + 10**10])
        con.execute("INSERT INTO attributed (agent_id, boot_id, seq) VALUES ('a', 'b', ?)", [seq])
    con.close()


def columns(query: Any) -> list[tuple[Any, ...]]:
    """(table, position, column, type, nullable, default) of every table: the file's whole schema."""
    return [tuple(r) for r in query(
        "SELECT table_name, column_index, column_name, data_type, is_nullable, column_default FROM duckdb_columns() "
        "WHERE schema_name = 'main' AND table_name <> 'schema_migrations' ORDER BY ALL")]


def raw_contents(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    con = duckdb.connect(str(path), read_only=True)
    tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
    out = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in tables}
    con.close()
    return out


def test_each_migration_runs_once_per_file(tmp_path: Path) -> None:
    path = tmp_path / "g.duckdb"
    with Store(path) as store:
        first = store.query("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
        versions = [m.version for m in MIGRATIONS]
        assert first["version"].to_list() == versions == list(range(1, len(MIGRATIONS) + 1))  # 1..N, no gap
        store.execute("ALTER TABLE messages DROP COLUMN allocations_unavailable")  # undo what migration 2 did
    for _ in range(5):  # every ingest flush opens the file for writing
        with Store(path) as store:
            assert migrate(store) == []
    with Store(path, read_only=True) as store:
        assert store.query("SELECT version, name, applied_at FROM schema_migrations ORDER BY version").equals(first)
        # Not re-run: the column migration 2 added stays gone (before, every open ran the ALTER again).
        cols = store.query("SELECT column_name FROM duckdb_columns() WHERE table_name = 'messages'")["column_name"]
        assert "allocations_unavailable" not in cols.to_list()


def test_a_new_file_has_every_table_of_the_schema_module(tmp_path: Path) -> None:
    with Store(tmp_path / "g.duckdb") as store:
        tables = set(store.query("SELECT table_name FROM duckdb_tables()")["table_name"])
    assert tables == set(TABLES)  # so each table of schema.py is created by some migration


@pytest.mark.parametrize("before_rollups", [False, True], ids=["made-by-fd4c7d5", "before-rollups"])
def test_a_file_made_before_migrations_is_upgraded_once_and_keeps_its_rows(tmp_path: Path,
                                                                           before_rollups: bool) -> None:
    path = tmp_path / "old.duckdb"
    old_file(path, before_rollups=before_rollups)
    before = raw_contents(path)
    with Store(path) as store:  # the upgrade: every migration, recorded
        assert applied(store) == [m.version for m in MIGRATIONS]
        pending = sorted(store.query("SELECT hour_start_ns FROM ledger_hourly_pending")["hour_start_ns"])
    with Store(path) as store:
        assert migrate(store) == []  # once
    with Store(tmp_path / "new.duckdb") as new, Store(path, read_only=True) as upgraded:
        assert columns(upgraded.query) and columns(upgraded.query) == columns(new.query)
        for table, rows in before.items():  # the rows, column for column (older columns first)
            n = len(rows[0]) if rows else 0
            got = [r[:n] for r in upgraded.query(f"SELECT * FROM {table} ORDER BY ALL").rows()]
            assert got == rows, table
        assert upgraded.count("messages") == 4 and upgraded.count("ledger") == 2
        # migration 12: rows booked before clusters are in the default cluster; raw messages say none was named
        assert upgraded.query("SELECT DISTINCT cluster FROM ledger").rows() == [(wire.DEFAULT_CLUSTER,)]
        assert upgraded.query("SELECT DISTINCT cluster FROM messages").rows() == [(None,)]
        assert upgraded.count("api_tokens") == 0 and upgraded.count("chargeback_closes") == 0
    # A ledger older than its rollups gets every hour marked for the next attribution run; a file that
    # already had rollups keeps its (empty) pending list: nothing is recomputed for nothing.
    assert pending == (list(LEDGER_HOURS) if before_rollups else [])


def test_a_file_migrated_by_a_newer_gpuledger_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "g.duckdb"
    with Store(path) as store:
        store.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'from the future')")
    with pytest.raises(StoreTooNew, match=r"\[999\]") as caught:
        Store(path)
    assert "upgrade gpuledger" in caught.value.hint
    with Store(path, read_only=True) as store:  # reading is still allowed
        assert store.count("messages") == 0


def test_rollups_older_than_their_exact_sums_are_filled_then_recomputed_to_the_same_bill(tmp_path: Path) -> None:
    """Migration 13 adds the exact integer columns to ``ledger_hourly``: rows get their floats' integers (each
    GPU-hour's capacity: its GPU-seconds summed, to the ns, as the bill took it before), every rolled-up hour
    the ledger has is marked pending, and the next attribution run recomputes them exactly; the bill is the
    same file throughout."""
    from polars.testing import assert_frame_equal

    from gpuledger.analytics import closing
    from gpuledger.analytics.hourly import EXACT_COLUMNS, HOURLY_COLUMNS, hourly
    from gpuledger.analytics.job import run_attribution
    from gpuledger.analytics.prices import default_price_book
    from tests.support.factories import EPOCH_NS

    path, book = tmp_path / "v11.duckdb", default_price_book()
    ticks = [make_message(seq=i, start_ns=EPOCH_NS + i * 5 * 60 * 10**9, tick_ns=5 * 60 * 10**9, util=(i % 7) / 7)
             for i in range(30)]  # 2.5 hours
    with Store(path) as store:
        store.write_messages(ticks)
        run_attribution(store)
        bill = closing.export(store, "2025-01", book).content
        for column in EXACT_COLUMNS:  # the file as gpuledger left it before migration 13
            store.execute(f"ALTER TABLE ledger_hourly DROP COLUMN {column}")
        store.execute("DELETE FROM schema_migrations WHERE version = 13")
        hours = sorted(store.query("SELECT DISTINCT hour_start_ns FROM ledger_hourly")["hour_start_ns"])
    with Store(path) as store:
        assert 13 in applied(store)
        assert sorted(store.query("SELECT hour_start_ns FROM ledger_hourly_pending")["hour_start_ns"]) == hours
        filled = store.query("SELECT hour_start_ns, node, gpu_index, sum(capacity_ns) AS c, "
                             "round(sum(gpu_seconds) * 1e9)::BIGINT AS s, count(*) - count(gpu_ps) AS missing "
                             "FROM ledger_hourly GROUP BY ALL")
        assert filled["c"].to_list() == filled["s"].to_list() and filled["missing"].sum() == 0
        assert closing.export(store, "2025-01", book).content == bill  # pending hours: read from the ledger
        run_attribution(store)
        assert store.count("ledger_hourly_pending") == 0
        got = store.query(f"SELECT {', '.join(HOURLY_COLUMNS)} FROM ledger_hourly ORDER BY ALL")
        want = hourly(store.query("SELECT * FROM ledger").lazy()).collect().sort(HOURLY_COLUMNS, nulls_last=False)
        assert_frame_equal(got, want, check_dtypes=False, check_exact=True)
        assert closing.export(store, "2025-01", book).content == bill
