"""``gpuledger ingest`` and the storage upkeep around it: ``retention``, ``merge``, ``compact``."""

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
        "With --lake CATALOG_URI --warehouse PATH_OR_S3 it appends to Apache Iceberg tables instead, which any "
        "number of workers in the group share: one commit per table every --commit-interval seconds, then the "
        "offsets (docs/lake.md).\n\n"
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
    i.add_argument("--segments", metavar="DIR", default=None,
                   help="write immutable Parquet segments, partitioned by day, under DIR instead of --db "
                   "(the scale path for N workers; see docs/storage.md)")
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
        "no file). A day goes only when all its messages are attributed -- by the `attributed` table of --db when "
        "that file exists (the file `merge --lake` and `attribute` use; opened read-only), else when the lake's "
        "ledger_hourly has every hour of it; a rollup month only when --db records it closed and holds no ledger "
        "of it (docs/lake.md#retention).\n\n"
        "  gpuledger retention --db /data/gpuledger.duckdb\n"
        "  gpuledger retention --months 3 --ledger-months 25 --rollup-months 0    # rollups forever\n"
        "  gpuledger retention --lake postgresql+psycopg://gl:pw@pg/gl --warehouse s3://lake/raw --db /data/gl.duckdb",
    )
    setting_flags(r, settings, "--db", "--lake", "--warehouse", "--s3-endpoint")
    r.add_argument("--segments", metavar="DIR", default=None,
                   help="also delete the segment day directories (ingest --segments DIR) before the raw cut-off "
                        "that --db has merged and attributed in full")
    setting_flags(r, settings, "--months", "--ledger-months", "--rollup-months")

    mg = add_command(
        sub, "merge", merge,
        help="merge N ingest workers' DuckDB files, Parquet segments, or the lake's Iceberg tables into the serving "
        "file (idempotent)",
        description="The merge step of N ingest workers, each writing its own DuckDB file (docs/operations.md). "
        "Copies into --db every message (with its rows) whose key (agent_id, boot_id, seq) the serving file lacks, "
        "pods by latest seen and dead letters by topic/partition/offset. Idempotent: a batch two workers both "
        "stored after a rebalance is kept once, and merging the same file again adds nothing. Each worker file is "
        "attached read-only between its worker's flushes (not while a worker runs with --hold-db). Then run "
        "`gpuledger attribute` on the serving file. With --segments DIR (workers run `ingest --segments DIR`), "
        "the segments not merged before are copied the same way; each is read once (listed in the file's "
        "merged_segments table). With --lake CATALOG_URI --warehouse PATH_OR_S3 (workers run `ingest --lake`), "
        "the lake's complete messages the file lacks are copied the same way (docs/lake.md).\n\n"
        "  gpuledger merge --db /data/gpuledger.duckdb /data/ingest-0.duckdb /data/ingest-1.duckdb\n"
        "  gpuledger merge --db /data/gpuledger.duckdb --segments /shared/gpuledger-raw\n"
        "  gpuledger merge --db /data/gpuledger.duckdb --lake postgresql+psycopg://gl@pg/gl --warehouse s3://lake/raw",
    )
    mg.add_argument("workers", nargs="*", metavar="WORKER_FILE", help="worker DuckDB files to merge in")
    mg.add_argument("--segments", metavar="DIR", default=None,
                    help="also merge the Parquet segments under DIR (ingest --segments DIR)")
    setting_flags(mg, settings, "--db", "--lake", "--warehouse", "--s3-endpoint")

    c = add_command(
        sub, "compact", compact,
        help="rewrite Parquet segments one file per table and day, or a DuckDB file in full row groups",
        description="Storage maintenance (docs/storage.md).\n\n"
        "--segments DIR: each day's many small Parquet segments (one per worker flush) become one file per table "
        "and day. Readers see the same rows before, during and after: per message key only the copy readers "
        "choose is kept; new files are renamed into place (messages last), then the old ones deleted (messages "
        "first). Days before today (UTC) by default; files younger than --min-age are left for the next run. "
        "Safe while workers write.\n\n"
        "--lake CATALOG_URI --warehouse PATH_OR_S3: each day partition's small files (one per table and ingest "
        "flush) become one file per table and day, in one Iceberg commit (delete + append): readers see the old "
        "files or the new one. Days that ended --older-than-hours ago by default (or the --day given); an ingest "
        "appending to the day meanwhile makes the commit fail, and the day is read and rewritten again "
        "(docs/lake.md#compaction).\n\n"
        "--db FILE --out NEW: copy the DuckDB file into NEW, rewritten in full row groups with the newest storage "
        "format (smaller, faster scans). Then stop the writers and swap the files yourself.\n\n"
        "  gpuledger compact --segments /shared/gpuledger-raw\n"
        "  gpuledger compact --segments /shared/gpuledger-raw --day 2026-11-20\n"
        "  gpuledger compact --lake postgresql+psycopg://gl:pw@pg/gl --warehouse s3://lake/raw --day 2026-11-20\n"
        "  gpuledger compact --db /data/gpuledger.duckdb --out /data/gpuledger.compact.duckdb",
    )
    c.add_argument("--segments", metavar="DIR", default=None, help="segment directory (ingest --segments DIR)")
    c.add_argument("--day", action="append", default=None, metavar="YYYY-MM-DD",
                   help="compact this day only (repeatable); default: every day before --before")
    c.add_argument("--before", default=None, metavar="YYYY-MM-DD",
                   help="with no --day: compact the days before this one (default: today, UTC)")
    c.add_argument("--min-age", type=float, default=300.0, metavar="SECONDS",
                   help="leave files younger than this for the next run (default: %(default)s)")
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
        if args.segments:
            raise GpuledgerError("--lake and --segments are two different stores", hint="give one of them")
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
            segments=args.segments, lake=lake, metrics=metrics,
            **timing)
    return 0


