"""Numbered migrations: each runs once per file, and the file records it.

A writable open (:class:`gpuledger.store.Store`) reads ``schema_migrations``
and applies, in order, each migration the file lacks, every one in its own
transaction with the row that records it; a reader (``read_only=True``)
never migrates and copes with an older file (it checks ``has_table``). Once
a file is up to date a writable open costs one small query, not the schema's
DDL (before migrations were recorded, every open -- every ingest flush -- ran
``CREATE TABLE IF NOT EXISTS`` for each table and ``ALTER TABLE … ADD COLUMN
IF NOT EXISTS`` twice).

A new file runs them all (each table is created by the migration that
introduced it, from :mod:`gpuledger.store.schema`). A file written before
migrations were recorded has no ``schema_migrations`` and may be at any
point of the history below, so every migration is written to be harmless
when its change is already there (``IF NOT EXISTS``). A file recording a
migration this code does not know was written by a newer gpuledger: writing
to it is refused (:class:`gpuledger.errors.StoreTooNew`).

Adding a table or column: put the current DDL in ``schema.py`` (a new column
at the end of its table) and append a migration here with the next number;
never edit or renumber a released one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpuledger.errors import StoreTooNew
from gpuledger.store.schema import MIGRATIONS_TABLE, TABLES
from gpuledger.timeutil import HOUR_NS
from gpuledger.wire import DEFAULT_CLUSTER

if TYPE_CHECKING:
    from gpuledger.store.duck import Store

__all__ = ["MIGRATIONS", "Migration", "applied", "migrate"]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    creates: tuple[str, ...] = ()  # tables created from schema.TABLES (before ``then``)
    then: Callable[[Store], None] | None = None  # what else it does (inside the same transaction)

    def apply(self, tx: Store) -> None:
        for table in self.creates:
            tx.execute(TABLES[table])
        if self.then is not None:
            self.then(tx)


def _add_column(table: str, column: str, sql_type: str) -> Callable[[Store], None]:
    def add(tx: Store) -> None:
        tx.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {sql_type}")
    return add


def _hourly_rollups(tx: Store) -> None:
    """A ledger older than its hourly rollups: mark every ledger hour pending, so the next attribution
    run rolls it up; readers use the ledger for pending hours meanwhile (docs/storage.md)."""
    older = not tx.has_table("ledger_hourly")
    for table in ("ledger_hourly", "ledger_hourly_pending"):
        tx.execute(TABLES[table])
    if older:
        tx.pend_ledger_hours()


def _clusters(tx: Store) -> None:
    """``cluster`` on messages and pods (what the agent said; NULL: nothing), on the ledger and its rollups
    (part of their key) and on billed rows (part of a correction's key): rows booked or billed before clusters
    existed are in the default cluster."""
    for table in ("messages", "pods"):
        _add_column(table, "cluster", "VARCHAR")(tx)
    for table in ("ledger", "ledger_hourly", "chargeback_billed"):
        _add_column(table, "cluster", "VARCHAR")(tx)
        tx.execute(f"UPDATE {table} SET cluster = ? WHERE cluster IS NULL", [DEFAULT_CLUSTER])


def _exact_rollups(tx: Store) -> None:
    """Exact integer sums in the hourly rollups (``analytics/exact.py``). Every rolled-up hour the ledger still
    has is marked pending, so the next attribution run recomputes it exactly from the ledger (readers use the ledger
    for pending hours meanwhile). Hours that exist only as rollups (retired months, hours before the ledger's
    window) get the integers of their stored floats: each GPU-hour's capacity is its GPU-seconds summed and
    rounded to the nanosecond -- what the bill took before -- carried by its first row in key order."""
    def exact(column: str, scale: str) -> str:  # analytics/exact.py's rule, frozen here (the store is below analytics)
        return f"CASE WHEN isfinite(c.{column}) THEN round(c.{column} * {scale}::DOUBLE)::BIGINT END"

    for column in ("capacity_ns", "gpu_ps", "energy_nj", "memory_byte_seconds"):
        tx.execute(f"ALTER TABLE ledger_hourly ADD COLUMN IF NOT EXISTS {column} BIGINT")
    gpu_hour = "PARTITION BY hour_start_ns, cluster, node, gpu_index"  # migration 12 added cluster before
    keys = "node, gpu_uuid, gpu_index, mig_index, model, profile, sharing, kind, tenant, namespace, pod, rule"
    tx.execute(f"""
        UPDATE ledger_hourly SET capacity_ns = c.capacity_ns, gpu_ps = {exact("gpu_seconds", "1e12")},
            energy_nj = {exact("energy_j", "1e9")}, memory_byte_seconds = {exact("memory_gb_seconds", "1e9")}
        FROM (SELECT rowid AS r, gpu_seconds, energy_j, memory_gb_seconds,
                     CASE WHEN row_number() OVER ({gpu_hour} ORDER BY {keys} NULLS LAST) = 1
                          THEN round(sum(gpu_seconds) OVER ({gpu_hour}) * 1e9)::BIGINT ELSE 0 END AS capacity_ns
              FROM ledger_hourly) c
        WHERE ledger_hourly.rowid = c.r""")
    if tx.has_table("ledger"):  # as ``Store.pend_ledger_hours``, for the hours that have rollups to redo
        hour = f"interval_start_ns - interval_start_ns % {HOUR_NS}"
        tx.execute(f"INSERT INTO ledger_hourly_pending SELECT DISTINCT hour_start_ns FROM ledger_hourly "
                   f"SEMI JOIN (SELECT DISTINCT {hour} AS hour_start_ns FROM ledger) USING (hour_start_ns) "
                   "ON CONFLICT DO NOTHING")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "raw samples, ledger and attributed keys", creates=(
        "messages", "devices", "processes", "allocations", "field_errors", "pods", "dead_letters",
        "ledger", "attributed")),
    Migration(2, "messages.allocations_unavailable: why a message has no allocations",
              then=_add_column("messages", "allocations_unavailable", "VARCHAR")),
    Migration(3, "attributed.rules_version: the tenancy rules a message was attributed under",
              then=_add_column("attributed", "rules_version", "VARCHAR")),
    Migration(4, "hourly rollups of the ledger, and the hours pending recomputation",
              then=_hourly_rollups),
    Migration(5, "merged Parquet segments", creates=("merged_segments",)),
    Migration(6, "months whose interval-grain ledger retention removed", creates=("ledger_retired",)),
    Migration(7, "API tokens (created by the first `token create` before migrations)", creates=("api_tokens",)),
    Migration(8, "closed chargeback months and their billed rows (created by the first close before migrations)",
              creates=("chargeback_closes", "chargeback_billed")),
    Migration(9, "rollups written by the attribution job (hours to merge) and the interval ledger's window",
              creates=("ledger_hourly_unmerged", "ledger_window")),
    Migration(10, "work units imported from Prometheus per pod and hour", creates=("work_units",)),
    Migration(11, "Kueue quota series per ClusterQueue and hour", creates=("queue_hourly",)),
    Migration(12, "cluster on messages, pods, ledger, rollups and billed rows (two clusters' namespaces never merge)",
              then=_clusters),
    Migration(13, "exact integer sums in the hourly rollups (capacity ns, GPU ps, energy nJ, memory byte-seconds)",
              then=_exact_rollups),
)


def applied(store: Store) -> list[int]:
    """The migrations this file records, in order (empty for a file written before they were recorded)."""
    if not store.has_table(MIGRATIONS_TABLE):
        return []
    return [int(v) for v in store.query(f"SELECT version FROM {MIGRATIONS_TABLE} ORDER BY version")["version"]]


def migrate(store: Store) -> list[int]:
    """Apply the migrations ``store``'s file lacks; returns their versions (empty when up to date)."""
    done = set(applied(store))
    unknown = done - {m.version for m in MIGRATIONS}
    if unknown:
        raise StoreTooNew(f"{store.path} records schema migrations {sorted(unknown)} that this gpuledger does not "
                          f"know (it knows 1..{MIGRATIONS[-1].version})")
    todo = [m for m in MIGRATIONS if m.version not in done]
    if not todo:
        return []
    store.execute(TABLES[MIGRATIONS_TABLE])
    for m in todo:
        with store.transaction() as tx:
            m.apply(tx)
            tx.execute(f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES (?, ?)", [m.version, m.name])
    return [m.version for m in todo]
