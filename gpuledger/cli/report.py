"""``gpuledger report`` (fleet economics, tenant budgets, work units) and ``gpuledger units import``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from gpuledger.cli.common import add_command, existing_db, given, lake_config, price_book, setting_flags
from gpuledger.config import Settings

if TYPE_CHECKING:
    from gpuledger.store.protocol import HourlyWriter


def register(sub: Any, settings: Settings) -> None:
    r = add_command(
        sub, "report", report,
        help="fleet economics and tenant budgets for a month",
        description="Reports read from the hourly rollups. `report economics --month 2026-10`: per node pool "
        "and GPU model, utilization, allocation, efficiency, the owned fleet's cost per used GPU-hour, what "
        "the used and allocated hours would have cost rented on demand (--cloud-rates) and the utilization "
        "at which owning breaks even. `report budgets --month current --budgets budgets.toml`: per tenant, "
        "the monthly budget, month-to-date cost, forecast to the month's end and over/under. "
        "See docs/economics.md.\n\n"
        "  gpuledger report economics --month 2026-10\n"
        "  gpuledger report budgets --month current --budgets budgets.toml\n"
        "  gpuledger report economics --month previous --node-pools pools.toml --format json",
    )
    r.add_argument("what", choices=["economics", "budgets", "units", "queues"], help="which report")
    r.add_argument("--month", required=True, metavar="YYYY-MM", help="month (UTC), or `previous`")
    r.add_argument("--format", choices=["txt", "json"], default="txt", help="txt (default) or json")
    setting_flags(r, settings, "--db", "--prices", "--cloud-rates", "--node-pools", "--budgets", "--idle-policy",
                  "--work-units", "--queues")
    u = add_command(
        sub, "units", units,
        help="import work units (tokens, samples) per pod and hour from Prometheus",
        description="Runs each work unit's PromQL (--work-units; default: vLLM's token counters) against "
        "Prometheus's HTTP API at the end of each UTC hour and stores the per-pod counts in work_units; "
        "`report units --month` then gives cost, GPU-hours and kWh per 1M tokens. Run it hourly, after the "
        "hour has ended. See docs/economics.md#work-units.\n\n"
        "With --lake CATALOG_URI --warehouse PATH_OR_S3 the hours go to the lake's Iceberg tables work_units "
        "(and queue_hourly with --kueue) instead of a DuckDB file, which `serve --lake` replicas serve "
        "(docs/lake.md); a re-import of the same hours changes nothing.\n\n"
        "  gpuledger units import --prometheus-url http://prometheus:9090\n"
        "  gpuledger units import --hours 24\n"
        "  gpuledger units import --kueue --lake postgresql+psycopg://gl@pg/gl --warehouse s3://lake/raw",
    )
    u.add_argument("action", choices=["import"], help="what to do")
    u.add_argument("--hours", type=int, default=1, metavar="N",
                   help="import the last N complete UTC hours (default 1); re-importing an hour replaces it")
    u.add_argument("--kueue", action="store_true",
                   help="also import Kueue's quota, reservation, usage and admission-wait series (--queues)")
    setting_flags(u, settings, "--db", "--work-units", "--prometheus-url", "--queues", "--lake", "--warehouse",
                  "--s3-endpoint")


def report(args: argparse.Namespace, settings: Settings) -> int:
    from gpuledger.analytics import economics as econ
    from gpuledger.analytics.closing import resolve_month
    from gpuledger.errors import GpuledgerError
    from gpuledger.store import Store

    try:
        month = resolve_month(args.month)
    except ValueError as exc:
        raise GpuledgerError(str(exc), hint="--month 2026-10, or --month previous") from None
    book = price_book(settings.prices_path)
    if args.what == "budgets":
        return _budgets(month, book, settings, args.format)
    if args.what == "units":
        return _units(month, book, settings, args.format)
    if args.what == "queues":
        return _queues(month, settings, args.format)
    rates = econ.load_cloud_rates(settings.cloud_rates_path) if settings.cloud_rates_path else econ.default_cloud_rates()
    pools = econ.load_node_pools(settings.node_pools_path) if settings.node_pools_path else econ.NodePools()
    with Store(existing_db(settings.db_path), read_only=True) as store:
        rows, pending = econ.read_month(store, month)
        entries = econ.economics(rows, book, rates, pools)
    if not entries:
        raise GpuledgerError(f"no data for {month}: the hourly rollups hold no GPU time in that month",
                             hint="pick a month with data, or run `gpuledger attribute` (it fills the rollups)")
    body = econ.report_dict(month, entries, rates, pending)
    if args.format == "json":
        sys.stdout.write(json.dumps(body, indent=2) + "\n")
    else:
        sys.stdout.write(econ.report_text(body) + "\n")
    return 0


def _budgets(month: str, book: Any, settings: Settings, fmt: str) -> int:
    from gpuledger.analytics import budgets as bud
    from gpuledger.errors import GpuledgerError
    from gpuledger.store import Store

    if not settings.budgets_path:
        raise GpuledgerError("no budgets configured", hint="pass --budgets budgets.toml (or GPULEDGER_BUDGETS_PATH); "
                             "see docs/economics.md#budgets")
    budgets = bud.load_budgets(settings.budgets_path)
    if budgets.currency != book.currency:
        raise GpuledgerError(f"budgets are in {budgets.currency}, the price book in {book.currency}",
                             hint="write the budgets in the price book's currency")
    with Store(existing_db(settings.db_path), read_only=True) as store:
        costs, until = bud.month_to_date(store, month, book, settings.idle_policy)
    lines, as_of = bud.budget_report(month, costs, until, budgets, book.quantum)
    if fmt == "json":
        body = {"month": month, "currency": book.currency, "idle_policy": settings.idle_policy, "as_of": as_of,
                "tenants": [t.to_dict() for t in lines]}
        sys.stdout.write(json.dumps(body, indent=2) + "\n")
        return 0
    out = [f"budgets {month} ({book.currency}, idle policy {settings.idle_policy}); data as of {as_of or 'none yet'}",
           "tenant\tbudget\tmonth_to_date\tforecast\tover_under\tstatus"]
    out += ["\t".join("-" if v is None else str(v) for v in t.to_dict().values()) for t in lines]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def _work_units(settings: Settings) -> Any:
    from gpuledger.analytics import work_units as wu

    return wu.load_work_units(settings.work_units_path) if settings.work_units_path else wu.default_work_units()


def _units(month: str, book: Any, settings: Settings, fmt: str) -> int:
    from gpuledger.analytics import work_units as wu
    from gpuledger.errors import GpuledgerError
    from gpuledger.store import Store

    with Store(existing_db(settings.db_path), read_only=True) as store:
        rows = wu.unit_report(store, month, book, _work_units(settings))
    if not rows:
        raise GpuledgerError(f"no work units for {month}",
                             hint="import them hourly with `gpuledger units import` (docs/economics.md#work-units)")
    return _write_rows(rows, fmt, {"month": month, "rows": rows}, f"work units {month}")


def units(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from gpuledger.analytics import work_units as wu
    from gpuledger.errors import GpuledgerError
    from gpuledger.timeutil import HOUR_NS

    config = _work_units(settings)
    url = settings.prometheus_url or config.prometheus_url
    if not url:
        raise GpuledgerError("no Prometheus to import work units from",
                             hint="pass --prometheus-url http://prometheus:9090 (or set prometheus_url in the file)")
    if args.hours < 1:
        raise GpuledgerError(f"--hours must be 1 or more, got {args.hours}", hint="e.g. --hours 24")
    last = time.time_ns() // HOUR_NS * HOUR_NS - HOUR_NS  # the last complete hour
    hours = [last - i * HOUR_NS for i in range(args.hours)]
    with _import_target(args, settings) as (store, where):
        result = wu.import_hours(store, wu.PrometheusHTTP(url), config, hours)
        if args.kueue:
            from gpuledger.analytics import queues as qu

            n = qu.import_queue_hours(store, wu.PrometheusHTTP(url), _queue_config(settings), hours)
            print(f"imported {n} Kueue rows for {len(hours)} hour(s) into {where}", file=sys.stderr)
    print(f"imported {result.rows} work-unit rows for {result.hours} hour(s) ({len(config.units)} unit(s)) into "
          f"{where}; skipped {result.skipped} sample(s) without namespace/pod", file=sys.stderr)
    return 0


@contextmanager
def _import_target(args: argparse.Namespace, settings: Settings) -> Iterator[tuple[HourlyWriter, str]]:
    """Where ``units import`` writes: the lake's product tables (--lake), else the DuckDB file (--db)."""
    from gpuledger.errors import GpuledgerError
    from gpuledger.store import Store

    lake = lake_config(settings)
    if lake is None:
        with Store(existing_db(settings.db_path)) as store:
            yield store, str(settings.db_path)
        return
    if given(args, "--db"):
        raise GpuledgerError("--lake and --db do not go together: with --lake the hours go to the lake's "
                             "work_units and queue_hourly tables, no DuckDB file is opened",
                             hint="drop --db to import into the lake, or drop --lake/--warehouse to import into "
                             "the DuckDB file")
    from gpuledger.store.lake import LakeStore
    from gpuledger.store.lake.products import LakeProducts

    yield LakeProducts(LakeStore(lake)), f"the lake {lake.warehouse}"


