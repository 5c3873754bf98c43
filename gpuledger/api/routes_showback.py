"""``/v1/showback`` (usage and cost per group) and ``/v1/drilldown`` (the ledger rows behind a line)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import urlencode

import polars as pl
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from gpuledger.analytics.csvfile import write_rows
from gpuledger.analytics.policy import Policy, apply_idle_policy_to_rows
from gpuledger.api import errors as E
from gpuledger.api import views
from gpuledger.api.auth import DATA_ROLES, SHOWBACK_ROLES, data_filters, require, session
from gpuledger.api.errors import ERROR_RESPONSES, ApiError
from gpuledger.api.models import DrilldownOut, ShowbackOut
from gpuledger.api.params import (
    CURSOR,
    END,
    LABEL_PREFIX,
    LIMIT,
    START,
    Filters,
    Period,
    check_size,
    filter_params,
    iso,
    join_values,
    next_cursor,
    parse_granularity,
    parse_group_by,
    parse_moment,
    parse_page,
    period_out,
    resolve_period,
    split_values,
)
from gpuledger.api.reader import Session
from gpuledger.api.tokens import Principal
from gpuledger.timeutil import from_ns

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


def drill_link(period: Period, keys: dict[str, Any], filters: Filters, granularity: str | None) -> str | None:
    """The /v1/drilldown URL for one showback row (its bucket, keys and the request's filters).

    None for a ``label:KEY`` group: the drill-down filters by ledger dimensions, and a label is not one.
    """
    if any(k.startswith(LABEL_PREFIX) for k in keys):
        return None
    params: dict[str, str] = {k: join_values(v) for k, v in filters.values.items() if v}
    start, end = period.start, period.end
    if granularity and keys.get("time") is not None:
        bucket = parse_moment(str(keys["time"]), "time")
        start, end = max(start, bucket), min(end, bucket_end(bucket, granularity))
    params.update({k: join_values([str(v)]) for k, v in keys.items() if k != "time" and v is not None})
    params.update(start=iso(start), end=iso(end))
    return "/v1/drilldown?" + urlencode(params)


_FORMAT = Query("json", description="json (pages), or csv: every row of the view as a spreadsheet-safe file")


@router.get("/showback", response_model=None,
            responses={200: {"model": ShowbackOut, "content": {"text/csv": {"schema": {"type": "string"}}}}},
            summary="GPU-hours used, allocated-idle, memory, energy, cost and idle cost per group")
def showback(request: Request, start: str | None = START, end: str | None = END,
             group_by: str = Query("tenant", description="comma-separated: tenant, namespace, node, model, "
                                   "sharing, profile, pod, workload, gpu, cluster, or label:KEY (a pod label)"),
             granularity: str | None = Query(None, description="hour, day or month buckets; omit for none"),
             limit: int = LIMIT, cursor: str | None = CURSOR, format: Literal["json", "csv"] = _FORMAT,
             idle_policy: Policy = Query("holder", description="who pays for idle: holder (default), "
                                         "share_unallocated (spread over tenants, like OpenCost's shareIdle) or "
                                         "platform (tenants pay for busy and unmeasured time only)"),
             f: dict[str, list[str] | None] = Depends(filter_params),
             who: Principal = Depends(require(*SHOWBACK_ROLES)), s: Session = Depends(session, scope="function")) -> Response:
    by = parse_group_by(group_by, labels=True)
    filters = data_filters(who, **f)
    page = parse_page(limit, cursor)
    period = resolve_period(s, start, end, filters)
    book = request.app.state.book
    if period is None:
        if format == "csv":
            return _csv([], by, granularity, period)
        return JSONResponse({"period": None, "group_by": by, "granularity": granularity, "currency": book.currency,
                             "idle_policy": idle_policy, "total_cost": None, "data": None, "rows": [], "total_rows": 0,
                             "next_cursor": None})
    gran = parse_granularity(granularity, period)

    def compute() -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
        nodes = filters.values.get("node", ())
        rows: pl.LazyFrame | views.SqlRows
        if any(d.startswith(LABEL_PREFIX) for d in [*by, *filters.dims()]):  # labels join pods: in Polars
            read = apply_idle_policy_to_rows(views.read_rows(s, period, nodes, hourly=True), idle_policy)
            rows = views.with_labels(s, views.with_dimensions(read, gran), by)
        else:  # summed in DuckDB: memory does not grow with the fleet (a 1,000-GPU month is millions of rows)
            rows = views.SqlRows.of(s, period, nodes, gran, idle_policy)
        frame = views.showback_rows(rows, book, by, filters, gran)
        check_size(frame.height, "showback rows")
        out = []
        for r in frame.iter_rows(named=True):
            keys = {k: r[k] for k in by}
            if gran:
                keys = {"time": iso(from_ns(r["time"] * 10**6)), **keys}  # epoch ms
            out.append({**keys, **views.metric_fields(r), "cost": str(r["cost"]), "idle_cost": str(r["idle_cost"]),
                        "currency": book.currency, "drilldown": drill_link(period, keys, filters, gran)})
        total = sum((Decimal(r["cost"]) for r in out), Decimal(0))
        span = rows.data_span(period, filters) if isinstance(rows, views.SqlRows) else \
            views.data_span(views.apply_filters(rows, filters), period)
        data = {"first": None if span["first"] is None else iso(from_ns(span["first"])),
                "last": None if span["last"] is None else iso(from_ns(span["last"])),
                "hours_with_data": span["hours_with_data"], "period_hours": span["period_hours"]}
        return out, str(total.quantize(book.quantum)), data

    rows, total, data = request.app.state.db.cached(
        ("showback", period, tuple(by), gran, filters.key(), idle_policy), compute)
    if format == "csv":
        return _csv(rows, by, gran, period)
    return JSONResponse({"period": period_out(period), "group_by": by, "granularity": gran,
                         "currency": book.currency, "idle_policy": idle_policy, "total_cost": total, "data": data,
                         "rows": rows[page.offset:page.offset + page.limit], "total_rows": len(rows),
                         "next_cursor": next_cursor(page, len(rows))})


#: Columns of the showback CSV after the group keys (units in the names; money as exact decimals).
CSV_COLUMNS = ("used_gpu_hours", "allocated_idle_gpu_hours", "unmeasured_gpu_hours", "unallocated_gpu_hours",
               "gpu_hours", "utilization", "memory_gb_hours", "energy_kwh", "coverage", "cost", "idle_cost",
               "currency")


def _csv(rows: list[dict[str, Any]], by: list[str], gran: str | None, period: Period | None) -> Response:
    """Every row of the view through the project's one spreadsheet-safe writer (no pages: the whole view)."""
    keys = [*(["time"] if gran else []), *by]
    buf = io.StringIO()
    money = {"cost", "idle_cost"}
    write_rows(buf, ["period_start", "period_end", *keys, *CSV_COLUMNS],
               ([iso(period.start) if period else None, iso(period.end) if period else None,
                 *(r[k] for k in keys), *(Decimal(r[c]) if c in money else r[c] for c in CSV_COLUMNS)]
                for r in rows))
    name = "gpuledger-showback" + (f"-{period.start:%Y%m%d}-{period.end:%Y%m%d}" if period else "") + ".csv"
    return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def bucket_end(start: datetime, granularity: str) -> datetime:
    """The exclusive end of the UTC hour, day or month bucket starting at ``start``."""
    if granularity == "hour":
        return start + timedelta(hours=1)
    if granularity == "day":
        return start + timedelta(days=1)
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)


