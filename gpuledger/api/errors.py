"""The API's one error shape and the handlers that produce it.

Every error, including unknown routes, invalid parameters, missing tokens and
bugs, is answered as::

    {"error": {"code": "bad_period", "message": "...", "hint": "..."}}

``code`` is stable (clients branch on it), ``message`` says what happened,
``hint`` what to do. :data:`ERROR_RESPONSES` documents the shape in the
OpenAPI document for every route.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpuledger.errors import ConfigError, GpuledgerError, StoreError

__all__ = ["ERROR_RESPONSES", "ApiError", "ErrorBody", "error_response", "install_error_handlers"]


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, hint: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.hint, self.headers = status, code, message, hint, headers


class ErrorDetail(BaseModel):
    code: str
    message: str
    hint: str


class ErrorBody(BaseModel):
    """The one error shape."""

    error: ErrorDetail


_DESCRIPTIONS = {
    400: "invalid parameter value (bad period, unknown group, range or result too large)",
    401: "no token, or an unknown or revoked one",
    403: "the token's role or tenant does not allow this",
    404: "no such route or object",
    422: "a parameter is missing or has the wrong type",
    500: "a bug or a broken price book",
    503: "the database is missing, held by a writer, or has no ledger yet",
}
#: ``responses=`` for every route: the error shape under each status it may answer.
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": text} for status, text in _DESCRIPTIONS.items()
}


def error_response(status: int, code: str, message: str, hint: str = "",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "hint": hint}}, status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to the one shape."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.hint, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: ("not_found", "see /docs for the routes"), 405: ("method_not_allowed", "use GET")}
        code, hint = codes.get(exc.status_code, ("http_error", ""))
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(exc.status_code, code, message, hint, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors())
        return error_response(422, "invalid_request", problems or "invalid request", "see /docs for the parameters")

    @app.exception_handler(ConfigError)
    async def config_error(_: Request, exc: ConfigError) -> JSONResponse:
        return error_response(500, "price_book_error", str(exc), exc.hint)

    @app.exception_handler(GpuledgerError)
    async def gpuledger_error(_: Request, exc: GpuledgerError) -> JSONResponse:
        if isinstance(exc, StoreError):
            return error_response(503, "store_error", str(exc), exc.hint)
        return error_response(500, "internal_error", str(exc), exc.hint)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}", "this is a bug; please report it")
