"""``/v1/fleet``: every physical GPU with model, node, sharing mode, health and current holders.

Sources: ``devices`` (model, health code per interval, XID of the last error
event), ``field_errors`` (fields NVML could not read, with the reason),
``messages`` (a node's newest interval), ``ledger`` (sharing mode, and pod ->
tenant as attribution resolved it) and ``allocations`` of each node's newest
message (current holders). Health: ``lost`` when the driver reported the GPU
lost or it stopped appearing in its node's messages before the node's newest
one, ``degraded`` when its newest health code says so, else ``ok``. A lost GPU
keeps its last known UUID and model (NVML reports neither once it is gone).

A GPU is keyed by (cluster, node, GPU index): the cluster is the one its
message's agent named (none: the default cluster), so two clusters'
same-named nodes are separate GPUs, each with its own holders.

A tenant token sees only the GPUs its tenant has ledger rows on in the period,
and only its own holders on them.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from gpuledger import wire
from gpuledger.api import views
from gpuledger.api.auth import DATA_ROLES, data_filters, require, session
from gpuledger.api.errors import ERROR_RESPONSES
from gpuledger.api.models import FleetOut
from gpuledger.api.params import (
    CURSOR,
    DEFAULT_CLUSTER,
    END,
    LIMIT,
    START,
    Filters,
    Period,
    filter_params,
    iso,
    next_cursor,
    parse_page,
    period_out,
    resolve_period,
)
from gpuledger.api.reader import Session
from gpuledger.api.tokens import Principal
from gpuledger.timeutil import from_ns, to_ns

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)
_HEALTH = {wire.HEALTH_OK: "ok", wire.HEALTH_DEGRADED: "degraded", wire.HEALTH_LOST: "lost"}


@router.get("/fleet", response_model=None, responses={200: {"model": FleetOut}},
            summary="GPUs with model, node, sharing mode, health (XID, lost) and current holders")
def fleet(request: Request, start: str | None = START, end: str | None = END, limit: int = LIMIT,
          cursor: str | None = CURSOR, f: dict[str, list[str] | None] = Depends(filter_params),
          who: Principal = Depends(require(*DATA_ROLES)), s: Session = Depends(session, scope="function")) -> JSONResponse:
    filters = data_filters(who, **f)
    page = parse_page(limit, cursor)
    period = resolve_period(s, start, end, filters)
    if period is None:
        return JSONResponse({"period": None, "rows": [], "total_rows": 0, "next_cursor": None})
    rows = request.app.state.db.cached(("fleet", period, filters.key()), lambda: fleet_rows(s, period, filters))
    return JSONResponse({"period": period_out(period), "rows": rows[page.offset:page.offset + page.limit],
                         "total_rows": len(rows), "next_cursor": next_cursor(page, len(rows))})


def fleet_rows(s: Session, period: Period, filters: Filters) -> list[dict[str, Any]]:
    bounds = [to_ns(period.start), to_ns(period.end)]
    where = "interval_start_ns >= ? AND interval_start_ns < ?"
    # the cluster a message's agent named (none: the default): part of every GPU's and node's key, so two
    # clusters' same-named nodes stay apart; a file no writer opened since migration 12 has no such column
    named = s.store.scalar("SELECT count(*) FROM duckdb_columns() WHERE table_name = 'messages' "
                           "AND column_name = 'cluster'")
    cluster = f"coalesce(cluster, {DEFAULT_CLUSTER!r})" if named else repr(DEFAULT_CLUSTER)
    clusters = f"SELECT agent_id, boot_id, seq, {cluster} AS cluster FROM messages WHERE {where}"
    gpus = s.query(f"""
        WITH m AS ({clusters})
        SELECT cluster, node, gpu_index, arg_max(uuid, interval_start_ns) FILTER (WHERE uuid IS NOT NULL) AS gpu,
               arg_max(model, interval_start_ns) FILTER (WHERE model IS NOT NULL) AS model,
               arg_max(health, interval_start_ns) AS health, max(interval_end_ns) AS last_end,
               count(*) FILTER (WHERE xid_last > 0) AS xid_events,
               count(*) FILTER (WHERE health = {wire.HEALTH_DEGRADED}) AS degraded_intervals
        FROM devices JOIN m USING (agent_id, boot_id, seq)
        WHERE mig_index = -1 AND {where} GROUP BY cluster, node, gpu_index""", bounds * 2)
    if gpus.is_empty():
        return []
    nodes = s.query(f"""SELECT {cluster} AS cluster, node, max(interval_end_ns) AS node_end
                        FROM messages WHERE {where} GROUP BY ALL""", bounds)
    errors = s.query(f"""WITH m AS ({clusters})
                         SELECT cluster, node, gpu_index, count(*) AS field_errors,
                         list(DISTINCT field || ': ' || reason ORDER BY field || ': ' || reason) AS reasons
                         FROM field_errors JOIN m USING (agent_id, boot_id, seq)
                         WHERE {where} GROUP BY cluster, node, gpu_index""", bounds * 2)
    latest = s.query(f"""
        WITH last AS (SELECT {cluster} AS cluster, node, arg_max(agent_id, interval_start_ns) AS agent_id,
                             arg_max(boot_id, interval_start_ns) AS boot_id, arg_max(seq, interval_start_ns) AS seq
                      FROM messages WHERE {where} GROUP BY ALL)
        SELECT 'mig' AS what, last.cluster, d.node, d.gpu_index, d.mig_index, d.profile, NULL AS namespace,
               NULL AS pod, NULL::SMALLINT AS replica, NULL::DOUBLE AS share
        FROM devices d JOIN last USING (agent_id, boot_id, seq) WHERE d.mig_index >= 0
        UNION ALL
        SELECT 'holder', last.cluster, a.node, a.gpu_index, a.mig_index, NULL, a.namespace, a.pod, a.replica, a.share
        FROM allocations a JOIN last USING (agent_id, boot_id, seq)""", bounds)
    rows = views.with_dimensions(views.read_rows(s, period, filters.values.get("node", ())))
    sharing = (rows.sort("interval_start_ns")
               .group_by("cluster", "gpu_uuid")
               .agg(sharing=pl.col("sharing").filter(pl.col("sharing") != "unallocated").last(),
                    any_sharing=pl.col("sharing").last())
               .collect())
    tenant_of = (rows.filter(pl.col("pod").is_not_null()).sort("interval_start_ns")
                 .group_by("cluster", "namespace", "pod").agg(tenant=pl.col("tenant").last()).collect())
    visible = set(views.apply_filters(rows, filters).select("cluster", "gpu_uuid").unique().collect().rows())
    scoped = filters.dims() != []
    share_by = {(r["cluster"], r["gpu_uuid"]): r["sharing"] or r["any_sharing"] for r in sharing.iter_rows(named=True)}
    tenants = {(r["cluster"], r["namespace"], r["pod"]): r["tenant"] for r in tenant_of.iter_rows(named=True)}
    node_end = {(r["cluster"], r["node"]): r["node_end"] for r in nodes.iter_rows(named=True)}
    errs = {(r["cluster"], r["node"], r["gpu_index"]): r for r in errors.iter_rows(named=True)}
    extra: dict[tuple[str, str, int], dict[str, list[Any]]] = {}
    for r in latest.iter_rows(named=True):
        slot = extra.setdefault((r["cluster"], r["node"], r["gpu_index"]), {"mig": [], "holders": []})
        if r["what"] == "mig":
            slot["mig"].append(r["profile"])
        else:
            tenant = tenants.get((r["cluster"], r["namespace"], r["pod"]))
            if "tenant" in filters.values and tenant not in filters.values["tenant"]:
                continue  # never show another tenant's holder
            slot["holders"].append({"tenant": tenant, "namespace": r["namespace"], "pod": r["pod"],
                                    "mig_index": r["mig_index"], "replica": r["replica"], "share": r["share"]})
    out = []
    for g in gpus.sort("cluster", "node", "gpu_index").iter_rows(named=True):
        if scoped and (g["cluster"], g["gpu"]) not in visible:
            continue
        key = (g["cluster"], g["node"], g["gpu_index"])
        lost = g["health"] == wire.HEALTH_LOST or g["last_end"] < node_end.get(key[:2], g["last_end"])
        e = errs.get(key)
        more = extra.get(key, {"mig": [], "holders": []})
        out.append({
            "gpu": g["gpu"], "cluster": g["cluster"], "node": g["node"], "gpu_index": g["gpu_index"], "model": g["model"],
            "sharing": share_by.get((g["cluster"], g["gpu"])), "mig_profiles": sorted(p for p in more["mig"] if p),
            "health": "lost" if lost else _HEALTH.get(g["health"], f"code {g['health']}"),
            "last_seen": iso(from_ns(g["last_end"])),
            "xid_events": g["xid_events"], "degraded_intervals": g["degraded_intervals"],
            "field_errors": 0 if e is None else e["field_errors"],  # a count: no row means none recorded
            "field_error_reasons": [] if e is None else list(e["reasons"]),
            "holders": sorted(more["holders"], key=lambda h: (h["mig_index"], h["replica"], h["pod"] or "")),
        })
    return out
