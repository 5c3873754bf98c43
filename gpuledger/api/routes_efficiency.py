"""Efficiency: allocated vs used, idle GPU-hours and their cost, top wasters, GPUs held idle, coverage.

- allocated = busy + allocated-idle + unmeasured GPU-hours of a group (what it held);
- utilization = used / allocated (null when it held nothing, or everything
  it held was unmeasured);
- idle cost = the cost of its ``allocated_idle`` lines (costed over the whole
  period, see :mod:`~gpuledger.api.views`);
- an *idle run* is a stretch of consecutive intervals in which a pod held a
  GPU unit (whole GPU, replica, fraction or MIG slice) and ran nothing on it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import polars as pl
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from gpuledger.analytics import kinds as K
from gpuledger.api import errors as E
from gpuledger.api import views
from gpuledger.api.auth import DATA_ROLES, data_filters, require, session
from gpuledger.api.errors import ERROR_RESPONSES, ApiError
from gpuledger.api.models import EfficiencyOut, IdleOut
from gpuledger.api.params import (
    CURSOR,
    END,
    LIMIT,
    START,
    Filters,
    Period,
    filter_params,
    iso,
    next_cursor,
    parse_group_by,
    parse_page,
    period_out,
    resolve_period,
)
from gpuledger.api.reader import Session
from gpuledger.api.tokens import Principal
from gpuledger.timeutil import from_ns

router = APIRouter(prefix="/v1/efficiency", responses=ERROR_RESPONSES)
_ORDER = ("idle_cost", "idle_gpu_hours", "allocated_gpu_hours")


def efficiency_frame(rows: pl.LazyFrame | views.SqlRows, book: Any, by: list[str], filters: Filters) -> pl.DataFrame:
    """Per group: held / used / idle seconds, idle and allocated cost, coverage."""
    keys = [*by, "kind", *filters.dims()]
    costed = rows.costed(book, keys) if isinstance(rows, views.SqlRows) else views.costed(rows, book, keys)
    lines = views.apply_filters(costed, filters)
    lines = lines.filter(pl.col("kind") != K.UNALLOCATED)
    cost = pl.col("capacity_cost") + pl.col("energy_cost").fill_null(0)
    return (
        lines.group_by(by).agg(
            used=pl.col("busy_seconds").sum(), idle=pl.col("idle_seconds").sum(),
            unmeasured=pl.col("unmeasured_seconds").sum(), direct=pl.col("direct_busy_seconds").sum(),
            idle_cost=cost.filter(pl.col("kind") == K.ALLOCATED_IDLE).sum(), allocated_cost=cost.sum())
        .with_columns(allocated=pl.col("used") + pl.col("idle") + pl.col("unmeasured"))
        .sort(by, nulls_last=True)
    )


def _row(r: dict[str, Any], by: list[str], quantum: Decimal) -> dict[str, Any]:
    measured = r["used"] + r["idle"]
    return {
        **{k: r[k] for k in by},
        "allocated_gpu_hours": views.hours(r["allocated"]), "used_gpu_hours": views.hours(r["used"]),
        "idle_gpu_hours": views.hours(r["idle"]), "unmeasured_gpu_hours": views.hours(r["unmeasured"]),
        "utilization": round(r["used"] / measured, 6) if measured > 0 else None,
        "idle_cost": str(Decimal(r["idle_cost"] or 0).quantize(quantum)),
        "allocated_cost": str(Decimal(r["allocated_cost"] or 0).quantize(quantum)),
        "coverage": round(r["direct"] / r["used"], 6) if r["used"] > 0 else None,
    }


def _fleet(rows: list[dict[str, Any]], quantum: Decimal) -> dict[str, Any]:
    used = sum(r["used_gpu_hours"] for r in rows)
    idle = sum(r["idle_gpu_hours"] for r in rows)
    covered = [r for r in rows if r["coverage"] is not None]
    direct = sum(r["coverage"] * r["used_gpu_hours"] for r in covered)
    return {"allocated_gpu_hours": round(sum(r["allocated_gpu_hours"] for r in rows), 6),
            "used_gpu_hours": round(used, 6), "idle_gpu_hours": round(idle, 6),
            "utilization": round(used / (used + idle), 6) if used + idle > 0 else None,
            "idle_cost": str(sum((Decimal(r["idle_cost"]) for r in rows), Decimal(0)).quantize(quantum)),
            "coverage": round(direct / used, 6) if used > 0 else None}


def _answer(request: Request, s: Session, who: Principal, start: str | None, end: str | None, group_by: str,
            f: dict[str, list[str] | None], order: str | None, limit: int, cursor: str | None) -> JSONResponse:
    by = parse_group_by(group_by)
    filters = data_filters(who, **f)
    page = parse_page(limit, cursor)
    period = resolve_period(s, start, end, filters)
    book = request.app.state.book
    if period is None:
        return JSONResponse({"period": None, "group_by": by, "currency": book.currency, "rows": [], "fleet": None,
                             "total_rows": 0, "next_cursor": None})

    def compute() -> list[dict[str, Any]]:
        rows = views.SqlRows.of(s, period, filters.values.get("node", ()), None)  # summed in DuckDB
        return [_row(r, by, book.quantum) for r in efficiency_frame(rows, book, by, filters).iter_rows(named=True)]

    rows = request.app.state.db.cached(("efficiency", period, tuple(by), filters.key()), compute)
    if order:
        rows = sorted(rows, key=lambda r: (-float(r[order]), [str(r[k]) for k in by]))
    return JSONResponse({"period": period_out(period), "group_by": by, "currency": book.currency,
                         "rows": rows[page.offset:page.offset + page.limit], "fleet": _fleet(rows, book.quantum),
                         "total_rows": len(rows), "next_cursor": next_cursor(page, len(rows))})


@router.get("", response_model=None, responses={200: {"model": EfficiencyOut}},
            summary="Allocated vs used GPU-hours, idle GPU-hours and their cost, coverage, per group")
def efficiency(request: Request, start: str | None = START, end: str | None = END,
               group_by: str = Query("tenant", description="comma-separated dimensions (see /v1/showback)"),
               limit: int = LIMIT, cursor: str | None = CURSOR, f: dict[str, list[str] | None] = Depends(filter_params),
               who: Principal = Depends(require(*DATA_ROLES)), s: Session = Depends(session, scope="function")) -> JSONResponse:
    return _answer(request, s, who, start, end, group_by, f, None, limit, cursor)


@router.get("/top-wasters", response_model=None, responses={200: {"model": EfficiencyOut}},
            summary="Groups ranked by what their allocated-but-idle GPU time cost")
def top_wasters(request: Request, start: str | None = START, end: str | None = END,
                group_by: str = Query("tenant", description="e.g. tenant, namespace, workload or pod"),
                order_by: str = Query("idle_cost", description="idle_cost, idle_gpu_hours or allocated_gpu_hours"),
                limit: int = Query(10, description="how many, 1..1000"), cursor: str | None = CURSOR,
                f: dict[str, list[str] | None] = Depends(filter_params),
                who: Principal = Depends(require(*DATA_ROLES)), s: Session = Depends(session, scope="function")) -> JSONResponse:
    if order_by not in _ORDER:
        raise ApiError(E.BAD_ORDER_BY, f"order_by={order_by!r} is not one of {', '.join(_ORDER)}",
                       "idle_cost ranks by money")
    return _answer(request, s, who, start, end, group_by, f, order_by, limit, cursor)


@router.get("/idle-gpus", response_model=None, responses={200: {"model": IdleOut}},
            summary="GPU units held by a pod that ran nothing on them for at least min_hours in a row")
def idle_gpus(request: Request, start: str | None = START, end: str | None = END,
              min_hours: float = Query(1.0, description="shortest idle run to list, hours (0..8784)"),
              limit: int = LIMIT, cursor: str | None = CURSOR, f: dict[str, list[str] | None] = Depends(filter_params),
              who: Principal = Depends(require(*DATA_ROLES)), s: Session = Depends(session, scope="function")) -> JSONResponse:
    if not 0 <= min_hours <= 8784:
        raise ApiError(E.BAD_MIN_HOURS, f"min_hours={min_hours} is outside 0..8784", "e.g. min_hours=4")
    filters = data_filters(who, **f)
    page = parse_page(limit, cursor)
    period = resolve_period(s, start, end, filters)
    if period is None:
        return JSONResponse({"period": None, "min_hours": min_hours, "rows": [], "total_rows": 0,
                             "next_cursor": None})

    def compute() -> list[dict[str, Any]]:
        rows = views.with_dimensions(views.read_rows(s, period, filters.values.get("node", ())))
        return idle_runs(rows, filters, period)

    runs = request.app.state.db.cached(("idle", period, filters.key()), compute)
    runs = [r for r in runs if r["idle_hours"] >= min_hours]
    return JSONResponse({"period": period_out(period), "min_hours": min_hours,
                         "rows": runs[page.offset:page.offset + page.limit], "total_rows": len(runs),
                         "next_cursor": next_cursor(page, len(runs))})


def idle_runs(rows: pl.LazyFrame, filters: Filters, period: Period) -> list[dict[str, Any]]:
    """Every idle run (see module doc) of the filtered holders, longest first."""
    unit = ["cluster", "gpu_uuid", "node", "gpu_index", "mig_index", "model", "profile", "tenant", "namespace", "pod"]
    held = views.apply_filters(rows.filter(pl.col("kind").is_in([K.BUSY, K.ALLOCATED_IDLE])
                                           & pl.col("pod").is_not_null()), filters)
    per = (held.group_by([*unit, "interval_start_ns", "interval_end_ns"])
           .agg(busy=pl.col("gpu_seconds").filter(pl.col("kind") == K.BUSY).sum(),
                idle=pl.col("gpu_seconds").filter(pl.col("kind") == K.ALLOCATED_IDLE).sum())
           .sort([*unit, "interval_start_ns"], nulls_last=True)
           .with_columns(is_idle=(pl.col("busy") <= 1e-9) & (pl.col("idle") > 0)))
    prev_end = pl.col("interval_end_ns").shift(1).over(unit)
    prev_idle = pl.col("is_idle").shift(1).over(unit)
    runs = (per.with_columns(new=(prev_end.is_null() | (prev_end != pl.col("interval_start_ns"))
                                  | (prev_idle != pl.col("is_idle"))).fill_null(True))
            .with_columns(run=pl.col("new").cum_sum().over(unit))
            .filter("is_idle")
            .group_by([*unit, "run"])
            .agg(since=pl.col("interval_start_ns").min(), until=pl.col("interval_end_ns").max(),
                 idle_s=pl.col("idle").sum())
            .with_columns(hours=(pl.col("until") - pl.col("since")) / 3.6e12)
            .sort(["hours", "gpu_uuid", "mig_index", "since"], descending=[True, False, False, False])
            .collect())
    last = views.read_last_end(rows)
    out = []
    for r in runs.iter_rows(named=True):
        out.append({"gpu": r["gpu_uuid"], "cluster": r["cluster"], "node": r["node"], "gpu_index": r["gpu_index"],
                    "mig_index": r["mig_index"],
                    "model": r["model"], "profile": r["profile"], "tenant": r["tenant"], "namespace": r["namespace"],
                    "pod": r["pod"], "idle_since": iso(from_ns(r["since"])), "idle_until": iso(from_ns(r["until"])),
                    "idle_hours": round(r["hours"], 6), "idle_gpu_hours": views.hours(r["idle_s"]),
                    "ongoing": last.get((r["cluster"], r["node"])) == r["until"]})
    return out
