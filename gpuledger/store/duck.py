"""The Store: the one module that imports ``duckdb``.

Who writes: one ingest worker per file, holding it only while a flush
writes (``gpuledger.ingest.opener``); between flushes ``gpuledger
attribute``/``retention`` open it for writing and the API read-only
(``Store(path, read_only=True)``), each for one job or request. N workers
share the lake (:mod:`gpuledger.store.lake`), not a file. See docs/storage.md; the tables are
in :mod:`gpuledger.store.schema`, brought up to date on a writable open by
:mod:`gpuledger.store.migrations`.

Errors: every method translates DuckDB's exceptions here, and only here,
into :class:`gpuledger.errors.StoreError` or the subclass that says what
happened (``StoreLocked``, ``StoreCorrupt``, ``StoreMissingTable``; see
:func:`_translate`). The connection is private: callers use these methods.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute  # noqa: F401  # pa.compute.is_in

from gpuledger import wire
from gpuledger.errors import StoreCorrupt, StoreError, StoreLocked, StoreMissingTable
from gpuledger.store import files
from gpuledger.store.arrow import batch_to_arrow
from gpuledger.store.migrations import migrate
from gpuledger.store.schema import NEW_DEAD_LETTER, PODS_LATEST_WINS
from gpuledger.timeutil import HOUR_NS

__all__ = ["DeadLetter", "Store", "configure"]

#: DuckDB settings every Store opened by this process applies (``configure``; the CLI sets them from Settings).
_SETTINGS: dict[str, str] = {}


def configure(*, memory_limit: str | None = None) -> None:
    """Bound the memory DuckDB takes in this process (each Store opened from now on).

    ``memory_limit`` (e.g. ``1GB``): DuckDB's buffer manager keeps its data
    under it and spills what does not fit (sorts, joins, aggregates) to a
    temporary directory (``<file>.tmp`` next to a database file); a query that
    cannot spill fails with an out-of-memory error instead of growing. None:
    DuckDB's default (80 % of the machine's memory).
    """
    _SETTINGS.pop("memory_limit", None)
    if memory_limit is not None:
        _SETTINGS["memory_limit"] = memory_limit

#: One migration at a time per process: two Stores of one file in one process share DuckDB's instance.
_MIGRATING = threading.Lock()


def _translate(exc: duckdb.Error, what: str, hint: str | None = None) -> StoreError:
    """DuckDB's exception as the project's error type (``hint``: for a plain StoreError).

    DuckDB says which case it is only in the message (a lock conflict and a
    missing file are both ``IOException``), so the message is read here, once.
    """
    text = str(exc)
    kind: type[StoreError] = StoreError
    if isinstance(exc, duckdb.IOException) and "Could not set lock" in text:
        kind = StoreLocked
    elif isinstance(exc, duckdb.IOException) and "not a valid DuckDB database" in text:
        kind = StoreCorrupt
    elif isinstance(exc, duckdb.CatalogException) and text.startswith("Catalog Error: Table with name"):
        kind = StoreMissingTable
    return kind(f"{what}: {text}", hint=hint if kind is StoreError else None)  # a typed error keeps its own hint


@contextmanager
def _translated(what: str, hint: str | None = None) -> Iterator[None]:
    try:
        yield
    except duckdb.Error as exc:
        raise _translate(exc, what, hint) from exc


@dataclass(frozen=True)
class DeadLetter:
    """A record kept out of the books, with why (``reason``) and where it came from."""

    reason: str
    payload: bytes
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    quarantined: bool = False  # decodable, but its interval failed the clock check (not stored: see reason)


class Store:
    """A DuckDB file (or ``:memory:``) holding gpuledger's tables.

    A writable open brings the file's schema up to date (``migrations``); a
    read-only open reads the file as it is. Errors: ``StoreLocked`` when
    another process holds the file, ``StoreCorrupt`` when it is not a
    DuckDB database, ``StoreTooNew`` when a newer gpuledger migrated it.
    """

    def __init__(self, path: str | Path = ":memory:", read_only: bool = False) -> None:
        self.path = str(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        with _translated(f"cannot open {self.path}", "check the path and that the file is a gpuledger DuckDB database"):
            self._con = duckdb.connect(self.path, read_only=read_only)
            for name, value in _SETTINGS.items():
                self._con.execute(f"SET {name} = '{value}'")
        if not read_only:
            try:
                with _MIGRATING:
                    migrate(self)
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        with _translated(f"closing {self.path}"):
            self._con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has_table(self, name: str) -> bool:
        """Whether the file has this table (a read-only open of an older file may lack newer ones)."""
        return bool(self.scalar("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]))

    def pend_ledger_hours(self) -> None:
        """Mark every hour the ledger has as pending: its ``ledger_hourly`` rollup is recomputed next run."""
        self.execute(f"INSERT INTO ledger_hourly_pending SELECT DISTINCT interval_start_ns - interval_start_ns % "
                     f"{HOUR_NS} FROM ledger ON CONFLICT DO NOTHING")

    def _exec(self, sql: str, params: Sequence[Any] | None = None) -> None:
        # DuckDB 2 refuses new work while a statement's result is unread: drain it.
        self._con.execute(sql, params or []).fetchall()

    def _rollback(self) -> None:
        """Roll back after a failure; a connection that is itself gone has nothing to undo."""
        try:
            self._exec("ROLLBACK")
        except duckdb.Error:
            pass

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
                self._con.register("_keys", msgs.select(["agent_id", "boot_id", "seq", "_m"]))
                fresh = [r[0] for r in self._con.execute(
                    "SELECT min(k._m) FROM _keys k ANTI JOIN messages m USING (agent_id, boot_id, seq) "
                    "GROUP BY k.agent_id, k.boot_id, k.seq").fetchall()]
                self._con.unregister("_keys")
                keep = None if len(fresh) == msgs.num_rows else pa.array(fresh, pa.int32())
                for name, table in tables.items():
                    if name == "pods":
                        continue
                    if keep is not None:
                        table = table.filter(pa.compute.is_in(table["_m"], value_set=keep))
                    if table.num_rows:
                        cols = ", ".join(f'"{c}"' for c in table.column_names if c != "_m")
                        self._con.register("_batch", table)
                        self._exec(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM _batch")
                        self._con.unregister("_batch")
                pods = tables.get("pods")
                if fresh and pods is not None and pods.num_rows:
                    self._con.register("_batch", pods)
                    self._exec(f"INSERT INTO pods SELECT * FROM _batch {PODS_LATEST_WINS}")
                    self._con.unregister("_batch")
                self._exec("COMMIT")
            except duckdb.Error as exc:
                self._rollback()
                raise _translate(exc, f"writing a batch of {msgs.num_rows} messages failed") from exc
            except BaseException:  # never leave the connection inside an open transaction
                self._rollback()
                raise
            return len(fresh)

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
                before = self._count("dead_letters")
                self._con.executemany(  # the result is drained by _count() below
                    'INSERT INTO dead_letters (topic, partition, "offset", reason, payload, size_bytes) SELECT * FROM '
                    '(SELECT $1::VARCHAR AS topic, $2::INTEGER AS partition, $3::BIGINT AS "offset", $4 AS reason, '
                    f"$5::BLOB AS payload, $6::BIGINT AS size_bytes) d WHERE {NEW_DEAD_LETTER}",
                    rows,
                )
                added = self._count("dead_letters") - before
                self._exec("COMMIT")
            except duckdb.Error as exc:
                self._rollback()
                raise _translate(exc, f"writing {len(rows)} dead letters failed") from exc
        return added

    def append(self, table: str, frame: pl.DataFrame) -> None:
        """Append a Polars frame to a table (columns by name)."""
        if frame.height == 0:
            return
        cols = ", ".join(f'"{c}"' for c in frame.columns)
        with self.registered(_frame=frame):
            self.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _frame")

    def replace_hours(self, table: str, parts: Sequence[tuple[int, Mapping[str, str], pa.Table]]) -> int:
        """Replace whole (hour, scope) parts of a product table in one transaction (the
        :class:`~gpuledger.store.protocol.HourlyWriter` seam); returns the rows written."""
        written = 0
        with self.transaction() as tx:
            for hour, scope, rows in parts:
                where = " AND ".join(["hour_start_ns = ?", *(f'"{c}" = ?' for c in scope)])
                tx.execute(f"DELETE FROM {table} WHERE {where}", [hour, *scope.values()])
                if rows.num_rows:
                    tx.append(table, pl.DataFrame(rows))
                written += rows.num_rows
        return written

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        """Run a statement (or several, without parameters), discarding any result."""
        with self._lock, _translated("statement failed"):
            self._exec(sql, params or [])

    def transaction(self) -> _Transaction:
        """``with store.transaction() as tx``: one transaction, rolled back if the block raises."""
        return _Transaction(self)

    @contextmanager
    def registered(self, **frames: pa.Table | pl.DataFrame) -> Iterator[None]:
        """Make Arrow tables or Polars frames queryable under the given names for the block (zero copy)."""
        with self._lock:
            with _translated(f"registering {', '.join(frames)}"):
                for name, frame in frames.items():
                    self._con.register(name, frame.to_arrow() if isinstance(frame, pl.DataFrame) else frame)
            try:
                yield
            finally:
                with _translated(f"unregistering {', '.join(frames)}"):
                    for name in frames:
                        self._con.unregister(name)

    # --- other files ---------------------------------------------------------

    def compact_into(self, dest: str | Path, storage_version: str = "latest") -> int:
        """Copy the whole database into a new file, freshly laid out; returns its size in bytes
        (see :func:`gpuledger.store.files.compact_into`)."""
        return files.compact_into(self, Path(dest), storage_version)

    def database_name(self) -> str:
        return str(self.scalar("SELECT current_database()"))

    # --- reading -------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> pl.DataFrame:
        with self._lock, _translated("query failed"):
            rel = self._con.sql(sql, params=params or None)
            frame: pl.DataFrame = rel.pl() if rel is not None else pl.DataFrame()
            return frame

    def arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        """The result of ``sql`` as one Arrow table (DuckDB's types: VARCHAR is ``string``)."""
        with self._lock, _translated("query failed"):
            table: pa.Table = self._con.sql(sql, params=params or None).to_arrow_table()
            return table

    def batches(self, sql: str, params: Sequence[Any] | None = None, rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        """The result of ``sql`` as Arrow record batches of up to ``rows`` rows, read as they are consumed
        (bounded memory: a copy of a large table never holds it whole). It reads through a cursor of its own:
        frames registered on the store are not visible to ``sql``."""
        with self._lock, _translated("query failed"):
            cursor = self._con.cursor()
            reader = cursor.sql(sql, params=params or None).to_arrow_reader(rows)
        try:
            while True:
                with _translated("query failed"):
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        return
                yield batch
        finally:
            cursor.close()

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        with self._lock, _translated("query failed"):
            rows = self._con.execute(sql, params or []).fetchall()
        return rows[0][0] if rows else None

    def count(self, table: str) -> int:
        return int(self.scalar(f"SELECT count(*) FROM {table}"))

    def _count(self, table: str) -> int:
        row = self._con.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(row[0]) if row else 0


class _Transaction:
    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> Store:
        self.store._lock.acquire()
        try:
            with _translated("BEGIN failed"):
                self.store._exec("BEGIN")
        except BaseException:
            self.store._lock.release()
            raise
        return self.store

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type:
                self.store._rollback()
            else:
                with _translated("COMMIT failed"):
                    self.store._exec("COMMIT")
        finally:
            self.store._lock.release()
