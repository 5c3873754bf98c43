"""``/v1/values?dimension=...``: the values one dimension takes in a period, for pickers and Grafana variables.

A plain JSON array of ``{"value": ...}`` objects, sorted, nulls left out
(unallocated capacity has no tenant), as are values whose rows hold nothing, so Grafana's Infinity data source
reads it as a one-column table with no parser settings. The usual period
and filters apply: ``/v1/values?dimension=namespace&tenant=ml`` lists ml's namespaces,
which is how a dashboard's ``$namespace`` follows its ``$tenant``. A tenant
token sees only its own tenant's values.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from gpuledger.api import errors as E
from gpuledger.api import views
from gpuledger.api.auth import DATA_ROLES, data_filters, require, session
from gpuledger.api.errors import ERROR_RESPONSES, ApiError
from gpuledger.api.params import DIMENSIONS, END, START, check_size, filter_params, resolve_period
from gpuledger.api.reader import Session
from gpuledger.api.tokens import Principal

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


@router.get("/values", response_model=None, responses={200: {"model": list[dict[str, str]]}},
            summary="The values of one dimension (tenant, namespace, model, cluster, ...) in the period")
def values(request: Request, dimension: str = Query("tenant", description=", ".join(DIMENSIONS)),
           start: str | None = START, end: str | None = END,
           f: dict[str, list[str] | None] = Depends(filter_params),
           who: Principal = Depends(require(*DATA_ROLES)), s: Session = Depends(session, scope="function")) -> JSONResponse:
    if dimension not in DIMENSIONS:
        raise ApiError(E.BAD_GROUP_BY, f"no dimension {dimension!r} to list",
                       f"list one of: {', '.join(DIMENSIONS)}")
    dim = dimension
    filters = data_filters(who, **f)
    period = resolve_period(s, start, end, filters)
    if period is None:
        return JSONResponse([])

    def compute() -> list[dict[str, Any]]:
        rows = views.with_dimensions(views.read_rows(s, period, filters.values.get("node", ()), hourly=True))
        held = (pl.col("gpu_seconds") != 0) | (pl.col("energy_j").fill_null(0) != 0)  # as showback: no empty lines
        found = (views.apply_filters(rows, filters).filter(held).select(pl.col(dim).cast(pl.String)).drop_nulls()
                 .unique()
                 .sort(dim).collect())
        check_size(found.height, f"{dim} values")
        return [{"value": v} for v in found[dim].to_list()]

    return JSONResponse(request.app.state.db.cached(("values", dim, period, filters.key()), compute))
