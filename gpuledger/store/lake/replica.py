"""Serving from the lake: a local DuckDB cache of what the API reads, rebuilt when the lake's snapshots move.

An API replica (``gpuledger serve --lake``) keeps no state of its own: it
copies what the API's views read from the lake into a DuckDB file in its cache
directory, and the API reads that file exactly as it reads the embedded store
(``gpuledger.api.reader``: read-only per request, results cached by the file's
version). What the file holds:

- the product tables (:data:`ROLLUP_TABLES`: ``ledger_hourly``, ``work_units``,
  ``queue_hourly``), whole: every showback, series, efficiency, economics,
  budget, unit and queue answer and the chargeback file are made of them;
- the raw tables the fleet view reads (``messages``, ``devices``,
  ``allocations``, ``field_errors``; ``pods`` by latest seen,
  for label dimensions) for the newest ``raw_days`` UTC days the lake holds
  (partition pruned). The fleet view joins every record table on
  ``messages``, so rows of a message whose ``messages`` row is not committed
  yet (the writer commits it last) are held but not shown until it is;
- the closed months and billed rows of the metadata store, so
  ``/v1/chargeback.csv`` returns a closed month's bytes;
- ``ledger_window`` set to the end of time: the interval-grain ledger is not in
  the lake, so every hour is answered from the rollups (the same totals, costs
  and hourly or coarser buckets as the ledger: tests/api/test_hourly_reads.py);
  a drill-down shows hour-grain rows (``grain: hour``).

Refresh: every ``refresh_s`` the replica reads each table's current snapshot
id from the catalog (no data) and the closed months; unchanged -> nothing is
read. Otherwise a new file is built completely beside the old one -- the
served file copied on local disk, then for each table whose snapshot moved
only the lake's data files the copy does not hold yet (``lake_files``) read as
Arrow batches and appended; a table one of whose held files is gone (an
overwrite, a delete, compaction) is read again whole -- checkpointed, and
renamed over the served path (``os.replace``: atomic; a request that opened
the old file finishes on it). The ids it holds are in its ``lake_sync`` table.

The lake unreachable at a refresh: the last complete file keeps being served;
:meth:`LakeReplica.age_s` (``/healthz`` and the ``gpuledger_lake_snapshot_age_seconds``
gauge) says how old it is, and each failure is logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.expressions import AlwaysTrue, BooleanExpression, GreaterThanOrEqual, LessThan
from pyiceberg.io.pyarrow import ArrowScan

from gpuledger.errors import GpuledgerError, StoreError
from gpuledger.store.duck import Store
from gpuledger.store.lake.schema import DAY_COLUMN, HOUR_COLUMN, ROLLUP_TABLES
from gpuledger.store.lake.writer import LakeStore
from gpuledger.store.metadata import Metadata
from gpuledger.store.schema import PODS_LATEST_WINS
from gpuledger.timeutil import DAY_NS

log = logging.getLogger(__name__)

__all__ = ["FAR_FUTURE_NS", "RAW_SERVED", "LakeReplica", "copy_name", "copy_table", "month_store"]

#: The raw tables a replica serves (the fleet view). Not ``processes``: no API view reads it (attribution does),
#: and it is the largest raw table.
RAW_SERVED = ("messages", "devices", "allocations", "field_errors")
#: ``ledger_window.kept_from_ns`` of a replica's file: every hour before it is answered from the rollups.
FAR_FUTURE_NS = 2**62
SERVED = "serving.duckdb"


def copy_table(lake: LakeStore, store: Store, name: str, row_filter: BooleanExpression | None = None,
               *, on_rows: Callable[[int], None] | None = None) -> int:
    """Copy lake table ``name`` (rows matching ``row_filter``) into ``store``'s table of that name, Arrow batch
    by Arrow batch (the lake-only partition column left out); returns the rows copied."""
    columns = _columns(store, name)
    copied = 0
    for batch in _batches(lake, name, row_filter):
        names = [c for c in batch.schema.names if c in columns]
        cols = ", ".join(f'"{c}"' for c in names)
        with store.registered(_batch=pa.Table.from_batches([batch])):
            store.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM _batch")
        copied += batch.num_rows
        if on_rows is not None:
            on_rows(batch.num_rows)
    return copied


def _batches(lake: LakeStore, name: str, row_filter: BooleanExpression | None) -> Iterator[pa.RecordBatch]:
    table = lake.table(name).refresh()
    reader = table.scan(row_filter=row_filter or AlwaysTrue()).to_arrow_batch_reader()
    drop = {HOUR_COLUMN, DAY_COLUMN}
    for batch in reader:
        if batch.num_rows:
            keep = [i for i, f in enumerate(batch.schema) if f.name not in drop]
            yield batch.select(keep)


def _columns(store: Store, table: str) -> set[str]:
    return set(store.query("SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [table])["column_name"])


def month_filter(month_start_ns: int, month_end_ns: int) -> BooleanExpression:
    """Rows of the product tables whose hour is in [start, end): one month partition (pruned)."""
    return _range(HOUR_COLUMN, month_start_ns // 1000, month_end_ns // 1000)


# pyiceberg's predicates are pydantic models with positional constructors the pydantic mypy plugin does not see.
def _range(column: str, lo: int, hi: int | None = None) -> BooleanExpression:
    low: BooleanExpression = GreaterThanOrEqual(column, lo)  # type: ignore[call-arg,misc,unused-ignore]
    if hi is None:
        return low
    from pyiceberg.expressions import And

    return And(low, LessThan(column, hi))  # type: ignore[call-arg,misc,unused-ignore]


def seed_closes(store: Store, meta: Metadata) -> None:
    """Copy the metadata store's closed months and billed rows into ``store``'s close tables (replacing them)."""
    closes, billed = meta.closes(), meta.billed()
    with store.transaction() as tx:
        tx.execute("DELETE FROM chargeback_billed")
        tx.execute("DELETE FROM chargeback_closes")
        if closes.height:
            columns = _ordered(tx, "chargeback_closes")
            tx.append("chargeback_closes", closes.select(columns))
        if billed.height:
            tx.append("chargeback_billed", billed)


def _ordered(store: Store, table: str) -> list[str]:
    return store.query("SELECT column_name FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index",
                       [table])["column_name"].to_list()


def month_store(lake: LakeStore, meta: Metadata, path: Path, months: Iterable[tuple[int, int]],
                on_rows: Callable[[int], None] | None = None) -> Store:
    """A DuckDB file at ``path`` with the lake's rollups of ``months`` ([start, end) ns each: one partition
    read each, Arrow batches) and the metadata store's closes: what ``analytics.closing`` reads for a month's
    export and close (the file's own ``--memory-limit`` bounds it). The caller closes it."""
    store = Store(path)
    try:
        for lo, hi in sorted(set(months)):
            for name in ("ledger_hourly",):
                copy_table(lake, store, name, month_filter(lo, hi), on_rows=on_rows)
        _rollups_only(store)
        seed_closes(store, meta)
    except BaseException:
        store.close()
        raise
    return store


def _rollups_only(store: Store) -> None:
    """Answer every hour from the rollups: the interval-grain ledger is not in the lake (module doc)."""
    store.execute("INSERT OR REPLACE INTO ledger_window (id, kept_from_ns) VALUES (1, ?)", [FAR_FUTURE_NS])


def copy_name(wanted: dict[str, Any]) -> str:
    """The file name of the copy of these snapshots (:meth:`LakeReplica.wanted`): what ``/healthz`` calls
    ``lake_snapshot``, so a caller can tell when a replica serves a given state of the lake."""
    digest = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]
    return f"lake-{digest}.duckdb"


