"""Export routes: the month's FOCUS file (CSV or Parquet) and its reconciliation report.

Mounted by ``create_app`` (gpuledger/api/app.py ``_include_exports``) behind the
admin/finance roles. The API never writes: a closed month is served from its
stored bytes; an open month is a preview computed now (closing is
``gpuledger export ... --final`` or ``serve --close-months``).

- ``GET /v1/exports/chargeback?month=YYYY-MM&format=csv|parquet&charge_period=month|day``
  — attachment; ``X-Month-Closed: true|false``, ``X-Content-SHA256``.
- ``GET /v1/exports/reconciliation?month=YYYY-MM`` — the report as JSON; a
  report whose checks fail is answered ``500 reconciliation_failed``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from gpuledger.analytics import closing
from gpuledger.analytics.focus import ExportContext
from gpuledger.analytics.reconcile import reconcile
from gpuledger.api.auth import session
from gpuledger.api.errors import ERROR_RESPONSES, ApiError
from gpuledger.api.reader import Session


__all__ = ["router"]

router = APIRouter(prefix="/v1/exports", responses=ERROR_RESPONSES, tags=["exports"])

_MEDIA = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}
_MONTH = Query(..., description="billing month, YYYY-MM (UTC), or `previous`")
_SESSION = Depends(session, scope="function")


def _context(request: Request, charge_period: Literal["month", "day"] | None) -> ExportContext:
    """The app's export context (``create_app(export_context=...)``), with the request's charge period."""
    ctx: ExportContext = request.app.state.export_context
    return ctx if charge_period is None else replace(ctx, charge_period=charge_period)


def _month(month: str) -> str:
    try:
        return closing.resolve_month(month)
    except ValueError as exc:
        raise ApiError(400, "bad_month", str(exc), "e.g. month=2026-10, or month=previous") from None


@router.get("/chargeback", response_class=Response, summary="The month's FOCUS chargeback file (admin, finance)",
            responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}},
                             "description": "the file; a closed month's stored bytes"}})
def chargeback(request: Request, month: str = _MONTH, format: Literal["csv", "parquet"] = "csv",
               charge_period: Literal["month", "day"] | None = None, s: Session = _SESSION) -> Response:
    month = _month(month)
    ctx = _context(request, charge_period)
    book = request.app.state.book

    def compute() -> closing.ExportResult:
        closed = closing.closed_months(s.store).get(month)
        use = ctx if charge_period is not None or closed is None else replace(ctx, charge_period=closed.charge_period)
        try:
            return closing.export(s.store, month, book, fmt=format, context=use)
        except closing.ExportError as exc:
            raise ApiError(409, "closed_month", str(exc), exc.hint) from None

    result = request.app.state.db.cached(("exports", month, format, ctx), compute)
    return Response(result.content, media_type=_MEDIA[format], headers={
        "Content-Disposition": f'attachment; filename="gpuledger-chargeback-{month}.{format}"',
        "X-Month-Closed": "true" if result.closed else "false",
        "X-Content-SHA256": result.sha256,
    })


@router.get("/reconciliation", summary="Does the month's file add up? (admin, finance)")
def reconciliation(request: Request, month: str = _MONTH, s: Session = _SESSION) -> dict[str, Any]:
    month = _month(month)
    ctx = _context(request, None)
    book = request.app.state.book
    report = request.app.state.db.cached(("reconciliation", month, ctx),
                                         lambda: reconcile(s.store, month, book, ctx))
    if not report.ok:
        raise ApiError(500, "reconciliation_failed", f"{month}: " + "; ".join(report.problems),
                       "do not send this file to finance; see `gpuledger export reconciliation` and report the bug")
    return report.to_dict()
