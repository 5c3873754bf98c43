"""``gpuledger report``: business reports from the hourly rollups (fleet economics, tenant budgets)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gpuledger.cli.common import add_command, existing_db, price_book, setting_flags
from gpuledger.config import Settings


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
    r.add_argument("what", choices=["economics", "budgets"], help="which report")
    r.add_argument("--month", required=True, metavar="YYYY-MM", help="month (UTC), or `previous`")
    r.add_argument("--format", choices=["txt", "json"], default="txt", help="txt (default) or json")
    setting_flags(r, settings, "--db", "--prices", "--cloud-rates", "--node-pools", "--budgets", "--idle-policy")


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
