"""The finance files: the month's FOCUS chargeback file (CSV or Parquet) and its reconciliation report.

Mounted by ``create_app`` (gpuledger/api/app.py) behind the admin/finance
roles. The API never writes: a closed month is served from its stored bytes;
an open month is a preview computed now (closing is ``gpuledger export ...
--final`` or ``serve --close-months``).

- ``GET /v1/exports/chargeback?month=YYYY-MM&format=csv|parquet&charge_period=month|day&focus_version=1.4|1.2
  &idle_policy=holder|share_unallocated|platform`` (header ``X-Idle-Policy``)
  and ``GET /v1/chargeback.csv?month=YYYY-MM`` (the page's download, the same
  as ``format=csv`` without ``charge_period``) — one code path: the same month
  parsing, the same cached file, the same bytes and headers. Attachment;
  ``X-Month-Closed: true|false``, ``X-Content-SHA256``, ``X-Billed-Total``
  (the file's BilledCost sum and its currency).
- ``GET /v1/exports/reconciliation?month=YYYY-MM`` — the report as JSON; a
  report whose checks fail is answered ``500 reconciliation_failed``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from gpuledger.analytics import closing
from gpuledger.analytics.focus import ExportContext
from gpuledger.analytics.policy import Policy
from gpuledger.analytics.reconcile import reconcile
from gpuledger.api import errors as E
from gpuledger.api.auth import session
from gpuledger.api.errors import ERROR_RESPONSES, ApiError
from gpuledger.api.params import MONTH, parse_month
from gpuledger.api.reader import Database, Session

__all__ = ["ChargebackFile", "chargeback_file", "router"]

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)

_MEDIA = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}
_SESSION = Depends(session, scope="function")


@dataclass(frozen=True)
class ChargebackFile:
    """One month's file as served (what the cache keeps: the bytes and their headers' values)."""

    month: str
    format: str
    content: bytes
    closed: bool
    sha256: str
    billed_total: str  # "<BilledCost sum> <currency>"
    idle_policy: str  # the policy the file was computed under (a closed file: the one it was closed with)


def _context(request: Request, charge_period: Literal["month", "day"] | None,
             focus_version: Literal["1.4", "1.2"] | None = None, idle_policy: Policy | None = None) -> ExportContext:
    """The app's export context (``create_app(export_context=...)``), with the request's period, version, policy."""
    ctx: ExportContext = request.app.state.export_context
    ctx = ctx if focus_version is None else replace(ctx, focus_version=focus_version)
    ctx = ctx if idle_policy is None else replace(ctx, idle_policy=idle_policy)
    return ctx if charge_period is None else replace(ctx, charge_period=charge_period)


def _period(stored: str) -> Literal["month", "day"]:
    """A close record's charge period (written by this code: month or day)."""
    if stored not in ("month", "day"):
        raise ValueError(f"a close record holds charge period {stored!r}")
    return "month" if stored == "month" else "day"


def chargeback_file(request: Request, s: Session, month: str, fmt: closing.Format = "csv",
                    charge_period: Literal["month", "day"] | None = None,
                    focus_version: Literal["1.4", "1.2"] | None = None,
                    idle_policy: Policy | None = None) -> ChargebackFile:
    """The month's file, for both chargeback routes: a closed month's stored bytes, else computed now.

    Without ``charge_period`` a closed month is served with the charge period it
    was closed with; with one that differs, 409 ``closed_month``.
    """
    month = parse_month(month)
    ctx = _context(request, charge_period, focus_version, idle_policy)
    book = request.app.state.book

    def compute() -> ChargebackFile:
        s.query("SELECT 1 FROM ledger LIMIT 0")  # 503 no_ledger, with a hint, before any work
        closed = closing.closed_months(s.store).get(month)
        use = ctx if charge_period is not None or closed is None else replace(ctx, charge_period=_period(closed.charge_period))
        try:
            result = closing.export(s.store, month, book, fmt=fmt, context=use)
        except closing.ExportError as exc:
            raise ApiError(E.CLOSED_MONTH, str(exc), exc.hint) from None
        if result.record is not None:  # a stored file: its close record holds its total and policy
            billed, currency = result.record.billed_total, result.record.currency
            policy = use.as_closed(result.record.charge_period, result.record.inputs).idle_policy
        else:
            billed, currency = sum((c.cost for c in result.rows), Decimal(0)), book.currency
            policy = use.idle_policy
        return ChargebackFile(month, fmt, result.content, result.closed, result.sha256, f"{billed} {currency}",
                              policy)

    db: Database = request.app.state.db
    # charge_period as asked is part of the key: asked or not, a closed month answers differently.
    return db.cached(("chargeback", month, fmt, ctx, charge_period), compute)


def _attachment(file: ChargebackFile) -> Response:
    return Response(file.content, media_type=_MEDIA[file.format], headers={
        "Content-Disposition": f'attachment; filename="gpuledger-chargeback-{file.month}.{file.format}"',
        "X-Month-Closed": "true" if file.closed else "false",
        "X-Content-SHA256": file.sha256,
        "X-Billed-Total": file.billed_total,
        "X-Idle-Policy": file.idle_policy,
    })


@router.get("/exports/chargeback", response_class=Response, tags=["exports"],
            summary="The month's FOCUS chargeback file (admin, finance)",
            responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}},
                             "description": "the file; a closed month's stored bytes"}})
def chargeback(request: Request, month: str = MONTH, format: Literal["csv", "parquet"] = "csv",
               charge_period: Literal["month", "day"] | None = None,
               focus_version: Literal["1.4", "1.2"] | None = None, idle_policy: Policy | None = None,
               s: Session = _SESSION) -> Response:
    return _attachment(chargeback_file(request, s, month, format, charge_period, focus_version, idle_policy))


@router.get("/chargeback.csv", response_class=Response,
            summary="The month's chargeback file, FOCUS columns, CSV (admin, finance)",
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}},
                             "description": "FOCUS chargeback file: the same bytes as /v1/exports/chargeback"}})
def chargeback_csv(request: Request, month: str = MONTH, s: Session = _SESSION) -> Response:
    return _attachment(chargeback_file(request, s, month))


@router.get("/exports/reconciliation", tags=["exports"], summary="Does the month's file add up? (admin, finance)")
def reconciliation(request: Request, month: str = MONTH, s: Session = _SESSION) -> dict[str, Any]:
    month = parse_month(month)
    ctx = _context(request, None)
    book = request.app.state.book
    db: Database = request.app.state.db
    report = db.cached(("reconciliation", month, ctx), lambda: reconcile(s.store, month, book, ctx))
    if not report.ok:
        raise ApiError(E.RECONCILIATION_FAILED, f"{month}: " + "; ".join(report.problems),
                       "do not send this file to finance; see `gpuledger export reconciliation` and report the bug")
    return report.to_dict()
