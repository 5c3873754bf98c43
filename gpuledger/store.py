"""DuckDB: the one module that imports ``duckdb``.

Who writes: one ingest worker per file, holding it only while a flush
writes (``gpuledger.ingest.opener``); between flushes ``gpuledger
attribute``/``retention`` open it for writing and the API read-only
(``Store(path, read_only=True)``), each for one job or request. N workers
write N files, merged by :meth:`Store.absorb`, or Parquet segments read in
place by :meth:`Store.open_segments`. See docs/storage.md.

Tables (times are integer nanoseconds since the Unix epoch, UTC):

- ``messages``: one row per ingested wire message; primary key
  ``(agent_id, boot_id, seq)`` makes ingest idempotent.
- ``devices``, ``processes``, ``allocations``, ``field_errors``: the wire
  tables, with the message key and interval denormalised onto every row.
- ``pods``: pod identity and labels, latest seen wins.
- ``dead_letters``: what could not be decoded, with where it came from and why.
- ``ledger``: attribution output (analytics), one row per GPU unit, interval,
  tenant and kind (busy, allocated_idle, unallocated, unmeasured).
- ``attributed``: which messages the ledger already covers (incremental runs).
- ``ledger_hourly``: the ledger summed per UTC hour (``gpuledger/analytics/hourly.py``), kept
  longer than the ledger; ``ledger_hourly_pending`` the hours to recompute;
  ``ledger_retired`` the months whose interval-grain ledger retention removed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute  # noqa: F401  # pa.compute.is_in

from gpuledger import wire
from gpuledger.errors import StoreError

_KEY = "agent_id VARCHAR NOT NULL, boot_id VARCHAR NOT NULL, seq UBIGINT NOT NULL"
_INTERVAL = "node VARCHAR NOT NULL, interval_start_ns BIGINT NOT NULL, interval_end_ns BIGINT NOT NULL"
_DEVICE_METRICS = ", ".join(f"{name} DOUBLE" for name in wire.DEVICE_METRICS)

SCHEMA = f"""
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
CREATE TABLE IF NOT EXISTS attributed ({_KEY}, rules_version VARCHAR, PRIMARY KEY (agent_id, boot_id, seq)); ALTER TABLE attributed ADD COLUMN IF NOT EXISTS rules_version VARCHAR;
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

_ROW_TABLES = ("devices", "processes", "allocations", "field_errors")
#: The tail of every ``INSERT INTO pods``: latest seen wins (a replayed old message, an older worker
#: file or segment never overwrites newer labels). Its input must hold each pod once.
PODS_LATEST_WINS = ("ON CONFLICT (pod_uid) DO UPDATE SET namespace = excluded.namespace, name = excluded.name, "
                    "labels = excluded.labels, last_seen_ns = excluded.last_seen_ns "
                    "WHERE excluded.last_seen_ns >= pods.last_seen_ns")
#: Keeps a dead letter (alias ``d``) not stored yet: idempotent on (topic, partition, offset) where all known.
NEW_DEAD_LETTER = ('(d.topic IS NULL OR d.partition IS NULL OR d."offset" IS NULL OR NOT EXISTS (SELECT 1 FROM '
                   'dead_letters x WHERE x.topic = d.topic AND x.partition = d.partition AND x."offset" = d."offset"))')
#: One hour in ns: the grain of ``ledger_hourly`` (an interval belongs to the hour of its start).
HOUR_NS = 3600 * 10**9


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    payload: bytes
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


