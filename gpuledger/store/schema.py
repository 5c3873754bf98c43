"""Every table of a gpuledger DuckDB file: its current DDL, in one place.

Times are integer nanoseconds since the Unix epoch, UTC. This module is the
shape a file has once :mod:`gpuledger.store.migrations` brought it up to
date; each table is created by exactly one migration, from the DDL here
(``CREATE TABLE IF NOT EXISTS``: a file that already has it keeps it). A
column added later is appended to its table's DDL *and* added by a new
migration, so a new file and an upgraded one end with the same columns in the
same order (``tests/store/test_migrations.py`` compares them).

Raw samples (written by ingest):

- ``messages``: one row per ingested wire message; primary key
  ``(agent_id, boot_id, seq)`` makes ingest idempotent.
- ``devices``, ``processes``, ``allocations``, ``field_errors``: the wire's
  record tables (:data:`gpuledger.wire.RECORD_TABLES`), with the message key
  and interval repeated on every row.
- ``pods``: pod identity and labels, latest seen wins (:data:`PODS_LATEST_WINS`).

``messages.cluster`` and ``pods.cluster`` are what the agent's header said
(NULL: it named no cluster); ``ledger.cluster`` and ``ledger_hourly.cluster``
are the resolved cluster (NULL became ``default_cluster``; the job never
writes NULL there, and migration 12 put rows booked before it in
``default``), part of the identity (cluster, namespace, pod) and of the
rollup's key.
- ``dead_letters``: what could not be decoded or was quarantined, with where
  it came from and why (:data:`NEW_DEAD_LETTER` keeps each record once).
- ``merged_segments``: retired (the Parquet segments `merge --segments` copied in; that path is gone,
  no code reads it). Migration 5 creates it; it stays, empty, until a migration drops it.

Attribution and its products:

- ``ledger``: one row per GPU unit, interval, tenant and kind (busy,
  allocated_idle, unallocated, unmeasured); ``attributed``: which messages
  it covers, under which tenancy rules.
- ``ledger_hourly``: the ledger summed per UTC hour (``analytics/hourly.py``), with
  exact integer sums (``capacity_ns``, ``gpu_ps``, ``energy_nj``, ``memory_byte_seconds``);
  ``ledger_hourly_pending``: hours to recompute from the ledger;
  ``ledger_hourly_unmerged``: hours the attribution job added partial sums
  to, to merge into one row per key; ``ledger_window``: where the
  interval-grain ledger starts (older intervals exist only as rollups);
  ``ledger_retired``: months whose interval-grain ledger retention removed.
- ``chargeback_closes``, ``chargeback_billed``: closed months' files, byte for
  byte, and every billed row (``analytics/closing.py``).
- ``api_tokens``: API tokens, the secret stored as its SHA-256 only (``api/tokens.py``).
- ``work_units``: work counted per hour and pod (tokens, samples...), imported
  from Prometheus (``analytics/work_units.py``).
- ``queue_hourly``: Kueue's quota, reservation, usage and admission-wait
  series per ClusterQueue and hour (``analytics/queues.py``).

Bookkeeping: ``schema_migrations``, the migrations applied to this file.
"""

from __future__ import annotations

from gpuledger import wire

__all__ = ["INGEST_TABLES", "MIGRATIONS_TABLE", "NEW_DEAD_LETTER", "PODS_LATEST_WINS", "TABLES"]

_KEY = "agent_id VARCHAR NOT NULL, boot_id VARCHAR NOT NULL, seq UBIGINT NOT NULL"
_INTERVAL = "node VARCHAR NOT NULL, interval_start_ns BIGINT NOT NULL, interval_end_ns BIGINT NOT NULL"
_DEVICE_METRICS = ", ".join(f"{name} DOUBLE" for name in wire.DEVICE_METRICS)
_LEDGER_UNIT = ("gpu_uuid VARCHAR NOT NULL, gpu_index USMALLINT NOT NULL, mig_index SMALLINT NOT NULL, "
                "model VARCHAR NOT NULL, profile VARCHAR, sharing VARCHAR NOT NULL, "
                "kind VARCHAR NOT NULL, tenant VARCHAR NOT NULL, namespace VARCHAR, pod VARCHAR, rule VARCHAR NOT NULL")

MIGRATIONS_TABLE = "schema_migrations"

