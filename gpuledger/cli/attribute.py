"""``gpuledger attribute`` (the ledger job) and ``gpuledger explain`` (the rows behind a tenant's line)."""

from __future__ import annotations

import argparse
from typing import Any

from gpuledger.cli.common import (
    add_command,
    add_metrics_port,
    existing_db,
    given,
    lake_config,
    metrics_registry,
    progress,
    setting_flags,
)
from gpuledger.config import Settings


def register(sub: Any, settings: Settings) -> None:
    t = add_command(
        sub, "attribute", attribute,
        help="run the ledger: every GPU-second and joule to a tenant",
        description="Attribution job. Splits each GPU's capacity per interval into busy (by per-process "
        "evidence), allocated-idle (by allocation share) and unallocated, and books it to tenants. "
        "Incremental by default; --full re-attributes everything (after a tenancy-rule change). --shards books by "
        "UTC hour x node group instead, each shard replacing its rollups (the same bytes in one process, a pool or "
        "on Ray). With --lake CATALOG_URI --warehouse PATH_OR_S3 it attributes the lake's raw Iceberg tables by shard and "
        "books the hourly rollups into the lake's ledger_hourly (no DuckDB file; shards with messages committed "
        "since the last run, or every shard after a tenancy-rules version change or with --full; docs/lake.md).\n\n"
        "  gpuledger attribute --db gpuledger.duckdb\n"
        "  gpuledger attribute --db gpuledger.duckdb --shards --workers 4\n"
        "  gpuledger attribute --db gpuledger.duckdb --ray ray://ray-head:10001\n"
        "  gpuledger attribute --lake sqlite:////data/lake/catalog.db --warehouse /data/lake/warehouse --workers 4\n"
        "  gpuledger attribute --lake postgresql+psycopg://gl@pg/gl --warehouse s3://lake/raw --ray ray://ray-head:10001",
    )
    setting_flags(t, settings, "--db", "--memory-limit", "--ledger-window-days", "--workers")
    t.add_argument("--full", action="store_true", help="re-attribute every interval still stored raw and inside "
                   "the ledger window (after a tenancy-rule change); older hours and months whose raw samples "
                   "retention removed keep what they were booked")
    setting_flags(t, settings, "--tenancy", "--default-cluster")
    t.add_argument("--shards", action="store_true",
                   help="attribute by shard (UTC hour x node group, docs/attribution.md): each shard touched by a "
                   "pending message is attributed from all of its raw samples and replaces its rollups; shards run "
                   "in this process, in a pool of --workers processes, or on Ray (--ray)")
    setting_flags(t, settings, "--node-groups", "--ray", "--lake", "--warehouse", "--s3-endpoint")
    t.add_argument("--every", type=float, default=None, metavar="SECONDS",
                   help="run as a loop: the incremental job every SECONDS (start to start) until stopped, a failed run "
                   "logged and counted, never fatal (the chart's attribution container); default: run once")
    add_metrics_port(t, "the loop's")

    x = add_command(
        sub, "explain", explain,
        help="list the GPUs, intervals and rules behind a tenant's line",
        description="Drill-down for one tenant and period: its GPU-hours by kind, its coverage (share of busy "
        "time attributed from per-process samples), then one row per GPU: GPU-hours, used, allocated idle, "
        "unmeasured, the attribution rules, the GPU's share of the tenant's line, first and last interval. "
        "--detail lists one row per GPU, pod, kind and rule instead. The table and --format csv carry the same "
        "columns and units (GPU-hours, kWh, ISO 8601 UTC times). Opens the database read-only.\n\n"
        "  gpuledger explain --tenant vision --start 2026-10-01 --end 2026-11-01\n"
        "  gpuledger explain --tenant vision --detail --format csv > vision.csv",
    )
    setting_flags(x, settings, "--db", "--tenancy", "--default-cluster")
    x.add_argument("--tenant", required=True, help="tenant name as on the showback")
    x.add_argument("--start", default=None, help="period start, ISO date/time, UTC (default: all)")
    x.add_argument("--end", default=None, help="period end (exclusive), ISO date/time, UTC (default: all)")
    x.add_argument("--format", choices=["table", "csv"], default="table", help="output (default: %(default)s)")
    x.add_argument("--detail", action="store_true", help="one row per GPU, pod, kind and rule (default: per GPU)")


def attribute(args: argparse.Namespace, settings: Settings) -> int:
    from gpuledger.analytics.job import default_workers, run_attribution
    from gpuledger.analytics.tenancy import TenancyRules
    from gpuledger.store import Store

    rules = TenancyRules.load(settings.tenancy_path) if settings.tenancy_path else TenancyRules()
    if lake_config(settings) is not None:
        return attribute_lake(args, settings, rules)
    if args.shards or settings.attribute_ray_address is not None:
        return attribute_shards(args, settings, rules)
    if args.every is not None:
        return attribute_every(args, settings, rules)
    with Store(existing_db(settings.db_path)) as store, progress("attributing", "messages") as bar:
        result = run_attribution(store, rules, full=args.full, progress=bar,
                                 workers=settings.attribute_workers or default_workers(),
                                 ledger_window_s=settings.ledger_window_days * 86_400 or None,
                                 default_cluster=settings.default_cluster)
    print(f"attributed {result.messages} messages into {result.ledger_rows} ledger rows "
          f"({result.ledger_rows_kept} kept at interval grain, {result.rollup_rows} rollup rows added, "
          f"{result.hours_merged} hours merged, {result.ledger_rows_pruned} older interval rows pruned)")
    return 0