_DRILL_VIEWS = ("intervals", "gpus", "rules")


@router.get("/drilldown", response_model=None, responses={200: {"model": DrilldownOut}},
            summary="The ledger rows behind a showback line: intervals, GPUs, or attribution rules")
def drilldown(request: Request, start: str | None = START, end: str | None = END,
              view: str = Query("intervals", description="intervals (ledger rows), gpus, or rules"),
              kind: str | None = Query(None, description="busy, allocated_idle, unmeasured, unallocated"),
              rule: str | None = Query(None, description="attribution rule name(s)"),
              limit: int = LIMIT, cursor: str | None = CURSOR,
              f: dict[str, list[str] | None] = Depends(filter_params),
              who: Principal = Depends(require(*DATA_ROLES)), s: Session = Depends(session, scope="function")) -> JSONResponse:
    if view not in _DRILL_VIEWS:
        raise ApiError(E.BAD_VIEW, f"view={view!r} is not one of {', '.join(_DRILL_VIEWS)}",
                       "intervals lists ledger rows; gpus and rules summarise them")
    filters = data_filters(who, **f)
    page = parse_page(limit, cursor)
    period = resolve_period(s, start, end, filters)
    if period is None:
        return JSONResponse({"period": None, "view": view, "rows": [], "total_rows": 0, "next_cursor": None})
    extra = Filters({k: v for k, v in {"kind": split_values(kind), "rule": split_values(rule)}.items() if v})

    def compute() -> list[dict[str, Any]]:
        rows = views.with_dimensions(views.read_rows(s, period, filters.values.get("node", ())))
        rows = views.apply_filters(views.apply_filters(rows, filters), extra)
        return _drill(rows, view)

    rows = request.app.state.db.cached(("drill", period, view, filters.key(), extra.key()), compute)
    return JSONResponse({"period": period_out(period), "view": view,
                         "rows": rows[page.offset:page.offset + page.limit], "total_rows": len(rows),
                         "next_cursor": next_cursor(page, len(rows))})


