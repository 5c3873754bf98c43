"""The HTTP API: showback, efficiency, fleet, Grafana series, drill-down, chargeback, and a web page.

``create_app(db_path)`` serves a DuckDB file opened read-only per request
(:mod:`~gpuledger.api.reader`); ``create_app(store=...)`` an open Store (tests,
in-process use). Every route but ``/healthz``, the page and the OpenAPI
document needs a bearer token (:mod:`~gpuledger.api.auth`); ``auth=False`` is
for local development only (``gpuledger serve --no-auth``).

Routes (times UTC, periods start inclusive, end exclusive; see docs/api.md):

- ``GET /`` the showback page; ``GET /healthz``; ``GET /v1/whoami``
- ``GET /v1/showback`` usage and cost per group, buckets, filters, pages
- ``GET /v1/drilldown`` the ledger rows (intervals, GPUs, rules) behind a line
- ``GET /v1/efficiency``, ``/v1/efficiency/top-wasters``, ``/v1/efficiency/idle-gpus``
- ``GET /v1/fleet`` GPUs, health, holders
- ``GET /v1/series/showback``, ``/v1/series/efficiency``, ``/v1/series/gpu`` flat rows for Grafana
- ``GET /v1/chargeback.csv?month=YYYY-MM`` FOCUS columns (admin, finance)

Errors have one shape (:mod:`~gpuledger.api.errors`).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, Response
from gpuledger.analytics import closing
from gpuledger.analytics.prices import PriceBook, default_price_book
from gpuledger.api import (
    routes_efficiency,
    routes_fleet,
    routes_series,
    routes_showback,
    views,
)
from gpuledger.api.auth import EXPORT_ROLES, principal, require, session
from gpuledger.api.errors import ERROR_RESPONSES, ApiError, install_error_handlers
from gpuledger.api.models import WhoAmI
from gpuledger.api.reader import Database, Session
from gpuledger.api.respcache import ResponseCache
from gpuledger.api.tokens import Principal

from gpuledger import __version__
from gpuledger.store import Store
from gpuledger.timeutil import month_bounds

__all__ = ["ApiError", "create_app"]

STATIC = Path(__file__).parent / "static"


def create_app(db_path: str | Path | None = None, prices: PriceBook | None = None, *,
               store: Store | None = None, auth: bool = True, cache_ttl_s: float = 60.0) -> FastAPI:
    """The API over a DuckDB file (read-only per request) or an open ``store``.

    ``prices`` defaults to the shipped book (gpuledger/defaults/prices.toml).
    """
    db = Database(db_path, store, ttl_s=cache_ttl_s)
    app = FastAPI(title="gpuledger", version=__version__,
                  description="GPU showback, efficiency, fleet health and chargeback. Send "
                  "`Authorization: Bearer <token>` (create one with `gpuledger token create`).")
    app.state.db, app.state.book, app.state.auth = db, prices or default_price_book(), auth
    install_error_handlers(app)
    app.add_middleware(ResponseCache, db=db)

    @app.get("/healthz", summary="liveness (no token needed)")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise ApiError(404, "not_found", f"no static file {name!r}", "the page needs only /static/app.js")
        return FileResponse(path)

    @app.get("/v1/whoami", response_model=WhoAmI, responses=ERROR_RESPONSES, summary="the token's role and tenant")
    def whoami(request: Request, who: Principal = Depends(principal)) -> WhoAmI:
        return WhoAmI(token_id=who.token_id, role=who.role, tenant=who.tenant, auth=request.app.state.auth)

    @app.get("/v1/chargeback.csv", response_class=Response, responses={
        **ERROR_RESPONSES, 200: {"content": {"text/csv": {"schema": {"type": "string"}}},
                                 "description": "FOCUS chargeback file"}},
             summary="The month's chargeback file, FOCUS columns (admin, finance)")
    def chargeback(request: Request, month: str = Query(..., description="billing month, YYYY-MM (UTC)"),
                   _: Principal = Depends(require(*EXPORT_ROLES)), s: Session = Depends(session, scope="function")) -> Response:
        try:
            start, end = month_bounds(month)
        except ValueError as exc:
            raise ApiError(400, "bad_month", str(exc), "e.g. month=2025-03") from None
        book = request.app.state.book

        def compute() -> tuple[bytes, str]:
            # A closed month is its stored file; an open one carries corrections for closed months.
            s.query("SELECT 1 FROM ledger LIMIT 0")  # 503 no_ledger, with a hint, before any work
            result = closing.export(s.store, month, book)
            billed = closing.money_sum(row["BilledCost"] for row in closing.parse_csv(result.content)[1])
            return result.content, f"{billed} {book.currency}"

        body, total = db.cached(("chargeback", month), compute)
        return Response(body, media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="gpuledger-chargeback-{month}.csv"',
            "X-Billed-Total": total,
        })

    for module in (routes_showback, routes_efficiency, routes_fleet, routes_series):
        app.include_router(module.router)
    _include_exports(app)
    return app


def _include_exports(app: FastAPI) -> None:
    """Mount ``gpuledger.api.exports.router`` (the export routes, built separately) when it exists.

    Its routes get the finance/admin check here, so every route of the app is
    behind a role (the isolation test walks them all).
    """
    if importlib.util.find_spec("gpuledger.api.exports") is None:
        return
    module = importlib.import_module("gpuledger.api.exports")
    router = getattr(module, "router", None)
    if router is not None:
        app.include_router(router, dependencies=[Depends(require(*EXPORT_ROLES))])