def executor_for(settings: Settings, keep: bool = False) -> tuple[Any, str]:
    """The shards' executor of --ray / --workers, and where it runs (for the summary line)."""
    from gpuledger.analytics.job import default_workers
    from gpuledger.analytics.shards import InProcess, ProcessPool

    workers = settings.attribute_workers or default_workers()
    if settings.attribute_ray_address is not None:
        from gpuledger.analytics.shard_ray import RayExecutor

        return RayExecutor(settings.attribute_ray_address, keep=keep), f"on Ray at {settings.attribute_ray_address}"
    if workers > 1:
        return ProcessPool(workers), f"in {workers} processes"
    return InProcess(), "in this process"


def attribute_lake(args: argparse.Namespace, settings: Settings, rules: Any) -> int:
    from gpuledger.analytics.shard_lake import run_lake_shards
    from gpuledger.errors import GpuledgerError

    lake = lake_config(settings)
    assert lake is not None
    for flag, why in (("--db", "attribution on the lake reads the lake's raw tables and books into its "
                       "ledger_hourly; it opens no DuckDB file"),
                      ("--ledger-window-days", "the lake keeps hourly rollups only, no interval-grain ledger "
                       "(`explain` recomputes intervals from the raw tables)")):
        if given(args, flag):
            raise GpuledgerError(f"--lake and {flag} do not go together: {why}",
                                 hint=f"drop {flag}, or drop --lake/--warehouse to attribute a DuckDB file")
    if args.every is not None:
        raise GpuledgerError("--every is not built for the lake yet",
                             hint="run `gpuledger attribute --lake ...` from a scheduler (a CronJob): a run with "
                             "nothing new reads no data file and commits nothing")
    executor, where = executor_for(settings)
    with progress("attributing", "shards") as bar:
        result = run_lake_shards(lake, rules, groups=settings.attribute_node_groups, executor=executor,
                                 full=args.full, progress=bar, default_cluster=settings.default_cluster)
    print(f"attributed {len(result.shards)} shards ({settings.attribute_node_groups} node groups per hour) {where} "
          f"from the lake {lake.warehouse}: {result.messages} messages into {result.ledger_rows} ledger rows, "
          f"{result.rollup_rows} rollup rows written to its ledger_hourly")
    return 0


def attribute_shards(args: argparse.Namespace, settings: Settings, rules: Any) -> int:
    from functools import partial

    from gpuledger.analytics.shards import run_shards
    from gpuledger.store import Store

    executor, where = executor_for(settings, keep=args.every is not None)
    job = partial(run_shards, groups=settings.attribute_node_groups, executor=executor, full=args.full,
                  ledger_window_s=settings.ledger_window_days * 86_400 or None,
                  default_cluster=settings.default_cluster)
    if args.every is not None:
        return attribute_every(args, settings, rules, job=job)
    with Store(existing_db(settings.db_path)) as store, progress("attributing", "shards") as bar:
        result = job(store, rules, progress=bar)
    print(f"attributed {len(result.shards)} shards ({settings.attribute_node_groups} node groups per hour) {where}: "
          f"{result.messages} messages into {result.ledger_rows} ledger rows ({result.ledger_rows_kept} kept at "
          f"interval grain, {result.rollup_rows} rollup rows written, {result.ledger_rows_pruned} older interval "
          "rows pruned)")
    return 0


def attribute_every(args: argparse.Namespace, settings: Settings, rules: Any, job: Any = None) -> int:
    import signal
    import threading
    from functools import partial

    from gpuledger.analytics.job import run_attribution
    from gpuledger.analytics.loop import AttributionMetrics, attribution_loop
    from gpuledger.errors import GpuledgerError

    if args.every < 1:
        raise GpuledgerError(f"--every {args.every:g}: a loop needs at least 1 second between runs",
                             hint="the chart runs it every 300 s; a run takes the writer lock from ingest")
    if args.full:
        raise GpuledgerError("--full with --every would re-attribute everything on every run",
                             hint="run `gpuledger attribute --full` once, then the loop")
    metrics = AttributionMetrics()
    registry = metrics_registry(args.own_metrics_port, settings.metrics_host)
    if registry is not None:
        metrics.register(registry)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"attributing {settings.db_path} every {args.every:g} s{' by shard' if job else ''}", flush=True)
    job = job or partial(run_attribution, default_cluster=settings.default_cluster)
    attribution_loop(settings.db_path, rules, metrics, args.every, stop, job=job)
    return 0


def explain(args: argparse.Namespace, settings: Settings) -> int:
    from gpuledger.analytics.explain import explain_command
    from gpuledger.analytics.tenancy import TenancyRules

    rules = TenancyRules.load(settings.tenancy_path) if settings.tenancy_path else TenancyRules()
    print(explain_command(existing_db(settings.db_path), args.tenant, args.start, args.end, args.format,
                          args.detail, rules, settings.default_cluster), end="")
    return 0