def _queue_config(settings: Settings) -> Any:
    from gpuledger.analytics import queues as qu

    return qu.load_queues(settings.queues_path) if settings.queues_path else qu.Queues()


def _queues(month: str, settings: Settings, fmt: str) -> int:
    from gpuledger.analytics import queues as qu
    from gpuledger.analytics.local_queues import local_queue_report
    from gpuledger.errors import GpuledgerError
    from gpuledger.store import Store

    config = _queue_config(settings)
    with Store(existing_db(settings.db_path), read_only=True) as store:
        rows = qu.queue_report(store, month, config)
        local = local_queue_report(store, month, config)
    if not rows:
        raise GpuledgerError(f"no Kueue data for {month}",
                             hint="import it hourly with `gpuledger units import --kueue` (docs/economics.md#kueue-quotas)")
    _write_rows(rows, fmt, {"month": month, "queues": rows, "local_queues": local}, f"Kueue quotas {month} (GPU-hours)")
    if local and fmt != "json":
        sys.stdout.write("\n")
        _write_rows(local, fmt, {}, f"LocalQueues {month}: each one's share of its ClusterQueue's quota (GPU-hours)")
    return 0


def _write_rows(rows: list[dict[str, Any]], fmt: str, document: dict[str, Any], title: str) -> int:
    """A report's rows on stdout: ``document`` as JSON, or a title line and tab-separated columns ("-": none)."""
    if fmt == "json":
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return 0
    head = list(rows[0])
    out = [title, "\t".join(head)]
    out += ["\t".join("-" if r[k] is None else str(r[k]) for k in head) for r in rows]
    sys.stdout.write("\n".join(out) + "\n")
    return 0
