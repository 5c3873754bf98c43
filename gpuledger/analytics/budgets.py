"""Per-tenant monthly budgets: month-to-date cost, forecast to the month's end, over or under.

Budgets are configuration (``budgets_path``, TOML)::

    currency = "USD"                 # the price book's
    [[budget]]
    tenant = "ml"
    monthly = "5000.00"              # a quoted decimal, per calendar month (UTC)

Month-to-date: the tenant's cost in the month so far, priced like the
chargeback file (capacity pools allocated by GPU-seconds, energy where the
book charges it) under the given idle policy, from the hourly rollups
(``ledger_hourly``), up to ``as_of``: the end of the newest rolled-up hour of
the month. Forecast: the month-to-date run rate extrapolated linearly to the
month's end, ``month_to_date x month_hours / elapsed_hours`` with
``elapsed_hours`` = ``as_of`` - month start (a month whose data reach its end:
the month-to-date). ``over_under`` = forecast - budget (positive: over);
``status``: ``over_budget`` (month-to-date already above the budget),
``forecast_over`` (the forecast is), ``ok``, or ``no_budget``. A tenant with
a budget and no cost yet has month-to-date 0 (its usage is known to be none),
a tenant with cost and no budget has budget null.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import polars as pl

from gpuledger.analytics import chargeback as cb
from gpuledger.analytics.policy import Policy, apply_idle_policy_to_rows
from gpuledger.analytics.prices import PriceBook
from gpuledger.config import parse_toml
from gpuledger.errors import ConfigError
from gpuledger.store import Store
from gpuledger.timeutil import HOUR_NS, from_ns, iso_utc, month_bounds, to_ns

__all__ = ["Budgets", "TenantBudget", "budget_report", "load_budgets", "month_to_date", "parse_budgets"]

#: Rollup rows in the ledger's shape, one pseudo-interval per hour x GPU (its capacity: the GPU's GPU-seconds
#: that hour), so the chargeback's pools price them (as the API's hourly reads do, gpuledger/api/views.py).
_FROM_HOURLY = (f"node AS agent_id, 'hourly' AS boot_id, (hour_start_ns // {HOUR_NS})::UBIGINT AS seq, node, "
                "hour_start_ns AS interval_start_ns, hour_start_ns + round(sum(gpu_seconds) OVER "
                "(PARTITION BY hour_start_ns, cluster, node, gpu_index) * 1e9)::BIGINT AS interval_end_ns, gpu_index, "
                "model, profile, sharing, kind, tenant, namespace, rule, gpu_seconds, energy_j, cluster")


@dataclass(frozen=True)
class Budgets:
    currency: str
    monthly: dict[str, Decimal]  # tenant -> budget per month


def parse_budgets(text: str, source: str = "<string>") -> Budgets:
    doc = parse_toml(text, source)
    hint = 'currency = "USD" then [[budget]] tenant = "ml" monthly = "5000.00"'
    if set(doc) - {"currency", "budget"} or not isinstance(doc.get("currency"), str):
        raise ConfigError(f"{source}: expected currency and [[budget]] entries only", hint=hint)
    monthly: dict[str, Decimal] = {}
    for n, item in enumerate(doc.get("budget", [])):
        where = f"{source}: [[budget]] #{n + 1}"
        if not isinstance(item, dict) or set(item) != {"tenant", "monthly"} or not isinstance(item["tenant"], str):
            raise ConfigError(f"{where}: needs tenant and monthly, nothing else", hint=hint)
        try:
            if not isinstance(item["monthly"], str):
                raise InvalidOperation
            amount = Decimal(item["monthly"])
        except InvalidOperation:
            raise ConfigError(f"{where}: monthly must be a quoted decimal, got {item['monthly']!r}",
                              hint='monthly = "5000.00" (a TOML float would lose cents)') from None
        if not amount.is_finite() or amount < 0:
            raise ConfigError(f"{where}: monthly must be zero or more, got {amount}", hint=hint)
        if item["tenant"] in monthly:
            raise ConfigError(f"{where}: a second budget for tenant {item['tenant']!r}", hint="one per tenant")
        monthly[item["tenant"]] = amount
    return Budgets(str(doc["currency"]), monthly)


def load_budgets(path: str | Path) -> Budgets:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read budgets {path}: {exc.strerror}", hint="pass --budgets PATH") from None
    return parse_budgets(text, str(path))


def month_to_date(store: Store, month: str, book: PriceBook, policy: Policy = "holder") -> tuple[dict[str, Decimal], int | None]:
    """Cost per tenant of ``month`` from the hourly rollups, and the end (ns) of the newest hour with data (None: none)."""
    start, end = (to_ns(t) for t in month_bounds(month))
    if not store.has_table("ledger_hourly"):
        return {}, None
    rows = store.query(f"SELECT {_FROM_HOURLY} FROM ledger_hourly WHERE hour_start_ns >= ? AND hour_start_ns < ?",
                       [start, end])
    if rows.is_empty():
        return {}, None
    until = int(rows["interval_start_ns"].max()) + HOUR_NS  # type: ignore[arg-type]
    lines, _ = cb.costed_lines(apply_idle_policy_to_rows(rows.lazy(), policy), book, ["tenant"])
    per = lines.group_by("tenant").agg(capacity=pl.col("capacity_cost").sum(),
                                       energy=pl.col("energy_cost").fill_null(0).sum())
    return {r["tenant"]: Decimal(r["capacity"]) + Decimal(r["energy"]) for r in per.iter_rows(named=True)}, until


@dataclass(frozen=True)
class TenantBudget:
    tenant: str
    budget: Decimal | None
    month_to_date: Decimal
    forecast: Decimal
    over_under: Decimal | None  # forecast - budget; positive: over
    status: str  # over_budget, forecast_over, ok, no_budget

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in self.__dict__.items()}


def budget_report(month: str, costs: dict[str, Decimal], until_ns: int | None, budgets: Budgets,
                  quantum: Decimal) -> tuple[list[TenantBudget], str | None]:
    """One entry per tenant with a cost or a budget (sorted), and ``as_of`` (ISO, None: no data yet)."""
    start, end = (to_ns(t) for t in month_bounds(month))
    elapsed = None if until_ns is None else min(until_ns, end) - start
    out = []
    for tenant in sorted(set(costs) | set(budgets.monthly)):
        mtd = costs.get(tenant, Decimal(0)).quantize(quantum)
        forecast = mtd if not elapsed else (mtd * (end - start) / elapsed).quantize(quantum)
        budget = budgets.monthly.get(tenant)
        if budget is None:
            status, gap = "no_budget", None
        else:
            gap = forecast - budget
            status = "over_budget" if mtd > budget else "forecast_over" if forecast > budget else "ok"
        out.append(TenantBudget(tenant, budget, mtd, forecast, gap, status))
    return out, None if until_ns is None else iso_utc(from_ns(min(until_ns, end)))