def _drill(rows: pl.LazyFrame, view: str) -> list[dict[str, Any]]:
    to_iso = pl.from_epoch(pl.col("interval_start_ns"), time_unit="ns").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    to_iso_end = pl.from_epoch(pl.col("interval_end_ns"), time_unit="ns").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    if view == "intervals":
        check_size(rows.select(pl.len()).collect().item(), "ledger rows")
        frame = rows.sort("interval_start_ns", "node", "gpu_index", "mig_index", "kind", "tenant", "pod",
                          nulls_last=True).select(
            interval_start=to_iso, interval_end=to_iso_end, node="node", gpu="gpu_uuid", gpu_index="gpu_index",
            mig_index="mig_index", model="model", profile="profile", sharing="sharing", kind="kind",
            tenant="tenant", namespace="namespace", pod="pod", rule="rule", gpu_seconds="gpu_seconds",
            energy_j="energy_j", memory_gb_seconds="memory_gb_seconds",
            # A month whose interval-grain ledger retention removed answers from its hourly rollups.
            grain=pl.when(pl.col("boot_id") == views.HOURLY_BOOT).then(pl.lit("hour")).otherwise(pl.lit("interval")))
    elif view == "gpus":
        frame = (rows.group_by("gpu_uuid", "node", "gpu_index", "mig_index", "model", "profile", "sharing")
                 .agg(gpu_seconds=pl.col("gpu_seconds").sum(), rows=pl.len(),
                      first=pl.col("interval_start_ns").min(), last=pl.col("interval_end_ns").max(),
                      tenants=pl.col("tenant").unique().sort())
                 .sort("node", "gpu_index", "mig_index", "sharing", nulls_last=True)
                 .select(gpu="gpu_uuid", node="node", gpu_index="gpu_index", mig_index="mig_index", model="model",
                         profile="profile", sharing="sharing",
                         gpu_hours=(pl.col("gpu_seconds") / 3600).round(6), rows="rows", tenants="tenants",
                         first_interval_start=pl.from_epoch("first", time_unit="ns").dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         last_interval_end=pl.from_epoch("last", time_unit="ns").dt.strftime("%Y-%m-%dT%H:%M:%SZ")))
    else:
        frame = (rows.group_by("kind", "rule").agg(gpu_seconds=pl.col("gpu_seconds").sum(), rows=pl.len())
                 .sort("kind", "rule")
                 .select("kind", "rule", gpu_hours=(pl.col("gpu_seconds") / 3600).round(6), rows="rows"))
    return frame.collect().to_dicts()