class Store:
    """A DuckDB file (or ``:memory:``) holding gpuledger's tables."""

    def __init__(self, path: str | Path = ":memory:", read_only: bool = False) -> None:
        self.path = str(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        try:
            self.con = duckdb.connect(self.path, read_only=read_only)
            if not read_only:
                upgrading = self.has_table("ledger") and not self.has_table("ledger_hourly")
                self._exec(SCHEMA)
                if upgrading:  # a ledger older than its hourly rollups: the next attribution run rolls it up,
                    self.pend_ledger_hours()  # and readers use the ledger until then
        except duckdb.Error as exc:
            hint = (
                "another process holds the file for writing: read it with read_only=True or stop the writer"
                if "lock" in str(exc).lower()
                else "check the path and that the file is a gpuledger DuckDB database"
            )
            raise StoreError(f"cannot open {self.path}: {exc}", hint=hint) from None

    def close(self) -> None:
        self.con.close()

    def has_table(self, name: str) -> bool:
        """Whether the file has this table (a read-only open of an older file may lack newer ones)."""
        return bool(self.scalar("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]))

    def pend_ledger_hours(self) -> None:
        """Mark every hour the ledger has as pending: its ``ledger_hourly`` rollup is recomputed next run."""
        self.execute(f"INSERT INTO ledger_hourly_pending SELECT DISTINCT interval_start_ns - interval_start_ns % "
                     f"{HOUR_NS} FROM ledger ON CONFLICT DO NOTHING")

    def _exec(self, sql: str, params: Sequence[Any] | None = None) -> None:
        # DuckDB 2 refuses new work while a statement's result is unread: drain it.
        self.con.execute(sql, params or []).fetchall()

    def _rollback(self) -> None:
        """Roll back after a failure; a connection that is itself gone has nothing to undo."""
        try:
            self._exec("ROLLBACK")
        except duckdb.Error:
            pass

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing -------------------------------------------------------------

    def write_messages(
        self, messages: Sequence[wire.Message], sources: Sequence[str | None] | None = None
    ) -> int:
        """Store decoded messages in one transaction; returns how many were new.

        Idempotent on (agent_id, boot_id, seq): a message already stored, or
        repeated inside the batch, is skipped whole (see ``write_arrow``).
        """
        if not messages:
            return 0
        return self.write_arrow(batch_to_arrow(messages, sources or [None] * len(messages)))

    def write_arrow(self, tables: Mapping[str, pa.Table]) -> int:
        """Bulk-store one decoded batch (``ingest.batch.ArrowBatch.tables``) in one
        transaction; returns how many messages were new.

        Every table carries ``_m``, the message's ordinal in the batch (not
        stored). Idempotent on (agent_id, boot_id, seq): messages already
        stored, or repeated inside the batch, are dropped whole with their rows
        (an Arrow filter on ``_m``) before one ``INSERT ... SELECT`` per table.
        """
        msgs = tables["messages"]
        if msgs.num_rows == 0:
            return 0
        with self._lock:
            try:
                self._exec("BEGIN")
                self.con.register("_keys", msgs.select(["agent_id", "boot_id", "seq", "_m"]))
                fresh = [r[0] for r in self.con.execute(
                    "SELECT min(k._m) FROM _keys k ANTI JOIN messages m USING (agent_id, boot_id, seq) "
                    "GROUP BY k.agent_id, k.boot_id, k.seq").fetchall()]
                self.con.unregister("_keys")
                keep = None if len(fresh) == msgs.num_rows else pa.array(fresh, pa.int32())
                for name, table in tables.items():
                    if name == "pods":
                        continue
                    if keep is not None:
                        table = table.filter(pa.compute.is_in(table["_m"], value_set=keep))
                    if table.num_rows:
                        cols = ", ".join(f'"{c}"' for c in table.column_names if c != "_m")
                        self.con.register("_batch", table)
                        self._exec(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM _batch")
                        self.con.unregister("_batch")
                pods = tables.get("pods")
                if fresh and pods is not None and pods.num_rows:
                    self.con.register("_batch", pods)
                    self._exec(f"INSERT INTO pods SELECT * FROM _batch {PODS_LATEST_WINS}")
                    self.con.unregister("_batch")
                self._exec("COMMIT")
            except duckdb.Error as exc:
                self._rollback()
                raise StoreError(f"writing a batch of {msgs.num_rows} messages failed: {exc}") from exc
            except BaseException:  # never leave the connection inside an open transaction
                self._rollback()
                raise
            return len(fresh)

    def compact_into(self, dest: str | Path, storage_version: str = "latest") -> int:
        """Copy the whole database into a new file, freshly laid out; returns its size in bytes.

        Ingest appends in many small transactions, which leaves partly filled
        row groups and free blocks behind; a copy rewrites every table in full
        row groups with the newest storage format's compression
        (``storage_version``: files in 'latest' need a DuckDB at least as new
        to read them). Maintenance for a closed month or before archiving:
        write the copy, stop writers, swap the files.
        """
        dest = Path(dest)
        if dest.exists():
            raise StoreError(f"{dest} exists", hint="compact into a new path, then swap the files")
        with self._lock:
            try:
                self._exec(f"ATTACH ? AS _compact (STORAGE_VERSION '{storage_version}')", [str(dest)])
                try:
                    self._exec(f"COPY FROM DATABASE {self._name()} TO _compact")
                finally:
                    self._exec("DETACH _compact")
            except duckdb.Error as exc:
                raise StoreError(f"compacting into {dest} failed: {exc}") from exc
        return dest.stat().st_size

    def _name(self) -> str:
        return str(self.scalar("SELECT current_database()"))

    @classmethod
    def open_segments(cls, root: str | Path) -> Store:
        """An in-memory Store whose raw tables are views over Parquet segments under ``root``
        (``ingest.segments`` layout), queried in place.

        Per message key the rows of one segment only are visible (the lowest
        segment id), so a batch two workers both wrote counts once; ``pods``
        shows each pod as last seen; ``dead_letters`` each record once. The
        ``day`` partition directories prune scans filtered on time. Tables
        without segments stay empty; ``ledger`` and ``attributed`` are
        ordinary (in-memory) tables.
        """
        store = cls(":memory:")
        root = Path(root)

        def files(name: str) -> str | None:
            return f"{root}/{name}/*/*.parquet" if any((root / name).glob("*/*.parquet")) else None

        def src(name: str) -> str:
            return f"read_parquet('{files(name)}', hive_partitioning = true, union_by_name = true)"

        try:
            if files("messages"):
                store._exec(f"CREATE VIEW _seg_messages AS SELECT * FROM {src('messages')}")
                store._exec("CREATE VIEW _chosen AS SELECT agent_id, boot_id, seq, min(seg) AS seg "
                            "FROM _seg_messages GROUP BY ALL")
                cols = store._columns("messages", "_seg_messages")  # older segments lack newer columns
                store._exec("DROP TABLE messages")
                store._exec(f"CREATE VIEW messages AS SELECT {cols} FROM _seg_messages m "
                            "SEMI JOIN _chosen USING (agent_id, boot_id, seq, seg)")
                for name in _ROW_TABLES:
                    if files(name):
                        cols = store._columns(name, src(name))
                        store._exec(f"DROP TABLE {name}")
                        store._exec(f"CREATE VIEW {name} AS SELECT {cols} FROM {src(name)} t "
                                    "SEMI JOIN _chosen USING (agent_id, boot_id, seq, seg)")
            if files("pods"):
                store._exec("DROP TABLE pods")
                store._exec("CREATE VIEW pods AS SELECT pod_uid, arg_max(namespace, last_seen_ns) AS namespace, "
                            "arg_max(name, last_seen_ns) AS name, arg_max(labels, last_seen_ns)::JSON AS labels, "
                            f"max(last_seen_ns) AS last_seen_ns FROM {src('pods')} GROUP BY pod_uid")
            if files("dead_letters"):
                store._exec("DROP TABLE dead_letters")
                store._exec('CREATE VIEW dead_letters AS SELECT topic, partition, "offset", reason, payload, size_bytes, '
                            "to_timestamp(interval_start_ns / 1e9) AS received_at "
                            f"FROM {src('dead_letters')} QUALIFY row_number() OVER "
                            '(PARTITION BY topic, partition, "offset" ORDER BY seg) = 1')
        except duckdb.Error as exc:
            store.close()
            raise StoreError(f"cannot read segments under {root}: {exc}",
                             hint="is it a gpuledger segment directory (ingest --segments)?") from exc
        return store

    def _columns(self, table: str, source: str) -> str:
        """A SELECT list giving ``source``'s rows the table's columns in order (NULL for columns it lacks)."""
        cols = self.query("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? "
                          "ORDER BY column_index", [table]).rows()
        found = set(self.query(f"DESCRIBE SELECT * FROM {source}")["column_name"])
        return ", ".join(f'"{c}"' if c in found else f'NULL::{t} AS "{c}"' for c, t in cols)

    def absorb(self, path: str | Path) -> int:
        """Copy in what another gpuledger file holds and this one lacks; returns new messages.

        The merge step of N ingest workers (one DuckDB file each): idempotent
        on (agent_id, boot_id, seq) like ingest itself, so a message both a
        dead worker and its successor stored (stored, not yet committed, then
        redelivered) is kept once, and absorbing the same file twice changes
        nothing. Dead letters merge on (topic, partition, offset); pods by
        latest seen. The other file is attached read-only: its worker must not
        hold it at that moment (workers release their file between flushes).
        """
        with self._lock:
            try:
                self._exec("ATTACH ? AS _w (READ_ONLY)", [str(path)])
            except duckdb.Error as exc:
                raise StoreError(f"cannot attach {path}: {exc}",
                                 hint="is a worker holding it (--hold-db)? it is free between flushes") from exc
            try:
                self._exec("BEGIN")
                self._exec("CREATE TEMP TABLE _new AS SELECT agent_id, boot_id, seq FROM _w.messages "
                           "ANTI JOIN messages USING (agent_id, boot_id, seq)")
                added = int(self.scalar("SELECT count(*) FROM _new"))
                self._exec("INSERT INTO messages BY NAME SELECT * FROM _w.messages "
                           "SEMI JOIN _new USING (agent_id, boot_id, seq)")
                for name in _ROW_TABLES:
                    self._exec(f"INSERT INTO {name} BY NAME SELECT * FROM _w.{name} "
                               "SEMI JOIN _new USING (agent_id, boot_id, seq)")
                self._exec(f"INSERT INTO pods BY NAME SELECT * FROM _w.pods {PODS_LATEST_WINS}")
                self._exec(f"INSERT INTO dead_letters BY NAME SELECT * FROM _w.dead_letters d WHERE {NEW_DEAD_LETTER}")
                self._exec("DROP TABLE _new")
                self._exec("COMMIT")
            except duckdb.Error as exc:
                self._rollback()
                raise StoreError(f"merging {path} failed: {exc}") from exc
            finally:
                self._exec("DETACH _w")
            return added

    def write_dead_letters(self, letters: Iterable[DeadLetter]) -> int:
        """Store undecodable records; returns how many were new.

        Idempotent on (topic, partition, offset) when all three are known, so a
        redelivered batch does not list the same bad record twice.
        """
        rows = [(d.topic, d.partition, d.offset, d.reason, d.payload, len(d.payload)) for d in letters]
        if not rows:
            return 0
        with self._lock:
            try:
                self._exec("BEGIN")
                before = self.count("dead_letters")
                self.con.executemany(  # noqa: the result is drained by count() below
                    'INSERT INTO dead_letters (topic, partition, "offset", reason, payload, size_bytes) SELECT * FROM '
                    '(SELECT $1::VARCHAR AS topic, $2::INTEGER AS partition, $3::BIGINT AS "offset", $4 AS reason, '
                    f"$5::BLOB AS payload, $6::BIGINT AS size_bytes) d WHERE {NEW_DEAD_LETTER}",
                    rows,
                )
                added = self.count("dead_letters") - before
                self._exec("COMMIT")
            except duckdb.Error as exc:
                self._rollback()
                raise StoreError(f"writing {len(rows)} dead letters failed: {exc}") from exc
        return added

    def append(self, table: str, frame: pl.DataFrame) -> None:
        """Append a Polars frame to a table (columns by name)."""
        if frame.height == 0:
            return
        with self._lock:
            arrow = frame.to_arrow()
            self.con.register("_frame", arrow)
            cols = ", ".join(f'"{c}"' for c in frame.columns)
            self._exec(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _frame")
            self.con.unregister("_frame")

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        with self._lock:
            self._exec(sql, params or [])

    def transaction(self) -> _Transaction:
        return _Transaction(self)

    # --- reading -------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        with self._lock:
            try:
                rel = self.con.sql(sql, params=params or None)
                return rel.pl() if rel is not None else pl.DataFrame()
            except duckdb.Error as exc:
                raise StoreError(f"query failed: {exc}") from exc

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        with self._lock:
            rows = self.con.execute(sql, params or []).fetchall()
        return rows[0][0] if rows else None

    def count(self, table: str) -> int:
        return int(self.scalar(f"SELECT count(*) FROM {table}"))


class _Transaction:
    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> Store:
        self.store._lock.acquire()
        self.store._exec("BEGIN")
        return self.store

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            self.store._exec("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.store._lock.release()


# --- batch conversion (no per-row Python: per message, then numpy) -----------


def batch_to_arrow(messages: Sequence[wire.Message], sources: Sequence[str | None]) -> dict[str, pa.Table]:
    """Flatten decoded messages into one Arrow table per stored table."""
    out: dict[str, pa.Table] = {
        "messages": pa.table(
            {
                "agent_id": [m.agent_id for m in messages],
                "boot_id": [m.boot_id for m in messages],
                "seq": pa.array([m.seq for m in messages], pa.uint64()),
                "node": [m.node for m in messages],
                "interval_start_ns": pa.array([m.interval_start_ns for m in messages], pa.int64()),
                "interval_end_ns": pa.array([m.interval_end_ns for m in messages], pa.int64()),
                "schema_version": pa.array([m.schema_version for m in messages], pa.uint16()),
                "driver_version": [m.driver_version for m in messages],
                "source": list(sources),
                "allocations_unavailable": pa.array(
                    [wire.header_note(m.extra.get("allocations_unavailable")) for m in messages], pa.string()),
                "_m": pa.array(range(len(messages)), pa.int32()),  # ordinal in the batch (not stored)
            }
        )
    }
    for name in _ROW_TABLES:
        out[name] = _row_table(messages, name)
    out["pods"] = _pods_table(messages)
    return out


def _row_table(messages: Sequence[wire.Message], name: str) -> pa.Table:
    arrays = [getattr(m, name) for m in messages]
    counts = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    rows = np.concatenate(arrays) if arrays else wire.empty(name)
    cols: dict[str, pa.Array] = {
        "_m": pa.array(np.repeat(np.arange(len(messages), dtype=np.int32), counts)),
        "agent_id": _repeat([m.agent_id for m in messages], counts),
        "boot_id": _repeat([m.boot_id for m in messages], counts),
        "seq": pa.array(np.repeat([m.seq for m in messages], counts).astype(np.uint64)),
        "node": _repeat([m.node for m in messages], counts),
        "interval_start_ns": pa.array(np.repeat([m.interval_start_ns for m in messages], counts).astype(np.int64)),
        "interval_end_ns": pa.array(np.repeat([m.interval_end_ns for m in messages], counts).astype(np.int64)),
    }
    # Global string table: offsets shift each message's indices into one list.
    strings: list[str] = []
    str_offset = np.zeros(len(messages), dtype=np.int64)
    for j, m in enumerate(messages):
        str_offset[j] = len(strings)
        strings.extend(m.strings)
    str_off = np.repeat(str_offset, counts)
    pods_flat: list[dict[str, Any]] = []
    pod_offset = np.zeros(len(messages), dtype=np.int64)
    for j, m in enumerate(messages):
        pod_offset[j] = len(pods_flat)
        pods_flat.extend(m.pods)
    pod_off = np.repeat(pod_offset, counts)
    string_values = pa.array(strings, pa.string())
    for col in rows.dtype.names or ():
        values = rows[col]
        if col == "pod":
            idx = values.astype(np.int64)
            valid = idx >= 0
            gidx = np.where(valid, idx + pod_off, 0)
            for key, out_col in (("uid", "pod_uid"), ("namespace", "namespace"), ("name", "pod")):
                table = pa.array([p[key] for p in pods_flat] or [""], pa.string())
                cols[out_col] = _take(table, gidx, valid)
        elif name in _STRING_COLUMNS and col in _STRING_COLUMNS[name]:
            idx = values.astype(np.int64)
            valid = idx != wire.NULL_STR
            gidx = np.where(valid, idx + str_off, 0)
            cols[col] = _take(string_values if strings else pa.array([""]), gidx, valid)
        elif values.dtype.kind == "f":
            cols[col] = pa.array(values, from_pandas=True)  # NaN -> NULL: missing, not zero
        else:
            cols[col] = pa.array(values)
    return pa.table(cols)


_STRING_COLUMNS = {
    "devices": {"uuid", "model", "profile"},
    "processes": {"container", "slurm_job"},
    "allocations": {"container", "resource"},
    "field_errors": {"field", "reason"},
}


def _take(values: pa.Array, idx: np.ndarray, valid: np.ndarray) -> pa.Array:
    taken = values.take(pa.array(idx))
    if valid.all():
        return taken
    return pa.compute.if_else(pa.array(valid), taken, pa.scalar(None, taken.type))


def _repeat(values: list[str], counts: np.ndarray) -> pa.Array:
    return pa.array(values, pa.string()).take(pa.array(np.repeat(np.arange(len(values)), counts)))


def _pods_table(messages: Sequence[wire.Message]) -> pa.Table:
    latest: dict[str, tuple[str, str, str, int]] = {}
    for m in messages:
        for p in m.pods:
            seen = latest.get(p["uid"])
            if seen is None or seen[3] <= m.interval_end_ns:
                labels = json.dumps(p.get("labels", {}), sort_keys=True)
                latest[p["uid"]] = (p["namespace"], p["name"], labels, m.interval_end_ns)
    return pa.table(
        {
            "pod_uid": list(latest),
            "namespace": [v[0] for v in latest.values()],
            "name": [v[1] for v in latest.values()],
            "labels": [v[2] for v in latest.values()],
            "last_seen_ns": pa.array([v[3] for v in latest.values()], pa.int64()),
        }
    )