def retention(args: argparse.Namespace, settings: Settings) -> int:
    import datetime

    if lake_config(settings) is not None:
        if args.segments:
            raise GpuledgerError("--lake and --segments are two different stores", hint="give one of them")
        from gpuledger.cli.lake import lake_retention

        return lake_retention(settings)

    from gpuledger.ingest.retention import enforce_retention
    from gpuledger.store import Store

    db = existing_db(settings.db_path)
    with Store(db) as store:
        res = enforce_retention(store, months=settings.raw_retention_months,
                                ledger_months=settings.ledger_retention_months,
                                rollup_months=settings.rollup_retention_months)
        if args.segments:
            from gpuledger.ingest.segment_merge import retire_segments

            seg = retire_segments(store, args.segments, res.cutoff_ns)

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
    if args.segments:
        print(f"segments: deleted {len(seg.days_deleted)} days ({seg.files_deleted} files, "
              f"{seg.bytes_deleted / 1e6:.1f} MB) before {day(res.cutoff_ns)}")
        for d, why in seg.kept.items():
            print(f"  kept segments of {d}: {why}")
    return 0


def merge(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from gpuledger.store import Store

    lake = lake_config(settings)
    if not args.workers and not args.segments and lake is None:
        raise GpuledgerError("nothing to merge", hint="name worker DuckDB files, or --segments DIR, or --lake URI "
                             "--warehouse PATH_OR_S3")
    missing = [w for w in args.workers if not Path(w).is_file()]
    if missing:
        raise GpuledgerError(f"no worker file at {', '.join(missing)}",
                             hint="pass the files each `gpuledger ingest --db FILE` worker writes")
    db = settings.db_path
    if any(Path(w).resolve() == Path(db).resolve() for w in args.workers):
        raise GpuledgerError(f"{db} is both the target and a worker file", hint="--db names the serving file")
    total = 0
    with Store(db) as serving:
        for n, worker in enumerate(args.workers, 1):
            t0 = time.monotonic()
            added = serving.absorb(worker)
            total += added
            print(f"[{n}/{len(args.workers)}] {worker}: {added} new messages ({time.monotonic() - t0:.1f} s)",
                  file=sys.stderr)
        if args.segments:
            from gpuledger.ingest.segment_merge import merge_segments

            t0 = time.monotonic()
            with progress("segments", "files") as bar:
                res = merge_segments(serving, args.segments, progress=bar)
            total += res.messages
            print(f"{args.segments}: {res.messages} new messages from {res.segments} segments, {res.dead_letters} "
                  f"new dead letters from {res.dead_letter_files} files ({time.monotonic() - t0:.1f} s)",
                  file=sys.stderr)
        if lake is not None:
            from gpuledger.store.lake import LakeStore, materialize

            t0 = time.monotonic()
            added = materialize(LakeStore(lake), serving)
            total += added
            print(f"lake {lake.warehouse}: {added} new messages ({time.monotonic() - t0:.1f} s)", file=sys.stderr)
        messages = serving.count("messages")
    print(f"merged {total} new messages into {db} ({messages} in all); next: gpuledger attribute --db {db}")
    return 0


def compact(args: argparse.Namespace, settings: Settings) -> int:
    from gpuledger.store import Store

    lake = lake_config(settings)
    if not args.segments and not args.db and lake is None:
        raise GpuledgerError("nothing to compact", hint="give --lake CATALOG_URI --warehouse PATH_OR_S3, or "
                             "--segments DIR, or --db FILE --out NEW")
    if lake is not None:
        from gpuledger.cli.lake import lake_compact

        lake_compact(settings, args.day)
    if args.segments:
        from gpuledger.ingest.segments import compact_segments

        root = Path(args.segments)
        if not root.is_dir():
            raise GpuledgerError(f"no segment directory at {root}", hint="the DIR of `gpuledger ingest --segments DIR`")
        def observer(event: str) -> None:
            if event.startswith("renamed"):
                print(event, file=sys.stderr)

        res = compact_segments(root, args.day, before=args.before, min_age_s=args.min_age, observer=observer)
        print(f"segments: {len(res.days)} days rewritten, {res.files_before} files -> {res.files_after}, "
              f"{res.bytes_before:,} -> {res.bytes_after:,} bytes; {res.duplicate_rows_dropped} rows readers ignored "
              f"dropped, {res.orphans_deleted} orphan files of killed flushes deleted")
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
