"""Business routes: ``/v1/economics`` (admin, finance), ``/v1/budgets``, ``/v1/units``, ``/v1/queues``.

- ``/v1/economics?month=``: per node pool and GPU model, utilization,
  allocation, efficiency, the owned fleet's cost per used GPU-hour, and what
  the used and allocated hours would have cost rented on demand, with the
  break-even utilization (:mod:`gpuledger.analytics.economics`;
  docs/economics.md), from the hourly rollups.
- ``/v1/budgets?month=`` (default: the current UTC month): per tenant, the
  monthly budget, month-to-date cost, forecast to the month's end and over or
  under (:mod:`gpuledger.analytics.budgets`); a tenant token sees its own line.
- ``/v1/units?month=``: cost, GPU-hours and kWh per work unit (per 1M tokens)
  per unit, tenant, GPU model and pod (:mod:`gpuledger.analytics.work_units`);
  a tenant token sees its own rows.
- ``/v1/queues?month=``: per Kueue ClusterQueue, quota vs admitted vs measured
  GPU-hours and the admission wait (:mod:`gpuledger.analytics.queues`), and
  per LocalQueue its tenant's share of the ClusterQueue's quota
  (:mod:`gpuledger.analytics.local_queues`); a tenant token sees its own.
- ``/v1/units``, ``/v1/queues`` and ``/v1/budgets`` take ``start``/``end``
  (Grafana's ``${__from}``/``${__to}``) in place of ``month``: the month that
  holds the period's last instant; without either, the current UTC month.

The current month's budget report is also rendered as Prometheus series on
the API's one ``/metrics`` (``serve --metrics-port``; :mod:`~gpuledger.api.metrics`).

The app's cloud rates, node pools and budgets come from ``create_app``
(``gpuledger serve --cloud-rates --node-pools --budgets``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from gpuledger.analytics import budgets as bud
from gpuledger.analytics import economics as econ
from gpuledger.analytics import queues as qu
from gpuledger.analytics import work_units as wu
from gpuledger.analytics.local_queues import local_queue_report
from gpuledger.analytics.policy import Policy
from gpuledger.api.auth import EXPORT_ROLES, SHOWBACK_ROLES, data_filters, require, session
from gpuledger.api.errors import ERROR_RESPONSES
from gpuledger.api.params import END, START, parse_month, parse_period, resolve_period
from gpuledger.api.reader import Database, Session
from gpuledger.api.tokens import Principal
from gpuledger.timeutil import from_ns, iso_utc, month_bounds, to_ns

__all__ = ["router"]

router = APIRouter(responses=ERROR_RESPONSES)
_SESSION = Depends(session, scope="function")
_MONTH = Query(None, description="billing month, YYYY-MM (UTC), `previous` or `current`; else start/end "
               "(Grafana): the month holding the period's last instant; default: current")


def _month(month: str | None, start: str | None, end: str | None) -> str:
    """``month``, else the month of ``start``/``end``'s last instant, else the current UTC month."""
    if month is not None:
        return parse_month(month)
    period = parse_period(start, end, None)
    if period is None:
        return parse_month("current")
    return f"{(period.end - timedelta(microseconds=1)):%Y-%m}"


@router.get("/v1/economics", tags=["business"],
            summary="Fleet economics per node pool and GPU model: utilization, cost per used GPU-hour, "
            "rent vs own (admin, finance)")
def economics(request: Request, month: str | None = Query(None, description="YYYY-MM (UTC) or `previous`; "
                                                          "else start/end (Grafana), else the latest month with data"),
              start: str | None = START, end: str | None = END, who: Principal = Depends(require(*EXPORT_ROLES)),
              s: Session = _SESSION) -> dict[str, Any]:
    db: Database = request.app.state.db
    book, rates, pools = request.app.state.book, request.app.state.cloud_rates, request.app.state.node_pools
    if month is not None:
        month = parse_month(month)
        lo, hi = (to_ns(t) for t in month_bounds(month))
    else:
        period = resolve_period(s, start, end, data_filters(who))
        if period is None:
            return econ.report_dict(None, [], rates, 0, None)
        lo, hi = to_ns(period.start), to_ns(period.end)

    def compute() -> dict[str, Any]:
        s.query("SELECT 1 FROM ledger_hourly LIMIT 0")  # 503 with a hint on a file without rollups
        rows, pending = econ.read_period(s.store, lo, hi)
        return econ.report_dict(month, econ.economics(rows, book, rates, pools), rates, pending,
                                None if month else {"start": iso_utc(from_ns(lo)), "end": iso_utc(from_ns(hi))})

    return db.cached(("economics", lo, hi, month), compute)


