"""``gpuledger migrate --to lake``: a DuckDB file's raw tables, products and small metadata into the lake.

Bounded memory: every table is read from the file as Arrow record batches
(``Store.batches``) and written batch by batch; nothing is read whole.
Idempotent: a second run copies nothing, a run stopped half way is completed
by the next one.

- **Raw tables** (messages and their rows): ``batch_messages`` messages at a
  time through :meth:`LakeStore.write_arrow`, ingest's own idempotent append
  (a key the lake's table holds is not appended again; ``messages`` last).
  So a lake that ingest workers already wrote to (the same messages from
  Kafka) gains only what it lacks. Pods through their key (pod, last seen);
  dead letters through (received at, reason, size).
- **Product tables** (``ledger_hourly``, ``work_units``, ``queue_hourly``,
  with the lake-only ``hour`` column), **one month partition per Iceberg
  transaction**: delete the month, append its batches, and set the table
  property ``gpuledger.migrated.<YYYY-MM>`` to the month's fingerprint in the
  file (row count and the sum of row hashes) -- all in one commit. A month
  whose property equals the file's fingerprint is skipped (nothing read
  from the lake, nothing written); a month the file changed since (or one
  the lake got from elsewhere) is replaced by the file's rows: the file wins,
  the point of migrating from it.
- **Small metadata** to the metadata store (:class:`~gpuledger.store.metadata.Metadata`):
  tokens (the token file's, and the database's own older ones, with their
  revocations; an id already there is not copied again, a revocation is), and
  each closed month with its billed rows (a month already closed there is
  kept as it is).

A file whose rollups are stale (hours pending a recompute) is refused: run
``gpuledger attribute`` on it first, so the lake's product tables are the
bill the file would have produced.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pat

from gpuledger.errors import GpuledgerError, StoreError
from gpuledger.store.duck import Store
from gpuledger.store.lake.replica import month_filter
from gpuledger.store.lake.schema import HOUR_COLUMN, KEYED, ROLLUP_TABLES
from gpuledger.store.lake.writer import LakeStore
from gpuledger.store.metadata import FileMetadata, Metadata, MonthAlreadyClosed, TokenStore, token_path
from gpuledger.timeutil import month_bounds, to_ns

log = logging.getLogger(__name__)

__all__ = ["MIGRATED_PROPERTY", "MigrateReport", "migrate_to_lake"]

#: Table property prefix: ``gpuledger.migrated.2026-10`` = the fingerprint of the month copied from a file.
MIGRATED_PROPERTY = "gpuledger.migrated."
_KEY = '"agent_id", "boot_id", "seq"'


@dataclass
class MigrateReport:
    """What one ``migrate --to lake`` run copied (a second run: all zeros, months skipped)."""

    messages: int = 0  # messages new to the lake
    rows: dict[str, int] = field(default_factory=dict)  # product table -> rows written
    months_copied: list[str] = field(default_factory=list)  # "table YYYY-MM"
    months_skipped: list[str] = field(default_factory=list)  # already in the lake, same fingerprint
    pods: int = 0
    dead_letters: int = 0
    tokens: int = 0  # tokens copied, or revocations applied
    closes: int = 0  # closed months copied

    @property
    def copied_anything(self) -> bool:
        return bool(self.messages or any(self.rows.values()) or self.pods or self.dead_letters or self.tokens
                    or self.closes)


def migrate_to_lake(db_path: str | Path, lake: LakeStore, meta: Metadata, *, batch_messages: int = 5_000,
                    batch_rows: int = 250_000, on_progress: Callable[[int, int], None] | None = None) -> MigrateReport:
    """Copy the DuckDB file at ``db_path`` into the lake and ``meta`` (module doc); ``on_progress(done, total)``
    counts messages and product rows read from the file."""
    report = MigrateReport()
    with Store(db_path, read_only=True) as store:
        if store.has_table("ledger_hourly_pending") and store.count("ledger_hourly_pending"):
            raise GpuledgerError(f"{db_path}: {store.count('ledger_hourly_pending')} hours of rollups are pending a "
                                 "recompute", hint=f"run `gpuledger attribute --db {db_path}` first, so the lake gets "
                                 "the rollups the file's bill is made of")
        products = [t for t in ROLLUP_TABLES if store.has_table(t)]
        total = store.count("messages") + sum(store.count(t) for t in products)
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if on_progress is not None:
                on_progress(done, total)

        advance(0)
        report.messages = _raw(store, lake, batch_messages, advance)
        report.pods = sum(lake.write_rows("pods", pa.Table.from_batches([b]), ("pod_uid", "last_seen_ns"))
                          for b in store.batches("SELECT * FROM pods", rows=batch_rows))
        if store.has_table("dead_letters"):
            report.dead_letters = sum(
                lake.write_rows("dead_letters", pa.Table.from_batches([b]), ("received_at", "reason", "size_bytes"))
                for b in store.batches("SELECT * FROM dead_letters", rows=batch_rows))
        for table in products:
            report.rows[table] = _product(store, lake, table, batch_rows, advance, report)
    report.tokens = _tokens(Path(db_path), meta)
    report.closes = _closes(Path(db_path), meta)
    return report


def _raw(store: Store, lake: LakeStore, batch_messages: int, advance: Callable[[int], None]) -> int:
    copied = 0
    order = "SELECT agent_id, boot_id, seq FROM messages ORDER BY interval_start_ns, agent_id, boot_id, seq"
    for keys in store.batches(order, rows=batch_messages):
        numbered = pa.Table.from_batches([keys]).append_column("_m", pa.array(np.arange(keys.num_rows), pa.int64()))
        tables: dict[str, pa.Table] = {}
        with store.registered(_keys=numbered):
            for name in KEYED:
                rows = store.arrow(f"SELECT t.*, k._m FROM {name} t JOIN _keys k USING ({_KEY})")
                if rows.num_rows:
                    tables[name] = _plain(rows)
        copied += lake.write_arrow(tables)
        advance(keys.num_rows)
    return copied


def _plain(table: pa.Table) -> pa.Table:
    """Arrow as the lake writer takes it: DuckDB's JSON extension columns as plain strings."""
    columns = []
    for column in table.columns:
        kind = column.type
        if isinstance(kind, pa.ExtensionType):
            column = pa.chunked_array([c.storage for c in column.chunks], kind.storage_type)
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def _product(store: Store, lake: LakeStore, name: str, batch_rows: int, advance: Callable[[int], None],
             report: MigrateReport) -> int:
    months = store.query(f"SELECT DISTINCT strftime(make_timestamp(hour_start_ns // 1000), '%Y-%m') AS month "
                         f"FROM {name} ORDER BY month")["month"].to_list()
    written = 0
    for month in months:
        lo, hi = (to_ns(t) for t in month_bounds(month))
        where = f"hour_start_ns >= {lo} AND hour_start_ns < {hi}"
        n, digest = store.query(f"SELECT count(*) AS n, coalesce(sum(hash(t)::HUGEINT), 0)::VARCHAR AS h "
                                f"FROM {name} t WHERE {where}").row(0)
        fingerprint = f"{n}:{digest}"
        key = f"{MIGRATED_PROPERTY}{month}"
        table = lake.table(name).refresh()
        if table.properties.get(key) == fingerprint:
            report.months_skipped.append(f"{name} {month}")
            advance(n)
            continue
        with table.transaction() as tx, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Delete operation did not match any records")  # a first copy
            tx.delete(month_filter(lo, hi))
            for batch in store.batches(f"SELECT * FROM {name} WHERE {where}", rows=batch_rows):
                tx.append(_with_hour(_plain(pa.Table.from_batches([batch])), table.schema().as_arrow()))
                advance(batch.num_rows)
            tx.set_properties({key: fingerprint})
        written += n
        report.months_copied.append(f"{name} {month}")
        log.info("migrate: %s %s: %d rows", name, month, n)
    return written


