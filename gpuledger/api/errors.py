"""The API's one error shape, the registry of its codes, and the handlers that produce them.

Every error, including unknown routes, invalid parameters, missing tokens and
bugs, is answered as::

    {"error": {"code": "bad_period", "message": "...", "hint": "..."}}

``code`` is stable (clients branch on it), ``message`` says what happened,
``hint`` what to do. Every code is declared once, below, with its HTTP status
and meaning (:data:`CODES`); routes raise :class:`ApiError` with one of these
constants, never a string, and docs/api.md lists them all (a test checks
both). :data:`ERROR_RESPONSES` documents the shape, per status with its
codes, in the OpenAPI document of every route.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpuledger.errors import ConfigError, GpuledgerError, StoreError

__all__ = [
    "CODES",
    "ERROR_RESPONSES",
    "ApiError",
    "ErrorBody",
    "ErrorCode",
    "error_response",
    "install_error_handlers",
]


@dataclass(frozen=True)
class ErrorCode:
    """One stable error code: its name, the HTTP status it is answered with, and what it means."""

    code: str
    status: int
    meaning: str


_REGISTRY: list[ErrorCode] = []


def _code(code: str, status: int, meaning: str) -> ErrorCode:
    entry = ErrorCode(code, status, meaning)
    _REGISTRY.append(entry)
    return entry


# --- 400: a parameter has a value the route cannot use -------------------------------
BAD_PERIOD = _code("bad_period", 400, "start/end is not an ISO date/datetime or epoch ms, is outside "
                   "1970-01-01..9999-01-01 (UTC), only one of them is given, or start is not before end")
RANGE_TOO_LARGE = _code("range_too_large", 400, "the period covers more than 400 days")
BAD_GROUP_BY = _code("bad_group_by", 400, "group_by names no dimension, or one the route cannot group by")
BAD_GRANULARITY = _code("bad_granularity", 400, "granularity is not hour, day or month")
TOO_MANY_BUCKETS = _code("too_many_buckets", 400, "the granularity gives more than 2,000 buckets over the period")
BAD_LIMIT = _code("bad_limit", 400, "limit is outside 1..1000")
BAD_CURSOR = _code("bad_cursor", 400, "cursor is not a next_cursor this API issued")
BAD_VIEW = _code("bad_view", 400, "the drill-down view is not intervals, gpus or rules")
BAD_ORDER_BY = _code("bad_order_by", 400, "order_by is not idle_cost, idle_gpu_hours or allocated_gpu_hours")
BAD_MIN_HOURS = _code("bad_min_hours", 400, "min_hours is outside 0..8784")
BAD_MONTH = _code("bad_month", 400, "month is not YYYY-MM (ASCII digits, 0001-01..9999-11), previous or current")
RESULT_TOO_LARGE = _code("result_too_large", 400, "the answer would hold more rows than one request may "
                         "(200,000; 20,000 for a series)")
# --- 401 / 403: who is asking ---------------------------------------------------------
UNAUTHENTICATED = _code("unauthenticated", 401, "no bearer token was sent")
INVALID_TOKEN = _code("invalid_token", 401, "the token is malformed, unknown or revoked")
FORBIDDEN = _code("forbidden", 403, "the token's role may not use this route")
FORBIDDEN_TENANT = _code("forbidden_tenant", 403, "a tenant token asked for another tenant")
# --- 404 / 405 / 409 / 422: the request itself ----------------------------------------
NOT_FOUND = _code("not_found", 404, "no such route or static file")
METHOD_NOT_ALLOWED = _code("method_not_allowed", 405, "the route exists but answers only GET (and HEAD)")
CLOSED_MONTH = _code("closed_month", 409, "the month was closed with another charge period; a closed file "
                     "never changes")
INVALID_REQUEST = _code("invalid_request", 422, "a parameter is missing or has the wrong type")
# --- 500 / 503: the server or its data ------------------------------------------------
INTERNAL_ERROR = _code("internal_error", 500, "a bug")
PRICE_BOOK_ERROR = _code("price_book_error", 500, "the price book cannot price the data")
RECONCILIATION_FAILED = _code("reconciliation_failed", 500, "the month's file does not add up; do not send it")
NO_DATABASE = _code("no_database", 503, "the database file does not exist yet")
DATABASE_BUSY = _code("database_busy", 503, "a writer holds the database file (with Retry-After)")
DATABASE_UNAVAILABLE = _code("database_unavailable", 503, "the database file cannot be opened")
NO_LEDGER = _code("no_ledger", 503, "the database has no ledger yet (attribution has not run)")
STORE_ERROR = _code("store_error", 503, "a database query failed")
HTTP_ERROR = _code("http_error", 400, "any other error of the HTTP layer (answered with that error's own status)")

#: Every code the API answers with, by name.
CODES: dict[str, ErrorCode] = {e.code: e for e in _REGISTRY}


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with its code's status."""

    def __init__(self, code: ErrorCode, message: str, hint: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.hint, self.headers = code, message, hint, headers

    @property
    def status(self) -> int:
        return self.code.status


class ErrorDetail(BaseModel):
    code: str
    message: str
    hint: str


class ErrorBody(BaseModel):
    """The one error shape."""

    error: ErrorDetail


def _description(status: int) -> str:
    codes = ", ".join(e.code for e in _REGISTRY if e.status == status)
    return f"{HTTPStatus(status).phrase}: {codes}"


#: ``responses=`` for every route: the error shape under each status the API may answer, with its codes.
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": _description(status)}
    for status in sorted({e.status for e in _REGISTRY})
}


def error_response(code: ErrorCode, message: str, hint: str = "", headers: dict[str, str] | None = None,
                   *, status: int | None = None) -> JSONResponse:
    """The error answer; ``status`` only where the code's own is not the one (``http_error``)."""
    return JSONResponse({"error": {"code": code.code, "message": message, "hint": hint}},
                        status or code.status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to the one shape."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.code, exc.message, exc.hint, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: (NOT_FOUND, "see /docs for the routes"), 405: (METHOD_NOT_ALLOWED, "use GET (or HEAD)")}
        code, hint = codes.get(exc.status_code, (HTTP_ERROR, ""))
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(code, message, hint, getattr(exc, "headers", None), status=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors())
        return error_response(INVALID_REQUEST, problems or "invalid request", "see /docs for the parameters")

    @app.exception_handler(ConfigError)
    async def config_error(_: Request, exc: ConfigError) -> JSONResponse:
        return error_response(PRICE_BOOK_ERROR, str(exc), exc.hint)

    @app.exception_handler(GpuledgerError)
    async def gpuledger_error(_: Request, exc: GpuledgerError) -> JSONResponse:
        if isinstance(exc, StoreError):
            return error_response(STORE_ERROR, str(exc), exc.hint)
        return error_response(INTERNAL_ERROR, str(exc), exc.hint)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", "this is a bug; please report it")
