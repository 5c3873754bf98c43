"""``gpuledger ingest`` and the storage upkeep around it: ``retention``, ``merge`` (the lake into a file), ``compact``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gpuledger.cli.common import (
    add_command,
    add_metrics_port,
    existing_db,
    lake_config,
    metrics_registry,
    progress,
    setting_flags,
)
from gpuledger.config import Settings
from gpuledger.errors import GpuledgerError


def register(sub: Any, settings: Settings) -> None:
    i = add_command(
        sub, "ingest", run_ingest,
        help="consume the Kafka topic into DuckDB (idempotent, dead-letters bad input)",
        description="Ingest worker: reads the topic as a consumer group, decodes batches, writes them to "
        "DuckDB in one transaction (idempotent on agent_id, boot_id, seq) and only then commits offsets. "
        "Undecodable messages go to the dead_letters table with the reason.\n\n"
        "One file has one writer. With --lake CATALOG_URI --warehouse PATH_OR_S3 it appends to Apache Iceberg "
        "tables instead, which any number of workers in the group share: one commit per table every "
        "--commit-interval seconds, then the offsets (docs/lake.md).\n\n"
        "  gpuledger ingest --kafka broker:9092 --lake postgresql+psycopg://gl:pw@pg/gpuledger \\\n"
        "      --warehouse s3://gpuledger-lake/raw --s3-endpoint http://minio:9000",
    )
    setting_flags(i, settings, "--kafka", "--topic", "--group", "--db", required=["--kafka"])
    i.add_argument("--max-idle", type=float, default=None, metavar="SECONDS",
                   help="exit after this long with no new messages (default: run until Ctrl-C)")
    setting_flags(i, settings, "--batch-max", "--linger")
    i.add_argument("--hold-db", action="store_true",
                   help="keep the DuckDB file open between flushes (fastest; nobody else can open it meanwhile). "
                   "Default: open it per flush, so the API and jobs can read it between flushes")
    setting_flags(i, settings, "--max-future", "--max-age")
    setting_flags(i, settings, "--lake", "--warehouse", "--s3-endpoint", "--commit-interval")
    i.add_argument("--max-poll-interval-ms", type=int, default=None, metavar="MS",
                   help="consumer group: longest time between polls before this member is evicted; ingest keeps "
                   "polling while a flush stores, and lingers at most a quarter of it (default: 300000)")
    i.add_argument("--session-timeout-ms", type=int, default=None, metavar="MS",
                   help="consumer group: how long the broker waits for a heartbeat before evicting this member "
                   "(a crashed ingest's partitions move after it; default: 45000; at most --max-poll-interval-ms)")
    i.add_argument("--group-timeout-ms", type=int, default=None, metavar="MS",
                   help="both of the above at once (kept for old scripts; prefer the two flags)")
    add_metrics_port(i, "ingest's")

    r = add_command(
        sub, "retention", retention,
        help="delete raw samples, then ledger and hourly rollups, past their retained months",
        description="Retention job (run daily, e.g. a CronJob), three tiers by UTC month, each kept longer than "
        "the one before (docs/storage.md#retention):\n\n"
        "  raw samples (messages, devices, processes, allocations, field_errors): --months, default 2 (the current\n"
        "    and the previous billing month: the evidence a dispute needs); a message the ledger does not cover\n"
        "    yet is never deleted;\n"
        "  interval-grain ledger: --ledger-months, default 13; a month goes only once it is closed (export\n"
        "    --final), has no raw samples left and every hour is rolled up, else it is kept and the reason printed;\n"
        "  hourly rollups (ledger_hourly): --rollup-months, default 36; only after the month's ledger is gone.\n\n"
        "Dead letters are kept. Needs the file free for writing, like `gpuledger attribute`.\n\n"
        "With --lake CATALOG_URI --warehouse PATH_OR_S3: the lake's raw day partitions before the raw cut-off, and "
        "ledger_hourly's month partitions before the rollup cut-off, are dropped whole (Iceberg deletes that rewrite "
        "no file). A day goes only when all its messages are attributed -- by the lake's own record of `attribute --lake` "
        "(no messages data file of the day added after the snapshot it attributed up to, and --tenancy's rules "
        "version the recorded one); without that record, by the `attributed` table of --db when that file exists "
        "(opened read-only); else no day goes. A rollup month goes only when the lake's metadata store "
        "(--lake-metadata, else the catalog's database) records it closed (`export --lake --final`), or --db does "
        "and holds no ledger of it (docs/lake.md#retention).\n\n"
        "  gpuledger retention --db /data/gpuledger.duckdb\n"
        "  gpuledger retention --months 3 --ledger-months 25 --rollup-months 0    # rollups forever\n"
        "  gpuledger retention --lake postgresql+psycopg://gl:pw@pg/gl --warehouse s3://lake/raw --tenancy /etc/gl/t.toml",
    )
    setting_flags(r, settings, "--db", "--lake", "--warehouse", "--s3-endpoint", "--lake-metadata", "--tenancy")
    setting_flags(r, settings, "--months", "--ledger-months", "--rollup-months")

    mg = add_command(
        sub, "merge", merge,
        help="copy the lake's Iceberg tables into a DuckDB file (idempotent), for attribute and serve on that file",
        description="Copies into --db every complete message of the lake (ingest --lake workers) whose key "
        "(agent_id, boot_id, seq) the file lacks, with its rows; pods by latest seen, dead letters by "
        "topic/partition/offset. Idempotent: merging again adds nothing. Then run `gpuledger attribute` on the "
        "file (docs/lake.md#reading).\n\n"
        "  gpuledger merge --db /data/gpuledger.duckdb --lake postgresql+psycopg://gl@pg/gl --warehouse s3://lake/raw",
    )
    setting_flags(mg, settings, "--db", "--lake", "--warehouse", "--s3-endpoint")

    mi = add_command(
        sub, "migrate", migrate,
        help="copy a DuckDB file into the lake: raw tables, rollups, tokens and closed months (idempotent)",
        description="The upgrade path from the embedded file to the lake store (docs/lake.md). Copies --db's raw "
        "tables (through the lake writer's idempotent appends: a message the lake holds is not copied again), its "
        "product tables (ledger_hourly, work_units, queue_hourly; one month partition per Iceberg commit, skipped "
        "when the lake holds that month from the same rows) and its small metadata (API tokens with their "
        "revocations, closed months with their billed rows) into the lake's metadata store (the catalog's SQL "
        "database, or --lake-metadata). Reads the file read-only, Arrow batch by batch; running it twice copies "
        "nothing the second time. Run `gpuledger attribute` on the file first (a file with pending rollups is "
        "refused).\n\n"
        "  gpuledger migrate --to lake --db /data/gpuledger.duckdb \\\n"
        "      --lake postgresql+psycopg://gl:pw@pg/gpuledger --warehouse s3://gpuledger-lake/raw",
    )
    mi.add_argument("--to", choices=["lake"], required=True, help="where to: the lake store (--lake, --warehouse)")
    setting_flags(mi, settings, "--db", "--lake", "--warehouse", "--s3-endpoint", "--lake-metadata")

    c = add_command(
        sub, "compact", compact,
        help="rewrite the lake's day partitions one file per table and day, or a DuckDB file in full row groups",
        description="Storage maintenance (docs/lake.md#compaction, docs/storage.md).\n\n"
        "--lake CATALOG_URI --warehouse PATH_OR_S3: each day partition's small files (one per table and ingest "
        "flush) become one file per table and day, in one Iceberg commit (delete + append): readers see the old "
        "files or the new one. Days that ended --older-than-hours ago by default (or the --day given); an ingest "
        "appending to the day meanwhile makes the commit fail, and the day is read and rewritten again. "
        "`gpuledger lake-maintain` runs this and snapshot expiry.\n\n"
        "--db FILE --out NEW: copy the DuckDB file into NEW, rewritten in full row groups with the newest storage "
        "format (smaller, faster scans). Then stop the writers and swap the files yourself.\n\n"
        "  gpuledger compact --lake postgresql+psycopg://gl:pw@pg/gl --warehouse s3://lake/raw\n"
        "  gpuledger compact --lake sqlite:////data/lake/catalog.db --warehouse /data/lake/wh --day 2026-11-20\n"
        "  gpuledger compact --db /data/gpuledger.duckdb --out /data/gpuledger.compact.duckdb",
    )
    c.add_argument("--day", action="append", default=None, metavar="YYYY-MM-DD",
                   help="with --lake: compact this day only (repeatable; whatever its age); default: every day that "
                   "ended --older-than-hours ago")
    setting_flags(c, settings, "--lake", "--warehouse", "--s3-endpoint", "--older-than-hours")
    c.add_argument("--db", default=None, metavar="FILE", help="DuckDB file to copy compacted (with --out)")
    c.add_argument("--out", default=None, metavar="NEW", help="where the compacted copy of --db goes (must not exist)")


def run_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from gpuledger.ingest.clock import ClockCheck
    from gpuledger.ingest.consumer import run_ingest as consume

    timing = ({"max_poll_interval_ms": args.group_timeout_ms, "session_timeout_ms": args.group_timeout_ms}
              if args.group_timeout_ms else {})
    for key, value in (("max_poll_interval_ms", args.max_poll_interval_ms),
                       ("session_timeout_ms", args.session_timeout_ms)):
        if value is not None:
            if value <= 0:
                raise GpuledgerError(f"--{key.replace('_', '-')} must be a positive number of milliseconds",
                                     hint="e.g. --max-poll-interval-ms 300000 --session-timeout-ms 45000")
            timing[key] = value
    if not settings.kafka_bootstrap:
        raise GpuledgerError("ingest needs Kafka bootstrap servers",
                             hint="pass --kafka host:port or set GPULEDGER_KAFKA_BOOTSTRAP")
    lake = lake_config(settings)
    linger_s = settings.ingest_linger_s
    if lake is not None:
        linger_s = settings.lake_commit_interval_s
    registry = metrics_registry(args.own_metrics_port, settings.metrics_host)
    metrics = None
    if registry is not None:
        from gpuledger.ingest.metrics import IngestMetrics

        metrics = IngestMetrics(registry)
    consume(settings.kafka_bootstrap, settings.kafka_topic, settings.kafka_group, settings.db_path,
            client_settings=settings.kafka_client_settings(),
            max_idle_s=args.max_idle, batch_max=settings.ingest_batch_max, linger_s=linger_s,
            hold_db=args.hold_db,
            clock_check=ClockCheck(max_future_s=settings.ingest_max_future_s or None,
                                   max_age_s=settings.ingest_max_age_s or None),
            lake=lake, metrics=metrics,
            **timing)
    return 0


def retention(args: argparse.Namespace, settings: Settings) -> int:
    import datetime

    if lake_config(settings) is not None:
        from gpuledger.cli.lake import lake_retention

        return lake_retention(settings)

    from gpuledger.ingest.retention import enforce_retention
    from gpuledger.store import Store

    db = existing_db(settings.db_path)
    with Store(db) as store:
        res = enforce_retention(store, months=settings.raw_retention_months,
                                ledger_months=settings.ledger_retention_months,
                                rollup_months=settings.rollup_retention_months)

    def day(ns: int | None) -> str:
        return "-" if ns is None else datetime.datetime.fromtimestamp(ns // 10**9, datetime.UTC).strftime("%Y-%m-%d")

    print(f"raw: deleted {res.messages_deleted} messages ({res.rows_deleted} rows) before {day(res.cutoff_ns)}; "
          f"kept {res.kept_unattributed} not yet attributed")
    print(f"ledger: retired {', '.join(res.ledger_months_retired) or 'no month'} ({res.ledger_rows_deleted} rows) "
          f"before {day(res.ledger_cutoff_ns)}")
    for month, why in res.ledger_kept.items():
        print(f"  kept ledger of {month}: {why}")
    print(f"rollups: deleted {res.rollup_rows_deleted} hourly rows before {day(res.rollup_cutoff_ns)}")
    for month, why in res.rollup_kept.items():
        print(f"  kept rollups of {month}: {why}")
    return 0


def merge(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from gpuledger.store import Store

    lake = lake_config(settings)
    if lake is None:
        raise GpuledgerError("nothing to merge", hint="pass --lake CATALOG_URI --warehouse PATH_OR_S3 (the lake "
                             "`ingest --lake` writes); to move Parquet segments, see docs/storage.md#upgrading")
    from gpuledger.store.lake import LakeStore, materialize

    db = settings.db_path
    with Store(db) as serving:
        t0 = time.monotonic()
        added = materialize(LakeStore(lake), serving)
        print(f"lake {lake.warehouse}: {added} new messages ({time.monotonic() - t0:.1f} s)", file=sys.stderr)
        messages = serving.count("messages")
    print(f"merged {added} new messages into {db} ({messages} in all); next: gpuledger attribute --db {db}")
    return 0


def migrate(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from gpuledger.cli.common import existing_db, lake_metadata
    from gpuledger.store.lake import LakeStore
    from gpuledger.store.lake.migrate import migrate_to_lake

    db = existing_db(settings.db_path)
    lake = lake_config(settings)
    if lake is None:
        raise GpuledgerError("migrate --to lake needs the lake", hint="pass --lake CATALOG_URI --warehouse PATH_OR_S3")
    t0 = time.monotonic()
    store, meta = LakeStore(lake), lake_metadata(settings, lake)
    with progress("migrate", "messages + rollup rows") as bar:
        report = migrate_to_lake(db, store, meta, on_progress=bar)
    rows = ", ".join(f"{t} {n:,}" for t, n in report.rows.items()) or "none"
    print(f"migrated {db} -> {lake.warehouse} ({time.monotonic() - t0:.1f} s): {report.messages:,} new messages, "
          f"rollup rows {rows} ({len(report.months_copied)} months copied, {len(report.months_skipped)} already "
          f"there), {report.pods} pods, {report.dead_letters} dead letters, {report.tokens} tokens, "
          f"{report.closes} closed months", file=sys.stderr)
    if not report.copied_anything:
        print("nothing to copy: the lake already holds this file", file=sys.stderr)
    return 0


def compact(args: argparse.Namespace, settings: Settings) -> int:
    from gpuledger.store import Store

    lake = lake_config(settings)
    if not args.db and lake is None:
        raise GpuledgerError("nothing to compact", hint="give --lake CATALOG_URI --warehouse PATH_OR_S3, or "
                             "--db FILE --out NEW")
    if args.day and lake is None:
        raise GpuledgerError("--day is a day of the lake", hint="give --lake CATALOG_URI --warehouse PATH_OR_S3")
    if lake is not None:
        from gpuledger.cli.lake import lake_compact

        lake_compact(settings, args.day)
    if args.db:
        if not args.out:
            raise GpuledgerError("--db needs --out NEW", hint="the compacted copy goes to a new file; swap them after")
        if not Path(args.db).exists():
            raise GpuledgerError(f"no database at {args.db}", hint="pass the DuckDB file to compact")
        with Store(args.db) as store:  # ATTACH of the new file needs a writable connection
            before = Path(args.db).stat().st_size
            size = store.compact_into(args.out)
        print(f"database: {args.db} ({before:,} bytes) copied compacted into {args.out} ({size:,} bytes); "
              "stop the writers, then swap the files")
    return 0
