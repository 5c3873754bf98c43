"""Time series for Grafana's Infinity data source: flat JSON arrays with a ``time`` column.

Each answer is a plain JSON array of objects (no envelope), one per time
bucket and group, so Infinity reads it with no parser settings:
``time`` is the bucket start in epoch milliseconds (Infinity column type
``timestamp_epoch``), GPU-hours and kWh are numbers, ``cost`` is a number in
the price book's currency (exact decimals are in /v1/showback). Periods take
``start=${__from}&end=${__to}`` (epoch ms). ``granularity`` defaults to
``auto``: hour up to 3 days, day up to 93 days, else month. Buckets with no
ledger rows are absent, not zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from gpuledger.analytics import kinds as K
from gpuledger.api import errors as E
from gpuledger.api import views
from gpuledger.api.auth import DATA_ROLES, Given, data_filters, require, session
from gpuledger.api.errors import ERROR_RESPONSES, ApiError
from gpuledger.api.models import Dimensions, Usage
from gpuledger.api.params import END, START, filter_params, parse_granularity, parse_group_by, resolve_period
from gpuledger.api.reader import Database, Session
from gpuledger.api.tokens import Principal

router = APIRouter(prefix="/v1/series", responses=ERROR_RESPONSES)
MAX_ROWS = 20_000
_GRAN = Query("auto", description="hour, day, month, or auto (by the period's length)")


class SeriesRow(Usage):
    time: int  # type: ignore[assignment]  # epoch ms here, not ISO
    cost: float


class EfficiencySeriesRow(Dimensions):
    time: int  # type: ignore[assignment]  # epoch ms
    allocated_gpu_hours: float
    used_gpu_hours: float
    idle_gpu_hours: float
    idle_cost: float
    cost: float
    utilization: float | None


def _frame(request: Request, s: Session, who: Principal, start: str | None, end: str | None,
           granularity: str, by: list[str], f: Mapping[str, Given], extra_keys: list[str]) -> list[dict[str, Any]]:
    filters = data_filters(who, **f)
    period = resolve_period(s, start, end, filters)
    if period is None:
        return []
    gran = parse_granularity(None if granularity == "auto" else granularity, period, auto=True)
    book = request.app.state.book

    def compute() -> list[dict[str, Any]]:
        rows = views.SqlRows.of(s, period, filters.values.get("node", ()), gran)  # summed in DuckDB
        frame = views.showback_rows(rows, book, [*by, *extra_keys], filters, gran)
        if frame.height > MAX_ROWS:
            raise ApiError(E.RESULT_TOO_LARGE, f"{frame.height} series rows, at most {MAX_ROWS}",
                           "use a coarser granularity, a shorter period, or fewer group_by dimensions")
        return [{"time": r["time"], **{k: r[k] for k in by + extra_keys}, **views.metric_fields(r),
                 "cost": float(r["cost"])} for r in frame.iter_rows(named=True)]

    db: Database = request.app.state.db
    return db.cached(("series", period, gran, tuple(by), tuple(extra_keys), filters.key()), compute)


@router.get("/showback", response_model=None, responses={200: {"model": list[SeriesRow]}},
            summary="Used / idle / unallocated GPU-hours, energy and cost per time bucket and group (flat rows)")
def series_showback(request: Request, start: str | None = START, end: str | None = END,
                    granularity: str = _GRAN,
                    group_by: str = Query("tenant", description="comma-separated dimensions (see /v1/showback)"),
                    f: dict[str, list[str] | None] = Depends(filter_params),
                    who: Principal = Depends(require(*DATA_ROLES)),
                    s: Session = Depends(session, scope="function")) -> JSONResponse:
    return JSONResponse(_frame(request, s, who, start, end, granularity, parse_group_by(group_by), f, []))


@router.get("/efficiency", response_model=None, responses={200: {"model": list[EfficiencySeriesRow]}},
            summary="Allocated vs used GPU-hours, utilization and idle cost per time bucket and group")
def series_efficiency(request: Request, start: str | None = START, end: str | None = END,
                      granularity: str = _GRAN,
                      group_by: str = Query("tenant", description="comma-separated dimensions"),
                      f: dict[str, list[str] | None] = Depends(filter_params),
                      who: Principal = Depends(require(*DATA_ROLES)),
                    s: Session = Depends(session, scope="function")) -> JSONResponse:
    by = parse_group_by(group_by)
    rows = _frame(request, s, who, start, end, granularity, by, f, ["kind"])
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        if r["kind"] == K.UNALLOCATED:
            continue
        key = (r["time"], *[r[k] for k in by])
        m = merged.setdefault(key, {"time": r["time"], **{k: r[k] for k in by}, "allocated_gpu_hours": 0.0,
                                    "used_gpu_hours": 0.0, "idle_gpu_hours": 0.0, "idle_cost": 0.0, "cost": 0.0})
        m["allocated_gpu_hours"] += r["gpu_hours"]
        m["used_gpu_hours"] += r["used_gpu_hours"]
        m["idle_gpu_hours"] += r["allocated_idle_gpu_hours"]
        m["cost"] += r["cost"]
        if r["kind"] == K.ALLOCATED_IDLE:
            m["idle_cost"] += r["cost"]
    out = []
    for m in merged.values():
        measured = m["used_gpu_hours"] + m["idle_gpu_hours"]
        m["utilization"] = round(m["used_gpu_hours"] / measured, 6) if measured > 0 else None
        out.append({k: round(v, 6) if isinstance(v, float) else v for k, v in m.items()})
    return JSONResponse(out)


@router.get("/gpu", response_model=None, responses={200: {"model": list[SeriesRow]}},
            summary="One GPU over time: which tenants used it or held it idle, per bucket")
def series_gpu(request: Request, gpu: str = Query(..., description="GPU UUID (from /v1/fleet)"),
               start: str | None = START, end: str | None = END, granularity: str = _GRAN,
               group_by: str = Query("tenant", description="tenant, pod, workload or namespace"),
               who: Principal = Depends(require(*DATA_ROLES)),
                    s: Session = Depends(session, scope="function")) -> JSONResponse:
    by = parse_group_by(group_by, ("tenant", "namespace", "pod", "workload", "profile", "sharing"))
    f: dict[str, Given] = {"tenant": None, "namespace": None, "node": None, "model": None, "sharing": None,
                                "pod": None, "workload": None, "gpu": gpu, "cluster": None}
    return JSONResponse(_frame(request, s, who, start, end, granularity, by, f, []))