def _with_hour(rows: pa.Table, target: pa.Schema) -> pa.Table:
    """``rows`` in the lake table's columns and types, with ``hour`` from ``hour_start_ns``."""
    columns = []
    for f in target:
        if f.name == HOUR_COLUMN:
            columns.append(pc.divide(rows["hour_start_ns"].cast(pa.int64()), 1000).cast(f.type))
        elif f.name in rows.column_names:
            column = rows[f.name]
            if pat.is_decimal(column.type) or column.type != f.type:
                column = column.cast(f.type)
            columns.append(column)
        elif f.nullable:
            columns.append(pa.nulls(rows.num_rows, f.type))
        else:
            raise StoreError(f"the file has no column {f.name}, which the lake table requires",
                             hint="open the file once with this gpuledger (`gpuledger attribute`) to migrate its schema")
    return pa.Table.from_arrays(columns, schema=target)


def _tokens(db_path: Path, meta: Metadata) -> int:
    """Tokens of the token file and of the database's own table, with their revocations."""
    rows: list[dict[str, Any]] = []
    revoked: dict[str, int] = {}
    side = token_path(db_path)
    if side.exists():
        with TokenStore(side, create=False) as tokens:
            if tokens.has_table("api_tokens"):
                rows += tokens.query("SELECT * FROM api_tokens").to_dicts()
            if tokens.has_table("revoked_elsewhere"):
                revoked = dict(tokens.query("SELECT id, revoked_at_ns FROM revoked_elsewhere").rows())
    older = FileMetadata(db_path).database_tokens()
    if older.height:
        rows += older.to_dicts()
    changed = 0
    with meta.tokens() as dest:
        for r in rows:
            when = r["revoked_at_ns"] if r["revoked_at_ns"] is not None else revoked.get(r["id"])
            state = dest.query("SELECT revoked_at_ns FROM api_tokens WHERE id = ?", [r["id"]])
            if state.is_empty():
                dest.execute("INSERT INTO api_tokens (id, secret_sha256, role, tenant, name, created_at_ns, "
                             "revoked_at_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             [r["id"], r["secret_sha256"], r["role"], r["tenant"], r["name"], r["created_at_ns"], when])
                changed += 1
            elif when is not None and state["revoked_at_ns"][0] is None:
                dest.execute("UPDATE api_tokens SET revoked_at_ns = ? WHERE id = ?", [when, r["id"]])
                changed += 1
    return changed


def _closes(db_path: Path, meta: Metadata) -> int:
    """Closed months the metadata store lacks, each with its billed rows (one transaction per month)."""
    source = FileMetadata(db_path)
    closes = source.closes()
    if closes.is_empty():
        return 0
    have = meta.closed()
    billed = source.billed()
    copied = 0
    for month in closes["month"].to_list():
        if month in have:
            continue
        try:
            meta.record_close(closes.filter(closes["month"] == month),
                              billed.filter(billed["billing_month"] == month))
        except MonthAlreadyClosed:  # closed there meanwhile: that record stands
            continue
        copied += 1
    return copied
