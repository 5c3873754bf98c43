"""The lake's upkeep: ``retention --lake``, ``compact --lake`` (run from cli/ingest.py) and ``lake-maintain``."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuledger.cli.common import add_command, lake_config, lake_metadata, setting_flags
from gpuledger.config import Settings
from gpuledger.errors import GpuledgerError

if TYPE_CHECKING:
    from gpuledger.store.lake import LakeStore
    from gpuledger.store.lake.upkeep import Compaction


def register(sub: Any, settings: Settings) -> None:
    m = add_command(
        sub, "lake-maintain", lake_maintain,
        help="lake upkeep: compact older days' small files, then expire old snapshots",
        description="The lake's regular upkeep (docs/lake.md), run hourly (a CronJob) or as a loop (--every): "
        "every day partition that ended --older-than-hours ago and holds more than one file per table is rewritten "
        "as one file (as `compact --lake`); then each table's snapshots older than --expire-days are expired, the "
        "newest --keep-snapshots kept. Expiry edits the metadata only: pyiceberg 0.12 deletes no file, so the "
        "replaced and dropped files stay in the warehouse (its size is printed; docs/lake.md#snapshot-expiry).\n\n"
        "  gpuledger lake-maintain --lake postgresql+psycopg://gl:pw@pg/gl --warehouse s3://lake/raw\n"
        "  gpuledger lake-maintain --lake sqlite:////data/lake/catalog.db --warehouse /data/lake/wh --every 3600",
    )
    setting_flags(m, settings, "--lake", "--warehouse", "--s3-endpoint", "--older-than-hours", "--expire-days",
                  "--keep-snapshots")
    m.add_argument("--every", type=float, default=None, metavar="SECONDS",
                   help="run as a loop: the upkeep every SECONDS (start to start) until stopped; a failed run is "
                   "reported and the next one tried (default: once)")


def need_lake(settings: Settings, command: str) -> LakeStore:
    from gpuledger.store.lake import LakeStore

    config = lake_config(settings)
    if config is None:
        raise GpuledgerError(f"{command} needs the lake", hint="pass --lake CATALOG_URI --warehouse PATH_OR_S3 "
                             "(or GPULEDGER_LAKE_CATALOG_URI and GPULEDGER_LAKE_WAREHOUSE)")
    return LakeStore(config)


def lake_retention(settings: Settings) -> int:
    """``gpuledger retention --lake``: the lake's tiers, guarded by the lake's own attribution record and the
    metadata store's closed months; by the DuckDB file's where a deployment still has one (--db)."""
    from gpuledger.analytics.tenancy import TenancyRules
    from gpuledger.ingest.lake_retention import enforce_lake_retention
    from gpuledger.store import Store

    lake = need_lake(settings, "retention --lake")
    rules = TenancyRules.load(settings.tenancy_path) if settings.tenancy_path else TenancyRules()
    closed: set[str] | None = None
    if settings.lake_metadata_uri or not lake.config.catalog_uri.startswith(("http://", "https://")):
        meta = lake_metadata(settings, lake.config)
        try:
            closed = meta.closed()
        finally:
            meta.close()
    db = Path(settings.db_path)
    store = Store(db, read_only=True) if db.is_file() else None
    try:
        res = enforce_lake_retention(lake, months=settings.raw_retention_months,
                                     ledger_months=settings.ledger_retention_months,
                                     rollup_months=settings.rollup_retention_months, store=store, closed=closed,
                                     rules_version=rules.version)
    finally:
        if store is not None:
            store.close()
    if closed is None:
        print("lake rollups: a REST catalog has no SQL database for closed months: pass --lake-metadata, else only "
              "months the --db file records closed go")
    print(f"lake raw: dropped {len(res.days_dropped)} days before {_day(res.cutoff_ns)} "
          f"({res.files_removed} files, {res.rows_removed} rows, no file rewritten); attribution evidence: {res.guard}")
    for day, why in res.days_kept.items():
        print(f"  kept {day}: {why}")
    if res.rollup_cutoff_ns is not None:
        print(f"lake rollups (ledger_hourly): dropped {', '.join(res.rollup_months_dropped) or 'no month'} before "
              f"{_day(res.rollup_cutoff_ns)}; work_units and queue_hourly are kept")
        for month, why in res.rollup_kept.items():
            print(f"  kept rollups of {month}: {why}")
    print("the files of dropped partitions stay in the warehouse until their snapshots expire and an engine removes "
          "them (docs/lake.md#snapshot-expiry)")
    return 0


def lake_compact(settings: Settings, days: list[str] | None) -> int:
    """``gpuledger compact --lake``: the days named, or every day older than --older-than-hours."""
    lake = need_lake(settings, "compact --lake")
    done = compact(lake, settings.lake_compact_after_hours, days)
    _print_compactions(done)
    return 0


def compact(lake: LakeStore, after_hours: float, days: list[str] | None = None,
            now: dt.datetime | None = None) -> list[Compaction]:
    """Compact every table's partitions that hold more than one file: the ``days`` given (YYYY-MM-DD), else every
    day and month partition that ended ``after_hours`` ago, and the unpartitioned ``pods`` table."""
    from gpuledger.store.lake.schema import KEYED, ROLLUP_TABLES
    from gpuledger.store.lake.upkeep import compact_partition, partitions

    wanted = set(days or ())
    for day in wanted:
        try:
            dt.date.fromisoformat(day)
        except ValueError:
            raise GpuledgerError(f"--day {day}: not a date", hint="YYYY-MM-DD (UTC), e.g. --day 2026-11-20") from None
    horizon = ((now or dt.datetime.now(dt.UTC)) - dt.timedelta(hours=after_hours)).timestamp() * 10**6
    out = []
    for name in (*KEYED, "dead_letters", "pods", *ROLLUP_TABLES):
        for part in partitions(lake, name):
            if part.files <= 1:
                continue
            if wanted and part.label not in wanted:
                continue
            if not wanted and part.end_us is not None and part.end_us > horizon:
                continue  # still written to: the next run takes it
            if wanted and part.end_us is None:
                continue
            sort = ("pod_uid", "last_seen_ns") if name == "pods" else ("agent_id", "interval_start_ns")
            out.append(compact_partition(lake, part, sort_by=sort))
    return out


def _print_compactions(done: list[Compaction]) -> None:
    before = sum(c.files_before for c in done)
    after = sum(c.files_after for c in done)
    conflicts = sum(c.conflicts for c in done)
    print(f"lake: {len(done)} table partitions compacted, {before} files -> {after}, "
          f"{sum(c.bytes_before for c in done):,} -> {sum(c.bytes_after for c in done):,} bytes; "
          f"{conflicts} commits retried after a concurrent one")
    for c in done:
        print(f"  {c.table} {c.partition}: {c.files_before} -> {c.files_after} files, {c.rows} rows", file=sys.stderr)


def lake_maintain(args: argparse.Namespace, settings: Settings) -> int:
    if args.every is None:
        _maintain_once(settings)
        return 0
    import signal
    import threading

    if args.every < 1:
        raise GpuledgerError(f"--every {args.every:g}: a loop needs at least 1 second between runs",
                             hint="hourly is plenty: --every 3600")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"maintaining the lake every {args.every:g} s", flush=True)
    while not stop.is_set():
        started = time.monotonic()
        try:
            _maintain_once(settings)
        except GpuledgerError as exc:
            print(f"error: {exc}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr, flush=True)
        stop.wait(max(0.0, args.every - (time.monotonic() - started)))
    return 0


def _maintain_once(settings: Settings) -> None:
    from gpuledger.store.lake.schema import LAKE_TABLES, ROLLUP_TABLES
    from gpuledger.store.lake.upkeep import expire_snapshots, unreferenced_bytes

    lake = need_lake(settings, "lake-maintain")
    _print_compactions(compact(lake, settings.lake_compact_after_hours))
    older = dt.datetime.now(dt.UTC) - dt.timedelta(days=settings.lake_snapshot_expire_days)
    expired = kept = 0
    stale_files = stale_bytes = 0
    for name in (*LAKE_TABLES, *ROLLUP_TABLES):
        res = expire_snapshots(lake, name, older, settings.lake_snapshots_kept)
        expired, kept = expired + res.expired, kept + res.kept
        files, size = unreferenced_bytes(lake, name)
        if files >= 0:
            stale_files, stale_bytes = stale_files + files, stale_bytes + size
    stale = (f"; {stale_files} data files ({stale_bytes:,} bytes) no snapshot references stay in the warehouse "
             "(pyiceberg deletes none)" if stale_files else "")
    print(f"lake: expired {expired} snapshots older than {settings.lake_snapshot_expire_days:g} days, {kept} kept"
          f"{stale}", flush=True)


def _day(ns: int | None) -> str:
    return "-" if ns is None else dt.datetime.fromtimestamp(ns // 10**9, dt.UTC).strftime("%Y-%m-%d")
