"""The HTTP API: showback, efficiency, fleet, Grafana series, drill-down, chargeback, and a web page.

``create_app(db_path)`` serves a DuckDB file opened read-only per request
(:mod:`~gpuledger.api.reader`); ``create_app(store=...)`` an open Store (tests,
in-process use). Every route but ``/healthz``, the page and the OpenAPI
document needs a bearer token (:mod:`~gpuledger.api.auth`); ``auth=False`` is
for local development only (``gpuledger serve --no-auth``).

Routes (times UTC, periods start inclusive, end exclusive; see docs/api.md):

- ``GET /`` the showback page; ``GET /healthz``; ``GET /v1/whoami``
- ``GET /v1/showback`` usage, cost and idle cost per group, buckets, filters, pages (``format=csv``: the whole view)
- ``GET /v1/values?dimension=...`` the values of a dimension in a period (pickers, Grafana variables)
- ``GET /v1/drilldown`` the ledger rows (intervals, GPUs, rules) behind a line
- ``GET /v1/efficiency``, ``/v1/efficiency/top-wasters``, ``/v1/efficiency/idle-gpus``
- ``GET /v1/fleet`` GPUs, health, holders
- ``GET /v1/series/showback``, ``/v1/series/efficiency``, ``/v1/series/gpu`` flat rows for Grafana
- ``GET /v1/chargeback.csv?month=YYYY-MM``, ``/v1/exports/chargeback``, ``/v1/exports/reconciliation``
  the month's FOCUS file and its report (admin, finance; :mod:`~gpuledger.api.exports`)

With ``audit=`` every ``/v1/`` request is logged (:mod:`~gpuledger.api.audit`); the API's own
series are not a route here but ``metrics=`` (:mod:`~gpuledger.api.metrics`);
TLS is uvicorn's, from settings (:mod:`~gpuledger.api.serving`). Every GET
route also answers ``HEAD`` (the GET's status and headers, no body;
:mod:`~gpuledger.api.head`). Errors have one shape (:mod:`~gpuledger.api.errors`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse

from gpuledger import __version__
from gpuledger.analytics.budgets import Budgets
from gpuledger.analytics.economics import CloudRates, NodePools, default_cloud_rates
from gpuledger.analytics.focus import ExportContext
from gpuledger.analytics.prices import PriceBook, default_price_book
from gpuledger.analytics.queues import Queues
from gpuledger.analytics.work_units import WorkUnits, default_work_units
from gpuledger.api import errors as E
from gpuledger.api import (
    exports,
    routes_business,
    routes_efficiency,
    routes_fleet,
    routes_series,
    routes_showback,
    routes_values,
)
from gpuledger.api.audit import AuditLog
from gpuledger.api.auth import EXPORT_ROLES, principal, require
from gpuledger.api.errors import ERROR_RESPONSES, ApiError, install_error_handlers
from gpuledger.api.head import HeadAsGet
from gpuledger.api.metrics import ApiMetrics, BudgetSeries, RequestLog
from gpuledger.api.models import WhoAmI
from gpuledger.api.reader import Database
from gpuledger.api.respcache import ResponseCache
from gpuledger.api.routes_business import budgets_body
from gpuledger.api.tokens import Principal
from gpuledger.errors import ConfigError
from gpuledger.store import Store
from gpuledger.store.metadata import TokenSql

__all__ = ["ApiError", "create_app"]

STATIC = Path(__file__).parent / "static"


def create_app(db_path: str | Path | None = None, prices: PriceBook | None = None, *,
               store: Store | None = None, auth: bool = True, cache_ttl_s: float = 60.0,
               export_context: ExportContext | None = None, audit: AuditLog | None = None,
               cloud_rates: CloudRates | None = None, node_pools: NodePools | None = None,
               budgets: Budgets | None = None, work_units: WorkUnits | None = None,
               queues: Queues | None = None, metrics: ApiMetrics | None = None,
               tokens: TokenSql | None = None, token_version: Callable[[], Hashable] | None = None,
               health: Callable[[], dict[str, Any]] | None = None) -> FastAPI:
    """The API over a DuckDB file (read-only per request) or an open ``store``.

    ``prices`` defaults to the shipped book (gpuledger/defaults/prices.toml);
    ``export_context`` (who bills whom on the FOCUS file; ``gpuledger serve``
    builds it from the settings) to the settings' documented defaults;
    ``audit`` logs every ``/v1/`` request's token, route and status
    (:mod:`~gpuledger.api.audit`; ``serving.audit_log(settings)``); ``cloud_rates`` to the
    shipped example and ``node_pools`` to none (every node ``unassigned``) for ``/v1/economics``;
    ``budgets`` (per-tenant monthly budgets, ``/v1/budgets`` and the budget series) to none; ``work_units``
    (``/v1/units``) to the shipped vLLM token counters; ``queues`` (``/v1/queues``) to GPUs, tenant = queue name.
    ``tokens`` and ``token_version``: check tokens there (the lake's metadata database,
    ``gpuledger serve --lake``) instead of the token file, the table's version keying every cache;
    ``health()`` adds its fields to ``/healthz`` (a lake replica: the snapshot served and its age).
    ``metrics`` counts and times every request and renders the current month's budget series in its
    registry (:mod:`~gpuledger.api.metrics`: the process's one ``/metrics``, served on its own port by
    ``gpuledger serve --metrics-port``); the access-log line is written either way.
    """
    db = Database(db_path, store, ttl_s=cache_ttl_s, tokens=tokens, token_version=token_version)
    app = FastAPI(title="gpuledger", version=__version__,
                  description="GPU showback, efficiency, fleet health and chargeback. Send "
                  "`Authorization: Bearer <token>` (create one with `gpuledger token create`).")
    app.state.db, app.state.book, app.state.auth = db, prices or default_price_book(), auth
    app.state.export_context = export_context or ExportContext()
    app.state.cloud_rates, app.state.node_pools = cloud_rates or default_cloud_rates(), node_pools or NodePools()
    app.state.budgets = budgets or Budgets(app.state.book.currency, {})
    app.state.work_units = work_units or default_work_units()
    app.state.queues = queues or Queues()
    if app.state.budgets.currency != app.state.book.currency:
        raise ConfigError(f"budgets are in {app.state.budgets.currency}, the price book in {app.state.book.currency}",
                          hint="write the budgets in the price book's currency")
    install_error_handlers(app)
    app.add_middleware(ResponseCache, db=db)
    app.add_middleware(HeadAsGet)  # outside the cache: a HEAD is a GET from there in
    # Outermost: one watcher per request (access log, series, audit), HEAD as HEAD, every status, cached or not.
    app.add_middleware(RequestLog, metrics=metrics, audit=audit)
    if metrics is not None:  # the budget series beside the request series: one /metrics per process
        state = app.state
        metrics.registry.register(BudgetSeries(db, lambda s, month: budgets_body(
            db, s, state.book, state.budgets, month, state.export_context.idle_policy)))

    @app.get("/healthz", summary="liveness (no token needed)")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, **(health() if health is not None else {})}

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise ApiError(E.NOT_FOUND, f"no static file {name!r}", "the page needs only /static/app.js")
        return FileResponse(path)

    @app.get("/v1/whoami", response_model=WhoAmI, responses=ERROR_RESPONSES, summary="the token's role and tenant")
    def whoami(request: Request, who: Principal = Depends(principal)) -> WhoAmI:
        return WhoAmI(token_id=who.token_id, role=who.role, tenant=who.tenant, auth=request.app.state.auth)

    for module in (routes_showback, routes_efficiency, routes_fleet, routes_series, routes_values):
        app.include_router(module.router)
    # The finance files: every route there is behind the admin/finance check (the isolation test walks them).
    app.include_router(exports.router, dependencies=[Depends(require(*EXPORT_ROLES))])
    app.include_router(routes_business.router)  # each route checks its own roles
    return app
