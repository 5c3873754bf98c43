"""The HTTP API: showback JSON and the monthly chargeback file.

Reading the database: DuckDB lets one process write a file. The API never
writes; given a path it opens the file read-only for each request and closes
it after, so it holds no lock between requests. While a writer (``gpuledger
ingest``) holds the file, DuckDB refuses other processes: the API answers 503
``database_busy`` with a hint, never a stack trace. The demo runs everything
in one process and passes its ``Store`` instead (``create_app(store=...)``).

Every error, including unknown routes and invalid parameters, has one shape::

    {"error": {"code": "bad_period", "message": "...", "hint": "..."}}

Routes (times UTC, periods start inclusive, end exclusive):

- ``GET /healthz``
- ``GET /v1/showback?start=&end=&group_by=tenant`` — ISO dates or datetimes;
  without start/end, the latest calendar month that has data.
- ``GET /v1/chargeback.csv?month=YYYY-MM`` — FOCUS columns, attachment.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpuledger import __version__
from gpuledger.analytics import chargeback as cb
from gpuledger.analytics.focus import focus_csv
from gpuledger.analytics.prices import PriceBook, default_price_book
from gpuledger.errors import ConfigError, GpuledgerError, StoreError
from gpuledger.store import Store

__all__ = ["create_app", "ApiError"]

_HOURS = 6  # decimals of GPU-hours and kWh in JSON


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, hint: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.hint, self.headers = status, code, message, hint, headers


def _error(status: int, code: str, message: str, hint: str = "", headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "hint": hint}}, status, headers=headers)


class _Ledger:
    """Reads ledger rows, from a path (read-only per call) or a live Store."""

    def __init__(self, db_path: str | Path | None, store: Store | None) -> None:
        if (db_path is None) == (store is None):
            raise ValueError("create_app needs exactly one of db_path or store")
        self.path = Path(db_path) if db_path is not None else None
        self.store = store

    @contextmanager
    def _open(self) -> Iterator[Store]:
        if self.store is not None:
            yield self.store
            return
        assert self.path is not None
        if not self.path.exists():
            raise ApiError(503, "no_database", f"database {self.path} does not exist yet",
                           "start `gpuledger ingest` (or the demo) to create it, or check the --db path")
        try:
            store = Store(self.path, read_only=True)
        except StoreError as exc:
            if "lock" in str(exc).lower():
                raise ApiError(503, "database_busy", f"database {self.path} is held by a writer",
                               "a writer process (gpuledger ingest) holds the file; retry shortly, or serve "
                               "the API from the writer process (see docs/operations.md)",
                               {"Retry-After": "5"}) from None
            raise ApiError(503, "database_unavailable", str(exc), exc.hint) from None
        try:
            yield store
        finally:
            store.close()

    @contextmanager
    def _reading(self) -> Iterator[Store]:
        with self._open() as store:
            try:
                yield store
            except StoreError as exc:
                if "ledger" in str(exc).lower() and "does not exist" in str(exc).lower():
                    raise ApiError(503, "no_ledger", "the database has no ledger table yet",
                                   "run attribution (`gpuledger attribute`) or let ingest run it") from None
                raise

    def rows(self, start: datetime, end: datetime) -> pl.LazyFrame:
        with self._reading() as store:
            return cb.read_ledger(store, start, end)

    def latest_start_ns(self) -> int | None:
        with self._reading() as store:
            frame = store.query("SELECT max(interval_start_ns) AS latest FROM ledger")
        return None if frame.is_empty() else frame["latest"][0]


def create_app(db_path: str | Path | None = None, prices: PriceBook | None = None, *,
               store: Store | None = None) -> FastAPI:
    """The API over a DuckDB file (read-only per request) or an open ``store`` (demo).

    ``prices`` defaults to the shipped book (gpuledger/defaults/prices.toml).
    """
    ledger = _Ledger(db_path, store)
    book = prices or default_price_book()
    app = FastAPI(title="gpuledger", version=__version__)
    _install_error_handlers(app)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/v1/showback")
    def showback(start: str | None = None, end: str | None = None, group_by: str = "tenant") -> dict[str, Any]:
        by = _group_by(group_by)
        period = _period(start, end, ledger)
        if period is None:
            return {"period": None, "group_by": by, "currency": book.currency, "total_cost": None, "rows": []}
        frame = cb.showback(ledger.rows(*period), book, by)
        rows = [_showback_row(r, by, book.currency) for r in frame.iter_rows(named=True)]
        total = sum((Decimal(r["cost"]) for r in rows), Decimal(0))
        return {"period": {"start": _iso(period[0]), "end": _iso(period[1])}, "group_by": by,
                "currency": book.currency, "total_cost": str(total.quantize(book.quantum)), "rows": rows}

    @app.get("/v1/chargeback.csv")
    def chargeback(month: str = Query(..., description="billing month, YYYY-MM (UTC)")) -> Response:
        try:
            start, end = cb.month_bounds(month)
        except ValueError as exc:
            raise ApiError(400, "bad_month", str(exc), "e.g. month=2025-03") from None
        text, totals = focus_csv(ledger.rows(start, end), book, month)
        return Response(text.encode("utf-8"), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="gpuledger-chargeback-{month}.csv"',
            "X-Billed-Total": f"{totals.billed_total} {totals.currency}",
        })

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.hint, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: ("not_found", "see /docs for the routes"), 405: ("method_not_allowed", "use GET")}
        code, hint = codes.get(exc.status_code, ("http_error", ""))
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return _error(exc.status_code, code, message, hint, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors())
        return _error(422, "invalid_request", problems or "invalid request", "see /docs for the parameters")

    @app.exception_handler(ConfigError)
    async def config_error(_: Request, exc: ConfigError) -> JSONResponse:
        return _error(500, "price_book_error", str(exc), exc.hint)

    @app.exception_handler(GpuledgerError)
    async def gpuledger_error(_: Request, exc: GpuledgerError) -> JSONResponse:
        return _error(503 if isinstance(exc, StoreError) else 500, "store_error" if isinstance(exc, StoreError)
                      else "internal_error", str(exc), exc.hint)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, "internal_error", f"{type(exc).__name__}: {exc}", "this is a bug; please report it")


def _group_by(raw: str) -> list[str]:
    by = list(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))
    bad = [b for b in by if b not in cb.GROUPABLE]
    if bad or not by:
        raise ApiError(400, "bad_group_by", f"cannot group by {', '.join(bad) or 'nothing'}",
                       f"group_by is a comma-separated list of: {', '.join(cb.GROUPABLE)}")
    return by


def _period(start: str | None, end: str | None, ledger: _Ledger) -> tuple[datetime, datetime] | None:
    if start is None and end is None:
        latest = ledger.latest_start_ns()
        if latest is None:
            return None
        return cb.period_of(datetime.fromtimestamp(latest // 10**9, UTC).date())
    if start is None or end is None:
        raise ApiError(400, "bad_period", "give both start and end, or neither",
                       "e.g. start=2025-03-01&end=2025-04-01 (end exclusive); neither = latest month with data")
    begin, finish = _moment(start, "start"), _moment(end, "end")
    if begin >= finish:
        raise ApiError(400, "bad_period", f"start {start} is not before end {end}", "end is exclusive")
    return begin, finish


def _moment(text: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ApiError(400, "bad_period", f"{name}={text!r} is not an ISO 8601 date or datetime",
                       "e.g. 2025-03-01 or 2025-03-01T12:00:00Z (UTC when no offset)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 3600, _HOURS)


def _showback_row(r: dict[str, Any], by: list[str], currency: str) -> dict[str, Any]:
    out = {key: r[key] for key in by}
    out.update(
        gpu_hours=_hours(r["gpu_seconds"]),
        used_gpu_hours=_hours(r["busy_seconds"]),
        allocated_idle_gpu_hours=_hours(r["idle_seconds"]),
        unmeasured_gpu_hours=_hours(r["unmeasured_seconds"]),
        unallocated_gpu_hours=_hours(r["unallocated_seconds"]),
        energy_kwh=None if r["energy_j"] is None else round(r["energy_j"] / cb.J_PER_KWH, _HOURS),
        cost=str(r["cost"]),
        currency=currency,
        coverage=None if r["coverage"] is None else round(r["coverage"], _HOURS),
    )
    return out