def budgets_body(db: Database, s: Session, book: Any, budgets: bud.Budgets, month: str,
                 policy: Policy) -> dict[str, Any]:
    """The budget report of ``month`` as ``/v1/budgets`` answers it (every tenant), cached with the file's version.

    Also what the API's ``/metrics`` renders (:class:`~gpuledger.api.metrics.BudgetSeries`).
    """

    def compute() -> dict[str, Any]:
        costs, until = bud.month_to_date(s.store, month, book, policy)
        lines, as_of = bud.budget_report(month, costs, until, budgets, book.quantum)
        return {"month": month, "currency": book.currency, "idle_policy": policy, "as_of": as_of,
                "tenants": [t.to_dict() for t in lines]}

    body: dict[str, Any] = db.cached(("budgets", month, policy), compute)
    return body


@router.get("/v1/units", tags=["business"],
            summary="Cost, GPU-hours and kWh per work unit (e.g. per 1M tokens) per tenant, model and pod")
def units(request: Request, month: str | None = _MONTH, start: str | None = START, end: str | None = END,
          who: Principal = Depends(require(*SHOWBACK_ROLES)), s: Session = _SESSION) -> dict[str, Any]:
    month = _month(month, start, end)
    db: Database = request.app.state.db
    book, config = request.app.state.book, request.app.state.work_units
    rows: list[dict[str, Any]] = db.cached(("units", month), lambda: wu.unit_report(s.store, month, book, config))
    if who.scoped:
        rows = [r for r in rows if r["tenant"] == who.tenant]
    return {"month": month, "currency": book.currency, "rows": rows}


@router.get("/v1/queues", tags=["business"],
            summary="Per Kueue ClusterQueue: quota, admitted, borrowed and unused GPU-hours, measured use, wait p50/p95; "
            "per LocalQueue: its share of the ClusterQueue's quota")
def queues(request: Request, month: str | None = _MONTH, start: str | None = START, end: str | None = END,
           who: Principal = Depends(require(*SHOWBACK_ROLES)), s: Session = _SESSION) -> dict[str, Any]:
    month = _month(month, start, end)
    db: Database = request.app.state.db
    config = request.app.state.queues
    rows: list[dict[str, Any]] = db.cached(("queues", month), lambda: qu.queue_report(s.store, month, config))
    local: list[dict[str, Any]] = db.cached(("local_queues", month),
                                            lambda: local_queue_report(s.store, month, config))
    if who.scoped:
        rows = [r for r in rows if r["tenant"] == who.tenant]
        local = [r for r in local if r["tenant"] == who.tenant]
    return {"month": month, "resource": config.resource, "queues": rows, "local_queues": local}


@router.get("/v1/budgets", tags=["business"],
            summary="Per tenant: monthly budget, month-to-date cost, forecast to month end, over/under")
def budgets(request: Request, month: str | None = Query(None, description="YYYY-MM (UTC), `current` or `previous`; "
                                                        "else start/end's month (Grafana); default: current"),
            start: str | None = START, end: str | None = END,
            idle_policy: Policy = Query("holder", description="who pays for idle (as /v1/showback)"),
            who: Principal = Depends(require(*SHOWBACK_ROLES)), s: Session = _SESSION) -> dict[str, Any]:
    state = request.app.state
    body = budgets_body(state.db, s, state.book, state.budgets, _month(month, start, end), idle_policy)
    if who.scoped:
        body = {**body, "tenants": [t for t in body["tenants"] if t["tenant"] == who.tenant]}
    return body