class LakeReplica:
    """The local cache one API replica serves (module doc): ``path`` is what the API reads."""

    def __init__(self, lake: LakeStore, meta: Metadata, cache_dir: str | Path, *, refresh_s: float = 30.0,
                 raw_days: int = 2, clock: Callable[[], float] = time.time) -> None:
        self.lake, self.meta = lake, meta
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.cache_dir / SERVED
        self.refresh_s, self.raw_days, self.clock = refresh_s, raw_days, clock
        self.synced_at: float | None = None  # when the served file was last known to match the lake
        self.last_error: str | None = None
        self.builds = 0  # files built (a refresh that found nothing new builds none)
        self.rows_read = 0  # rows the last build read from the lake (the rest came from the previous copy)
        self._held: dict[str, Any] | None = self._read_held()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- state -------------------------------------------------------------

    def age_s(self) -> float | None:
        """Seconds since the served file was last known to match the lake (None: never synced)."""
        return None if self.synced_at is None else max(0.0, self.clock() - self.synced_at)

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` says about the lake: the snapshot served, its age, the last error."""
        age = self.age_s()
        return {"lake_snapshot": None if self._held is None else self._held.get("name"),
                "lake_snapshot_age_s": None if age is None else round(age, 3),
                "lake_error": self.last_error}

    def wanted(self) -> dict[str, Any]:
        """The lake's current snapshot ids and closed months (no data is read)."""
        ids: dict[str, Any] = {name: self.lake.snapshot_id(name) for name in (*ROLLUP_TABLES, *RAW_SERVED, "pods")}
        ids["closed"] = sorted(self.meta.closed())
        ids["raw_days"] = self.raw_days
        return ids

    # --- syncing -----------------------------------------------------------

    def sync(self) -> bool:
        """Bring the served file up to the lake; True when a new file was swapped in."""
        wanted = self.wanted()
        held = {k: v for k, v in (self._held or {}).get("ids", {}).items() if k != "raw_since_ns"}
        if self._held is not None and held == wanted and self.path.exists():
            self.synced_at = self.clock()
            self.last_error = None
            return False
        name = copy_name(wanted)
        building = self.cache_dir / f"{name}.building"
        for stale in (building, Path(f"{building}.wal")):
            stale.unlink(missing_ok=True)
        t0 = time.monotonic()
        try:
            rows = self._build(building, wanted)
            os.replace(building, self.path)
        except BaseException:  # a half-built copy is never served, nor left behind
            for part in (building, Path(f"{building}.wal")):
                part.unlink(missing_ok=True)
            raise
        self.rows_read = rows
        self._held = {"name": name, "ids": wanted}
        self.synced_at = self.clock()
        self.last_error = None
        self.builds += 1
        log.info("lake replica: serving %s (%s rows read, %.2f s)", name, f"{rows:,}", time.monotonic() - t0)
        return True

    def _build(self, path: Path, wanted: dict[str, Any]) -> int:
        """The new file at ``path``: the served one copied (local disk), then each table whose snapshot moved
        brought up to date by reading only the lake's data files it does not hold yet (:meth:`_sync_table`)."""
        held = self._held["ids"] if self._held is not None and self.path.exists() else {}
        if held:
            shutil.copyfile(self.path, path)
        rows = 0
        with Store(path) as store:
            store.execute("CREATE TABLE IF NOT EXISTS lake_files (tbl VARCHAR NOT NULL, path VARCHAR NOT NULL)")
            for name in ROLLUP_TABLES:
                rows += self._sync_table(store, name, held, wanted, None)
            newest = self._newest_day()
            since_ns = None if newest is None else (newest - self.raw_days + 1) * DAY_NS
            window = None if since_ns is None else _range(DAY_COLUMN, since_ns // 1000)
            moved = held.get("raw_since_ns") != since_ns  # a new day: the window's oldest day leaves the copy
            wanted["raw_since_ns"] = since_ns
            for name in RAW_SERVED:
                rows += self._sync_table(store, name, held, wanted, window, full=moved, empty=window is None)
            rows += self._sync_table(store, "pods", held, wanted, None, latest_pods=True)
            _rollups_only(store)
            seed_closes(store, self.meta)
            store.execute("CREATE OR REPLACE TABLE lake_sync (name VARCHAR, ids JSON)")
            store.execute("INSERT INTO lake_sync VALUES (?, ?)", [path.name.removesuffix(".building"),
                                                                  json.dumps(wanted, sort_keys=True)])
            store.execute("CHECKPOINT")
        return rows

    def _sync_table(self, store: Store, name: str, held: dict[str, Any], wanted: dict[str, Any],
                    row_filter: BooleanExpression | None, *, full: bool = False, empty: bool = False,
                    latest_pods: bool = False) -> int:
        """Bring table ``name`` of the copy to the lake's snapshot; returns the rows read from the lake.

        Unchanged snapshot: nothing. Otherwise the scan is planned (catalog and
        manifests only) and only the data files the copy does not hold yet
        (``lake_files``) are read: appends -- ingest's flushes, a new hour of
        rollups -- cost what they added. When a file the copy holds is gone
        from the plan (an overwrite or delete: a month migrated again, a shard
        re-attributed, compaction), when a file carries delete files, or when
        ``full`` (the raw window moved), the table is copied again whole.
        """
        if not full and held.get(name) == wanted.get(name) and name in held:
            return 0
        files = {r[0] for r in store.query("SELECT path FROM lake_files WHERE tbl = ?", [name]).rows()}
        if wanted.get(name) is None or empty:
            self._clear(store, name)
            return 0
        table = self.lake.table(name).refresh()
        scan = table.scan(row_filter=row_filter or AlwaysTrue())
        tasks = list(scan.plan_files())
        paths = {t.file.file_path for t in tasks}
        if full or not files <= paths or any(t.delete_files for t in tasks):
            self._clear(store, name)
            files = set()
        todo = [t for t in tasks if t.file.file_path not in files]
        reader = ArrowScan(table.metadata, table.io, scan.projection(), scan.row_filter, scan.case_sensitive)
        columns = _columns(store, name)
        rows = 0
        for batch in reader.to_record_batches(todo):
            if batch.num_rows == 0:
                continue
            names = [c for c in batch.schema.names if c in columns and c not in (HOUR_COLUMN, DAY_COLUMN)]
            with store.registered(_batch=pa.Table.from_batches([batch])):
                if latest_pods:
                    cluster = "arg_max(cluster, last_seen_ns)" if "cluster" in names else "NULL"
                    store.execute("INSERT INTO pods SELECT pod_uid, arg_max(namespace, last_seen_ns), "
                                  "arg_max(name, last_seen_ns), arg_max(labels, last_seen_ns), "
                                  f"max(last_seen_ns), {cluster} FROM _batch GROUP BY pod_uid {PODS_LATEST_WINS}")
                else:
                    cols = ", ".join(f'"{c}"' for c in names)
                    store.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM _batch")
            rows += batch.num_rows
        if todo:
            with store.registered(_paths=pa.table({"path": [t.file.file_path for t in todo]})):
                store.execute("INSERT INTO lake_files SELECT ?, path FROM _paths", [name])
        return rows

    @staticmethod
    def _clear(store: Store, name: str) -> None:
        store.execute(f"DELETE FROM {name}")
        store.execute("DELETE FROM lake_files WHERE tbl = ?", [name])

    def _newest_day(self) -> int | None:
        """The newest UTC day (days since the epoch) of the lake's ``messages``, from partition metadata."""
        table = self.lake.table("messages").refresh()
        if table.current_snapshot() is None:
            return None
        parts = table.inspect.partitions()
        if parts.num_rows == 0:
            return None
        days = [p["day"] for p in parts["partition"].to_pylist() if p and p.get("day") is not None]
        return max(_as_day(d) for d in days) if days else None

    def _read_held(self) -> dict[str, Any] | None:
        """What a cache file left by an earlier run holds (a disk that outlived the process)."""
        if not self.path.exists():
            return None
        try:
            with Store(self.path, read_only=True) as store:
                if not store.has_table("lake_sync"):
                    return None
                name, ids = store.query("SELECT name, ids FROM lake_sync").row(0)
            return {"name": name, "ids": json.loads(ids)}
        except (StoreError, IndexError, ValueError):
            return None

    # --- the refresh loop ----------------------------------------------------

    def start(self) -> LakeReplica:
        self._thread = threading.Thread(target=self._loop, name="gpuledger-lake-replica", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def refresh(self) -> bool:
        """One refresh, never raising: the lake unreachable keeps the last complete file served (logged)."""
        try:
            return self.sync()
        except (GpuledgerError, OSError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("lake replica: refresh failed, still serving %s (%s old): %s",
                        self.path.name, _age(self.age_s()), exc)
            return False
        except Exception as exc:  # keep serving, loudly
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("lake replica: refresh failed, still serving the last complete snapshot")
            return False


def _as_day(value: Any) -> int:
    """A day partition value (days since the epoch; pyarrow may give a date) as an int."""
    if isinstance(value, int):
        return value
    return (datetime(value.year, value.month, value.day, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).days


def _age(age: float | None) -> str:
    return "never synced" if age is None else f"{age:.0f} s"

