"""``gpuledger`` command line: one subcommand per pipeline stage, plus the demo.

Errors the project raises on purpose print ``error: ...`` and ``hint: ...``
and exit 2, with no traceback wall.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from gpuledger import __version__
from gpuledger.config import Settings
from gpuledger.errors import GpuledgerError

_EPILOG = "Settings also come from GPULEDGER_* environment variables; see docs/configuration.md."


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpuledger",
        description="GPU telemetry, attribution and chargeback: who used which GPU, who held one idle, "
        "and what it cost - per process and tenant, even on time-sliced, MPS and MIG GPUs.",
        epilog=_EPILOG,
        formatter_class=_formatter,
    )
    p.add_argument("--version", action="version", version=f"gpuledger {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    a = sub.add_parser(
        "agent", formatter_class=_formatter, epilog=_EPILOG,
        help="sample this node's GPUs every tick and publish to Kafka",
        description="Node agent (a DaemonSet with hostPID on every GPU node). Each tick it integrates the "
        "driver's utilization sample buffers, per-process samples, memory and the energy counter, maps host "
        "PIDs to pods, and publishes one wire-schema-v1 message per node to Kafka.\n\n"
        "  gpuledger agent --backend nvml --kafka broker:9092\n"
        "  gpuledger agent --backend sim --ticks 5          # a simulated 8-GPU node, prints each tick",
    )
    a.add_argument("--backend", choices=["nvml", "sim"], default="nvml",
                   help="nvml: the local NVIDIA driver; sim: one simulated node (default: nvml)")
    a.add_argument("--kafka", metavar="BOOTSTRAP", default=settings.kafka_bootstrap,
                   help="publish to these Kafka bootstrap servers; without it, print a summary per tick")
    a.add_argument("--topic", default=settings.kafka_topic, help="Kafka topic (default: %(default)s)")
    a.add_argument("--interval", type=float, default=settings.interval_s, metavar="SECONDS",
                   help="tick length in seconds (default: %(default)s)")
    a.add_argument("--node", default=settings.node_name, help="node name on messages (default: hostname)")
    a.add_argument("--ticks", type=int, default=None, help="stop after this many ticks (default: run until Ctrl-C)")
    a.add_argument("--seed", type=int, default=7, help="simulator seed (with --backend sim)")
    a.add_argument("--metrics-port", type=int, default=settings.metrics_port, metavar="PORT",
                   help="serve Prometheus /metrics (DCGM field names + per-pod series) here; 0: off "
                   "(default: %(default)s)")
    a.add_argument("--metrics-host", default=settings.metrics_host, help="/metrics bind address (default: %(default)s)")
    a.add_argument("--spool-dir", default=settings.spool_dir, metavar="DIR",
                   help="store-and-forward spool while the broker is unreachable (with --kafka)")
    a.add_argument("--spool-max-bytes", type=int, default=settings.spool_max_bytes, metavar="BYTES",
                   help="spool bound; the oldest records are dropped beyond it (default: %(default)s)")
    a.add_argument("--pod-resources-socket", default=settings.pod_resources_socket, metavar="PATH",
                   help="kubelet PodResources socket (with --backend nvml; default: %(default)s)")
    a.add_argument("--kubelet-pods-url", default=settings.kubelet_pods_url, metavar="URL",
                   help="kubelet /pods endpoint for pod labels (with --backend nvml)")
    a.add_argument("--dcgm-exporter-url", default=settings.dcgm_exporter_url, metavar="URL",
                   help="read MIG GR_ENGINE_ACTIVE from a local dcgm-exporter (optional, with --backend nvml)")

    i = sub.add_parser(
        "ingest", formatter_class=_formatter, epilog=_EPILOG,
        help="consume the Kafka topic into DuckDB (idempotent, dead-letters bad input)",
        description="Ingest worker: reads the topic as a consumer group, decodes batches, writes them to "
        "DuckDB in one transaction (idempotent on agent_id, boot_id, seq) and only then commits offsets. "
        "Undecodable messages go to the dead_letters table with the reason.",
    )
    i.add_argument("--kafka", metavar="BOOTSTRAP", default=settings.kafka_bootstrap, required=settings.kafka_bootstrap is None,
                   help="Kafka bootstrap servers")
    i.add_argument("--topic", default=settings.kafka_topic, help="topic (default: %(default)s)")
    i.add_argument("--group", default=settings.kafka_group, help="consumer group (default: %(default)s)")
    i.add_argument("--db", default=settings.db_path, help="DuckDB file (default: %(default)s)")
    i.add_argument("--max-idle", type=float, default=None, metavar="SECONDS",
                   help="exit after this long with no new messages (default: run until Ctrl-C)")
    i.add_argument("--batch-max", type=int, default=settings.ingest_batch_max, metavar="N",
                   help="most records per flush: one DuckDB transaction, then one offset commit (default: %(default)s)")
    i.add_argument("--linger", type=float, default=settings.ingest_linger_s, metavar="SECONDS",
                   help="keep polling this long after a flush's first record to fill it (default: %(default)s)")
    i.add_argument("--hold-db", action="store_true",
                   help="keep the DuckDB file open between flushes (fastest; nobody else can open it meanwhile). "
                   "Default: open it per flush, so the API and jobs can read it between flushes")
    i.add_argument("--max-future", type=float, default=settings.ingest_max_future_s, metavar="SECONDS",
                   help="quarantine intervals ending more than this far in the future (default: %(default)s)")
    i.add_argument("--max-age", type=float, default=settings.ingest_max_age_s, metavar="SECONDS",
                   help="quarantine intervals starting longer ago than this; 0: no bound (default: %(default)s)")
    i.add_argument("--segments", metavar="DIR", default=None,
                   help="write immutable Parquet segments, partitioned by day, under DIR instead of --db "
                   "(the scale path for N workers; see docs/storage.md)")
    i.add_argument("--group-timeout-ms", type=int, default=None, metavar="MS",
                   help="consumer-group max poll interval and session timeout (default: Kafka's 300000/45000)")

    r = sub.add_parser(
        "retention", formatter_class=_formatter, epilog=_EPILOG,
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
        "  gpuledger retention --db /data/gpuledger.duckdb\n"
        "  gpuledger retention --months 3 --ledger-months 25 --rollup-months 0    # rollups forever",
    )
    r.add_argument("--db", default=settings.db_path, help="DuckDB file (default: %(default)s)")
    r.add_argument("--segments", metavar="DIR", default=None,
                   help="also delete the segment day directories (ingest --segments DIR) before the raw cut-off "
                        "that --db has merged and attributed in full")
    r.add_argument("--months", type=int, default=settings.raw_retention_months,
                   help="billing months of raw data to keep, the current one included (default: %(default)s)")
    r.add_argument("--ledger-months", type=int, default=settings.ledger_retention_months, metavar="MONTHS",
                   help="months of the interval-grain ledger to keep; 0: forever (default: %(default)s)")
    r.add_argument("--rollup-months", type=int, default=settings.rollup_retention_months, metavar="MONTHS",
                   help="months of hourly rollups to keep; 0: forever (default: %(default)s)")

    mg = sub.add_parser(
        "merge", formatter_class=_formatter, epilog=_EPILOG,
        help="merge N ingest workers' DuckDB files, or Parquet segments, into the serving file (idempotent)",
        description="The merge step of N ingest workers, each writing its own DuckDB file (docs/operations.md). "
        "Copies into --db every message (with its rows) whose key (agent_id, boot_id, seq) the serving file lacks, "
        "pods by latest seen and dead letters by topic/partition/offset. Idempotent: a batch two workers both "
        "stored after a rebalance is kept once, and merging the same file again adds nothing. Each worker file is "
        "attached read-only between its worker's flushes (not while a worker runs with --hold-db). Then run "
        "`gpuledger attribute` on the serving file. With --segments DIR (workers run `ingest --segments DIR`), "
        "the segments not merged before are copied the same way; each is read once (listed in the file's "
        "merged_segments table).\n\n"
        "  gpuledger merge --db /data/gpuledger.duckdb /data/ingest-0.duckdb /data/ingest-1.duckdb\n"
        "  gpuledger merge --db /data/gpuledger.duckdb --segments /shared/gpuledger-raw",
    )
    mg.add_argument("workers", nargs="*", metavar="WORKER_FILE", help="worker DuckDB files to merge in")
    mg.add_argument("--segments", metavar="DIR", default=None,
                    help="also merge the Parquet segments under DIR (ingest --segments DIR)")
    mg.add_argument("--db", default=settings.db_path, help="the serving DuckDB file to merge into (default: %(default)s)")

    c = sub.add_parser(
        "compact", formatter_class=_formatter, epilog=_EPILOG,
        help="rewrite Parquet segments one file per table and day, or a DuckDB file in full row groups",
        description="Storage maintenance (docs/storage.md).\n\n"
        "--segments DIR: each day's many small Parquet segments (one per worker flush) become one file per table "
        "and day. Readers see the same rows before, during and after: per message key only the copy readers "
        "choose is kept; new files are renamed into place (messages last), then the old ones deleted (messages "
        "first). Days before today (UTC) by default; files younger than --min-age are left for the next run. "
        "Safe while workers write.\n\n"
        "--db FILE --out NEW: copy the DuckDB file into NEW, rewritten in full row groups with the newest storage "
        "format (smaller, faster scans). Then stop the writers and swap the files yourself.\n\n"
        "  gpuledger compact --segments /shared/gpuledger-raw\n"
        "  gpuledger compact --segments /shared/gpuledger-raw --day 2026-11-20\n"
        "  gpuledger compact --db /data/gpuledger.duckdb --out /data/gpuledger.compact.duckdb",
    )
    c.add_argument("--segments", metavar="DIR", default=None, help="segment directory (ingest --segments DIR)")
    c.add_argument("--day", action="append", default=None, metavar="YYYY-MM-DD",
                   help="compact this day only (repeatable); default: every day before --before")
    c.add_argument("--before", default=None, metavar="YYYY-MM-DD",
                   help="with no --day: compact the days before this one (default: today, UTC)")
    c.add_argument("--min-age", type=float, default=300.0, metavar="SECONDS",
                   help="leave files younger than this for the next run (default: %(default)s)")
    c.add_argument("--db", default=None, metavar="FILE", help="DuckDB file to copy compacted (with --out)")
    c.add_argument("--out", default=None, metavar="NEW", help="where the compacted copy of --db goes (must not exist)")

    t = sub.add_parser(
        "attribute", formatter_class=_formatter, epilog=_EPILOG,
        help="run the ledger: every GPU-second and joule to a tenant",
        description="Attribution job. Splits each GPU's capacity per interval into busy (by per-process "
        "evidence), allocated-idle (by allocation share) and unallocated, and books it to tenants. "
        "Incremental by default; --full re-attributes everything (after a tenancy-rule change).",
    )
    t.add_argument("--db", default=settings.db_path, help="DuckDB file (default: %(default)s)")
    t.add_argument("--full", action="store_true", help="re-attribute every interval still stored raw (after a tenancy-rule change); months whose raw samples retention removed keep their ledger")
    t.add_argument("--tenancy", default=settings.tenancy_path, metavar="TOML", help="tenancy rules file")

    x = sub.add_parser(
        "explain", formatter_class=_formatter, epilog=_EPILOG,
        help="list the GPUs, intervals and rules behind a tenant's line",
        description="Drill-down for one tenant and period: its GPU-hours by kind, its coverage (share of busy "
        "time attributed from per-process samples), and one row per GPU, pod, kind and attribution rule with "
        "the first and last interval. Opens the database read-only.\n\n"
        "  gpuledger explain --tenant vision --start 2026-10-01 --end 2026-11-01",
    )
    x.add_argument("--db", default=settings.db_path, help="DuckDB file (default: %(default)s)")
    x.add_argument("--tenant", required=True, help="tenant name as on the showback")
    x.add_argument("--start", default=None, help="period start, ISO date/time, UTC (default: all)")
    x.add_argument("--end", default=None, help="period end (exclusive), ISO date/time, UTC (default: all)")
    x.add_argument("--format", choices=["table", "csv"], default="table", help="output (default: %(default)s)")

    s = sub.add_parser(
        "serve", formatter_class=_formatter, epilog=_EPILOG,
        help="serve the showback API (FastAPI) over the DuckDB file",
        description="Showback API and page: showback, efficiency, fleet, Grafana series, drill-down, chargeback CSV; "
        "OpenAPI at /docs, a showback page at /. Opens the database read-only. Every /v1 route needs a token "
        "(`gpuledger token create`); --no-auth turns that off for local development only.",
    )
    s.add_argument("--db", default=settings.db_path, help="DuckDB file (default: %(default)s)")
    s.add_argument("--host", default=settings.api_host, help="bind address (default: %(default)s)")
    s.add_argument("--port", type=int, default=settings.api_port, help="port (default: %(default)s)")
    s.add_argument("--prices", default=settings.prices_path, metavar="TOML", help="price book file")
    s.add_argument("--close-months", action="store_true",
                   help="close each month's chargeback file once it has ended (+ grace); needs the writer lock")
    s.add_argument("--close-grace-hours", type=float, default=settings.close_grace_hours, metavar="HOURS",
                   help="wait this long after a month ends before closing it (default: %(default)s)")
    s.add_argument("--no-auth", action="store_true",
                   help="serve every route without a token, as admin (local development only; never expose it)")

    k = sub.add_parser(
        "token", formatter_class=_formatter, epilog=_EPILOG,
        help="create, list or revoke API tokens",
        description="API tokens for `gpuledger serve`. Roles: admin (every tenant), tenant (one tenant, on every "
        "route), finance (exports and showback). The token is printed once; only its SHA-256 is stored. Writes "
        "the database, so run it where no other writer (ingest) holds the file.\n\n"
        "  gpuledger token create --role tenant --tenant nlp --name nlp-grafana\n"
        "  gpuledger token list\n"
        "  gpuledger token revoke 1a2b3c4d",
    )
    k.add_argument("action", choices=["create", "list", "revoke"], help="what to do")
    k.add_argument("token_id", nargs="?", metavar="ID", help="token id to revoke (from `token list`)")
    k.add_argument("--role", choices=["admin", "tenant", "finance"], help="role of a new token")
    k.add_argument("--tenant", help="tenant of a --role tenant token")
    k.add_argument("--name", help="a label for the new token (e.g. who holds it)")
    k.add_argument("--db", default=settings.db_path, help="DuckDB file (default: %(default)s)")

    e = sub.add_parser(
        "export", formatter_class=_formatter, epilog=_EPILOG,
        help="write the monthly chargeback file for finance",
        description="Exports. `export chargeback --month 2026-10` writes one row per tenant x GPU model "
        "(plus the platform's unallocated line) with FOCUS 1.2 columns; the BilledCost total equals the "
        "fleet's capacity cost to the cent. --final closes the month (later exports return the same bytes; "
        "later changes become Correction rows in the next open month). `export reconciliation` checks a "
        "month and exits 1 when it does not add up. See docs/chargeback.md.\n\n"
        "  gpuledger export chargeback --month previous --final --out exports/\n"
        "  gpuledger export reconciliation --month 2026-10",
    )
    e.add_argument("what", choices=["chargeback", "reconciliation"], help="the FOCUS file, or its reconciliation report")
    e.add_argument("--month", required=True, metavar="YYYY-MM", help="billing month (UTC), or `previous`")
    e.add_argument("--db", default=settings.db_path, help="DuckDB file (default: %(default)s)")
    e.add_argument("--out", default=None, metavar="PATH", help="output file or directory (default: stdout)")
    e.add_argument("--prices", default=settings.prices_path, metavar="TOML", help="price book file")
    e.add_argument("--format", choices=["csv", "parquet", "txt", "json"], default=None,
                   help="chargeback: csv (default) or parquet; reconciliation: txt (default) or json")
    e.add_argument("--final", action="store_true", help="close the month: later exports return this exact file, "
                   "later changes become corrections (writes the database; see docs/chargeback.md)")
    e.add_argument("--charge-period", choices=["month", "day"], default=settings.charge_period,
                   help="one row per line per month or per UTC day (default: %(default)s)")

    d = sub.add_parser(
        "demo", formatter_class=_formatter, epilog=_EPILOG,
        help="simulate a small fleet for a day through the whole pipeline",
        description="Simulates a mixed fleet (exclusive, time-sliced, fractional and MIG GPUs; pod workloads "
        "shaped by real Alibaba GPU traces), replays one day through agent -> transport -> ingest -> DuckDB -> "
        "attribution, writes the month's chargeback CSV, checks attribution against the simulator's ground "
        "truth, then serves the API until Ctrl-C.\n\n"
        "  gpuledger demo                         # then open the printed URLs\n"
        "  gpuledger demo --no-serve --out DIR    # write DIR/gpuledger.duckdb and DIR/chargeback-*.csv, exit",
    )
    d.add_argument("--out", default="demo-out", help="output directory (default: %(default)s)")
    d.add_argument("--no-serve", action="store_true", help="exit after writing the outputs")
    d.add_argument("--port", type=int, default=settings.api_port, help="API port (default: %(default)s)")
    d.add_argument("--host", default=settings.api_host, help="API bind address (default: %(default)s)")
    d.add_argument("--nodes", type=int, default=4, help="simulated nodes (default: %(default)s)")
    d.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default: %(default)s)")
    d.add_argument("--hours", type=float, default=24.0, help="simulated hours (default: %(default)s)")
    d.add_argument("--tick", type=float, default=60.0, help="agent tick in simulated seconds (default: %(default)s)")
    d.add_argument("--seed", type=int, default=7, help="simulator seed (default: %(default)s)")
    d.add_argument("--kafka", metavar="BOOTSTRAP", default=None,
                   help="go through this Kafka broker instead of the embedded in-process transport")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings()
    args = build_parser(settings).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(_dispatch(args, settings) or 0)
    except GpuledgerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int | None:
    if args.command == "agent":
        from gpuledger.agent.run import run_agent

        return run_agent(args, settings)
    if args.command == "ingest":
        from gpuledger.ingest.clock import ClockCheck
        from gpuledger.ingest.consumer import run_ingest

        timing = ({"max_poll_interval_ms": args.group_timeout_ms, "session_timeout_ms": args.group_timeout_ms}
                  if args.group_timeout_ms else {})
        run_ingest(args.kafka, args.topic, args.group, args.db,
                   client_settings=settings.kafka_client_settings(),
                   max_idle_s=args.max_idle, batch_max=args.batch_max, linger_s=args.linger, hold_db=args.hold_db,
                   clock_check=ClockCheck(max_future_s=args.max_future or None, max_age_s=args.max_age or None),
                   segments=args.segments,
                   **timing)
        return 0
    if args.command == "retention":
        return _retention(args)
    if args.command == "merge":
        return _merge(args)
    if args.command == "compact":
        return _compact(args)
    if args.command == "attribute":
        return _attribute(args)
    if args.command == "explain":
        from gpuledger.analytics.explain import explain_command

        print(explain_command(args.db, args.tenant, args.start, args.end, args.format), end="")
        return 0
    if args.command == "serve":
        return _serve(args, settings)
    if args.command == "export":
        return _export(args, settings)
    if args.command == "token":
        return _token(args)
    if args.command == "demo":
        from gpuledger.demo import run_demo

        return run_demo(args)
    raise AssertionError(args.command)


def _retention(args: argparse.Namespace) -> int:
    import datetime

    from gpuledger.ingest.retention import enforce_retention
    from gpuledger.store import Store

    if not Path(args.db).exists():
        raise GpuledgerError(f"no database at {args.db}", hint="pass --db, the file `gpuledger ingest`/`merge` writes")
    with Store(args.db) as store:
        res = enforce_retention(store, months=args.months, ledger_months=args.ledger_months,
                                rollup_months=args.rollup_months)
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


def _merge(args: argparse.Namespace) -> int:
    import time

    from gpuledger.store import Store

    if not args.workers and not args.segments:
        raise GpuledgerError("nothing to merge", hint="name worker DuckDB files, or --segments DIR, or both")
    missing = [w for w in args.workers if not Path(w).is_file()]
    if missing:
        raise GpuledgerError(f"no worker file at {', '.join(missing)}",
                             hint="pass the files each `gpuledger ingest --db FILE` worker writes")
    if any(Path(w).resolve() == Path(args.db).resolve() for w in args.workers):
        raise GpuledgerError(f"{args.db} is both the target and a worker file", hint="--db names the serving file")
    total = 0
    with Store(args.db) as serving:
        for n, worker in enumerate(args.workers, 1):
            t0 = time.monotonic()
            added = serving.absorb(worker)
            total += added
            print(f"[{n}/{len(args.workers)}] {worker}: {added} new messages ({time.monotonic() - t0:.1f} s)",
                  file=sys.stderr)
        if args.segments:
            from gpuledger.ingest.segment_merge import merge_segments

            t0 = time.monotonic()
            with _progress("segments", "files") as bar:
                res = merge_segments(serving, args.segments, progress=bar)
            total += res.messages
            print(f"{args.segments}: {res.messages} new messages from {res.segments} segments, {res.dead_letters} "
                  f"new dead letters from {res.dead_letter_files} files ({time.monotonic() - t0:.1f} s)",
                  file=sys.stderr)
        messages = serving.count("messages")
    print(f"merged {total} new messages into {args.db} ({messages} in all); next: gpuledger attribute --db {args.db}")
    return 0


def _compact(args: argparse.Namespace) -> int:
    from gpuledger.store import Store

    if not args.segments and not args.db:
        raise GpuledgerError("nothing to compact", hint="give --segments DIR, or --db FILE --out NEW (or both)")
    if args.segments:
        from gpuledger.ingest.segments import compact_segments

        root = Path(args.segments)
        if not root.is_dir():
            raise GpuledgerError(f"no segment directory at {root}", hint="the DIR of `gpuledger ingest --segments DIR`")
        res = compact_segments(root, args.day, before=args.before, min_age_s=args.min_age,
                               observer=lambda event: print(event, file=sys.stderr) if event.startswith("renamed") else None)
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


@contextmanager
def _progress(label: str, unit: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr for long work; yields ``update(done, total)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(f"{label} ({unit})"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _attribute(args: argparse.Namespace) -> int:
    from gpuledger.analytics.job import run_attribution
    from gpuledger.analytics.tenancy import TenancyRules
    from gpuledger.store import Store

    rules = TenancyRules.load(args.tenancy) if args.tenancy else TenancyRules()
    with Store(args.db) as store:
        with _progress("attributing", "messages") as bar:
            result = run_attribution(store, rules, full=args.full, progress=bar)
    print(f"attributed {result.messages} messages into {result.ledger_rows} ledger rows")
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from gpuledger.api.app import create_app

    if not Path(args.db).exists():
        raise GpuledgerError(f"no database at {args.db}", hint="run `gpuledger ingest` or `gpuledger demo` first, or pass --db")
    app = create_app(args.db, prices=_prices(args.prices), auth=not args.no_auth)
    if args.close_months:  # the scheduled monthly close (docs/chargeback.md)
        from gpuledger.analytics.export_cmd import MonthCloser
        from gpuledger.analytics.focus import ExportContext

        MonthCloser(args.db, _prices(args.prices), ExportContext.from_settings(settings),
                    args.close_grace_hours).start()
    print(f"gpuledger API on http://{args.host}:{args.port}/  (OpenAPI: /docs)")
    if args.no_auth:
        print("warning: --no-auth: every request is served as admin; for local development only", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _token(args: argparse.Namespace) -> int:
    from gpuledger.api import tokens
    from gpuledger.store import Store

    if args.action == "create":
        if not args.role:
            raise GpuledgerError("token create needs --role", hint="--role admin|tenant|finance [--tenant T]")
        with Store(args.db) as store:
            token_id, token = tokens.create_token(store, args.role, args.tenant, args.name)
        scope = f" for tenant {args.tenant}" if args.tenant else ""
        print(f"created {args.role} token {token_id}{scope}; it is shown only now:", file=sys.stderr)
        print(token)
        return 0
    if args.action == "list":
        with Store(args.db) as store:
            frame = tokens.list_tokens(store)
        for r in frame.iter_rows(named=True):
            state = f"revoked {r['revoked_at']:%Y-%m-%d %H:%M}" if r["revoked_at"] else "active"
            print(f"{r['id']}  {r['role']:<8} {r['tenant'] or '-':<16} {r['name'] or '-':<20} "
                  f"created {r['created_at']:%Y-%m-%d %H:%M}  {state}")
        return 0
    if not args.token_id:
        raise GpuledgerError("token revoke needs the token id", hint="`gpuledger token list` shows the ids")
    with Store(args.db) as store:
        tokens.revoke_token(store, args.token_id)
    print(f"revoked {args.token_id[:12]}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace, settings: Settings) -> int:
    from gpuledger.analytics.export_cmd import run_export

    return run_export(args, _prices(args.prices), settings)


def _prices(path: str | None):  # type: ignore[no-untyped-def]
    from gpuledger.analytics.prices import default_price_book, load_price_book

    return load_price_book(path) if path else default_price_book()


if __name__ == "__main__":
    sys.exit(main())