#: table -> its ``CREATE TABLE IF NOT EXISTS`` statement (current shape).
TABLES: dict[str, str] = {
    MIGRATIONS_TABLE: f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
        version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMPTZ DEFAULT now())""",
    # --- raw samples -------------------------------------------------------------------
    "messages": f"""CREATE TABLE IF NOT EXISTS messages (
        {_KEY}, {_INTERVAL},
        schema_version USMALLINT NOT NULL, driver_version VARCHAR,
        source VARCHAR, ingested_at TIMESTAMPTZ DEFAULT now(),
        allocations_unavailable VARCHAR, cluster VARCHAR,
        PRIMARY KEY (agent_id, boot_id, seq))""",
    "devices": f"""CREATE TABLE IF NOT EXISTS devices (
        {_KEY}, {_INTERVAL},
        gpu_index USMALLINT NOT NULL, mig_index SMALLINT NOT NULL,
        uuid VARCHAR, model VARCHAR, profile VARCHAR,
        slice_fraction DOUBLE NOT NULL, health UTINYINT NOT NULL, util_samples UINTEGER NOT NULL,
        {_DEVICE_METRICS})""",
    "processes": f"""CREATE TABLE IF NOT EXISTS processes (
        {_KEY}, {_INTERVAL},
        gpu_index USMALLINT NOT NULL, mig_index SMALLINT NOT NULL, pid UINTEGER NOT NULL,
        pod_uid VARCHAR, namespace VARCHAR, pod VARCHAR, container VARCHAR, slurm_job VARCHAR,
        kind UTINYINT NOT NULL, samples UINTEGER NOT NULL,
        sm_util_sum DOUBLE, mem_util_sum DOUBLE, used_memory_bytes DOUBLE)""",
    "allocations": f"""CREATE TABLE IF NOT EXISTS allocations (
        {_KEY}, {_INTERVAL},
        gpu_index USMALLINT NOT NULL, mig_index SMALLINT NOT NULL, replica SMALLINT NOT NULL,
        pod_uid VARCHAR, namespace VARCHAR, pod VARCHAR, container VARCHAR, resource VARCHAR,
        share DOUBLE NOT NULL)""",
    "field_errors": f"""CREATE TABLE IF NOT EXISTS field_errors (
        {_KEY}, {_INTERVAL},
        gpu_index USMALLINT NOT NULL, mig_index SMALLINT NOT NULL, pid UINTEGER NOT NULL,
        field VARCHAR NOT NULL, reason VARCHAR NOT NULL)""",
    "pods": """CREATE TABLE IF NOT EXISTS pods (
        pod_uid VARCHAR PRIMARY KEY, namespace VARCHAR NOT NULL, name VARCHAR NOT NULL,
        labels JSON NOT NULL, last_seen_ns BIGINT NOT NULL, cluster VARCHAR)""",
    "dead_letters": """CREATE TABLE IF NOT EXISTS dead_letters (
        topic VARCHAR, partition INTEGER, "offset" BIGINT, reason VARCHAR NOT NULL,
        payload BLOB, size_bytes BIGINT NOT NULL, received_at TIMESTAMPTZ DEFAULT now())""",
    "merged_segments": """CREATE TABLE IF NOT EXISTS merged_segments (
        file VARCHAR PRIMARY KEY, merged_at TIMESTAMPTZ DEFAULT now())""",
    # --- attribution -------------------------------------------------------------------
    "ledger": f"""CREATE TABLE IF NOT EXISTS ledger (
        {_KEY}, {_INTERVAL}, {_LEDGER_UNIT},
        gpu_seconds DOUBLE NOT NULL, energy_j DOUBLE, memory_gb_seconds DOUBLE, cluster VARCHAR)""",
    "attributed": f"""CREATE TABLE IF NOT EXISTS attributed (
        {_KEY}, rules_version VARCHAR, PRIMARY KEY (agent_id, boot_id, seq))""",
    "ledger_hourly": f"""CREATE TABLE IF NOT EXISTS ledger_hourly (
        hour_start_ns BIGINT NOT NULL, node VARCHAR NOT NULL, {_LEDGER_UNIT},
        gpu_seconds DOUBLE NOT NULL, energy_j DOUBLE, energy_intervals UINTEGER NOT NULL,
        memory_gb_seconds DOUBLE, intervals UINTEGER NOT NULL, cluster VARCHAR,
        capacity_ns BIGINT, gpu_ps BIGINT, energy_nj BIGINT, memory_byte_seconds BIGINT)""",
    "ledger_hourly_pending": "CREATE TABLE IF NOT EXISTS ledger_hourly_pending (hour_start_ns BIGINT PRIMARY KEY)",
    "ledger_hourly_unmerged": "CREATE TABLE IF NOT EXISTS ledger_hourly_unmerged (hour_start_ns BIGINT PRIMARY KEY)",
    "ledger_window": """CREATE TABLE IF NOT EXISTS ledger_window (
        id INTEGER PRIMARY KEY, kept_from_ns BIGINT NOT NULL, updated_at TIMESTAMPTZ DEFAULT now())""",
    # --- work done (analytics/work_units.py): per-pod counters imported from Prometheus, hourly ----
    "work_units": """CREATE TABLE IF NOT EXISTS work_units (
        hour_start_ns BIGINT NOT NULL, cluster VARCHAR, namespace VARCHAR NOT NULL, pod VARCHAR NOT NULL,
        unit VARCHAR NOT NULL, count DOUBLE NOT NULL)""",
    # --- Kueue quotas (analytics/queues.py): per ClusterQueue and hour, imported from Prometheus ----
    "queue_hourly": """CREATE TABLE IF NOT EXISTS queue_hourly (
        hour_start_ns BIGINT NOT NULL, cluster_queue VARCHAR NOT NULL, series VARCHAR NOT NULL, le DOUBLE,
        value DOUBLE NOT NULL)""",
    "ledger_retired": """CREATE TABLE IF NOT EXISTS ledger_retired (
        month VARCHAR PRIMARY KEY, start_ns BIGINT NOT NULL, end_ns BIGINT NOT NULL,
        ledger_rows BIGINT NOT NULL, gpu_seconds DOUBLE, retired_at TIMESTAMPTZ DEFAULT now())""",
    # --- chargeback closes (analytics/closing.py) -----------------------------------------
    "chargeback_closes": """CREATE TABLE IF NOT EXISTS chargeback_closes (
        month VARCHAR PRIMARY KEY, closed_at TIMESTAMPTZ NOT NULL, charge_period VARCHAR NOT NULL,
        currency VARCHAR NOT NULL, fleet_cost VARCHAR NOT NULL, regular_total VARCHAR NOT NULL,
        corrections_total VARCHAR NOT NULL, billed_total VARCHAR NOT NULL, n_rows INTEGER NOT NULL,
        csv BLOB NOT NULL, csv_sha256 VARCHAR NOT NULL, parquet BLOB NOT NULL, parquet_sha256 VARCHAR NOT NULL,
        inputs JSON NOT NULL)""",
    "chargeback_billed": """CREATE TABLE IF NOT EXISTS chargeback_billed (
        billing_month VARCHAR NOT NULL, usage_month VARCHAR NOT NULL, charge_class VARCHAR,
        charge_start VARCHAR NOT NULL, charge_end VARCHAR NOT NULL, tenant VARCHAR NOT NULL, model VARCHAR NOT NULL,
        profile VARCHAR NOT NULL, line_kind VARCHAR NOT NULL, entry_id VARCHAR NOT NULL, unit VARCHAR NOT NULL,
        unit_price VARCHAR NOT NULL, is_default BOOLEAN NOT NULL, sharing VARCHAR,
        cost VARCHAR NOT NULL, quantity VARCHAR NOT NULL, used_h VARCHAR, idle_h VARCHAR, unmeasured_h VARCHAR,
        unallocated_h VARCHAR, energy_kwh VARCHAR, cluster VARCHAR)""",
    # --- API tokens (api/tokens.py) --------------------------------------------------------
    "api_tokens": """CREATE TABLE IF NOT EXISTS api_tokens (
        id VARCHAR PRIMARY KEY, secret_sha256 VARCHAR NOT NULL, role VARCHAR NOT NULL, tenant VARCHAR,
        name VARCHAR, created_at_ns BIGINT NOT NULL, revoked_at_ns BIGINT)""",
}

#: What ingest writes, per message and beside it: the tables the file and the lake carry.
INGEST_TABLES: tuple[str, ...] = ("messages", *wire.RECORD_TABLES, "pods", "dead_letters")

#: The tail of every ``INSERT INTO pods``: latest seen wins (a replayed old message or the lake's
#: older rows never overwrite newer labels). Its input must hold each pod once.
PODS_LATEST_WINS = ("ON CONFLICT (pod_uid) DO UPDATE SET namespace = excluded.namespace, name = excluded.name, "
                    "labels = excluded.labels, last_seen_ns = excluded.last_seen_ns, cluster = excluded.cluster "
                    "WHERE excluded.last_seen_ns >= pods.last_seen_ns")
#: Keeps a dead letter (alias ``d``) not stored yet: idempotent on (topic, partition, offset) where all known.
NEW_DEAD_LETTER = ('(d.topic IS NULL OR d.partition IS NULL OR d."offset" IS NULL OR NOT EXISTS (SELECT 1 FROM '
                   'dead_letters x WHERE x.topic = d.topic AND x.partition = d.partition AND x."offset" = d."offset"))')
