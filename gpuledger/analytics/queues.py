"""Showback against Kueue quotas: per ClusterQueue and month, quota vs admitted vs measured GPU-hours.

**Import** (hourly, from a real Prometheus through its HTTP API, the seam of
:mod:`gpuledger.analytics.work_units`), Kueue's own series (sigs.k8s.io/kueue
``pkg/metrics``), for the configured resource (default ``nvidia.com/gpu``),
evaluated at each UTC hour's end:

- ``kueue_cluster_queue_nominal_quota``, ``kueue_cluster_queue_borrowing_limit``,
  ``kueue_cluster_queue_resource_reservation`` (admitted workloads' quota) and
  ``kueue_cluster_queue_resource_usage``: ``avg_over_time(...[1h])`` summed
  over flavors per ``cluster_queue`` -- GPUs on average over the hour, i.e.
  GPU-hours of that hour;
- ``kueue_admission_wait_time_seconds_bucket``: the cumulative bucket counts
  (``last_over_time``) per ``cluster_queue`` and ``le``.

- per LocalQueue (feature gate ``LocalQueueMetrics``):
  ``kueue_local_queue_resource_reservation`` and ``..._resource_usage``,
  summed over flavors per ``namespace``/``name`` (reported by
  :mod:`gpuledger.analytics.local_queues`).

Rows go to ``queue_hourly(hour_start_ns, cluster_queue, series, le, value)``
(a LocalQueue's rows: ``namespace/name`` in ``cluster_queue``); an hour is
replaced as a whole (in the DuckDB file, or with ``--lake`` in the lake's
Iceberg table); a series Prometheus lacks is no row.

**Report** (:func:`queue_report`), per ClusterQueue (and its tenant:
configuration ``[[queue]] cluster_queue = ... tenant = ...``, else the queue's
name): ``quota_gpu_hours`` (Σ hourly nominal quota), ``reserved_gpu_hours``
(admitted), ``kueue_usage_gpu_hours``, ``borrowed_gpu_hours`` = Σ_h max(0,
reserved − quota), ``unused_quota_gpu_hours`` (lent or idle) = Σ_h max(0,
quota − reserved), the tenant's measured ``used_gpu_hours`` and
``allocated_idle_gpu_hours`` from the hourly rollups (busy; allocated idle +
unmeasured), and the admission wait ``wait_p50_s``/``wait_p95_s`` from the
month's histogram: the newest cumulative buckets of the month minus the
newest before it (none stored before: counted from zero), interpolated
linearly inside a bucket as Prometheus's ``histogram_quantile`` does (null
without admissions). ``hours`` says how many hours had quota data.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from gpuledger.analytics import kinds as K
from gpuledger.analytics.work_units import Prometheus
from gpuledger.config import parse_toml
from gpuledger.errors import ConfigError
from gpuledger.store import Store
from gpuledger.store.protocol import HourlyWriter, HourPart
from gpuledger.timeutil import HOUR_NS, month_bounds, to_ns

__all__ = ["LOCAL_GAUGES", "LocalQueue", "Queues", "import_queue_hours", "load_queues", "measured_by_tenant",
           "parse_queues", "quantile", "queue_report"]

_GAUGES = {
    "nominal_quota": "kueue_cluster_queue_nominal_quota",
    "borrowing_limit": "kueue_cluster_queue_borrowing_limit",
    "reservation": "kueue_cluster_queue_resource_reservation",
    "usage": "kueue_cluster_queue_resource_usage",
}
_WAIT = "kueue_admission_wait_time_seconds_bucket"


#: LocalQueue series (Kueue >= 0.10, feature gate ``LocalQueueMetrics``; labels ``namespace``, ``name``), stored in
#: ``queue_hourly`` with the LocalQueue's ``namespace/name`` in the ``cluster_queue`` column (a Kubernetes name
#: holds no "/", so the two never collide); reported by :mod:`gpuledger.analytics.local_queues`.
LOCAL_GAUGES = {
    "local_reservation": "kueue_local_queue_resource_reservation",
    "local_usage": "kueue_local_queue_resource_usage",
}


@dataclass(frozen=True)
class LocalQueue:
    namespace: str
    name: str
    cluster_queue: str  # the LocalQueue's spec.clusterQueue
    tenant: str  # default: its namespace


@dataclass(frozen=True)
class Queues:
    resource: str = "nvidia.com/gpu"
    tenants: dict[str, str] = field(default_factory=dict)  # cluster_queue -> tenant
    local_queues: dict[str, LocalQueue] = field(default_factory=dict)  # "namespace/name" -> its mapping

    def tenant_of(self, cluster_queue: str) -> str:
        return self.tenants.get(cluster_queue, cluster_queue)


def parse_queues(text: str, source: str = "<string>") -> Queues:
    doc = parse_toml(text, source)
    hint = ('resource = "nvidia.com/gpu" then [[queue]] cluster_queue = "team-ml" tenant = "ml", and '
            '[[local_queue]] namespace = "ml-a" name = "main" cluster_queue = "team-ml" tenant = "ml-a"')
    if set(doc) - {"resource", "queue", "local_queue"} or not isinstance(doc.get("resource", ""), str):
        raise ConfigError(f"{source}: expected resource, [[queue]] and [[local_queue]] entries only", hint=hint)
    local = {}
    for n, item in enumerate(doc.get("local_queue", [])):
        if (not isinstance(item, dict) or not {"namespace", "name", "cluster_queue"} <= set(item)
                or set(item) - {"namespace", "name", "cluster_queue", "tenant"}
                or not all(isinstance(v, str) and v for v in item.values())):
            raise ConfigError(f"{source}: [[local_queue]] #{n + 1} needs namespace, name and cluster_queue "
                              "(text; tenant optional, default the namespace)", hint=hint)
        local[f"{item['namespace']}/{item['name']}"] = LocalQueue(item["namespace"], item["name"],
                                                                  item["cluster_queue"],
                                                                  str(item.get("tenant", item["namespace"])))
    tenants = {}
    for n, item in enumerate(doc.get("queue", [])):
        if (not isinstance(item, dict) or set(item) != {"cluster_queue", "tenant"}
                or not all(isinstance(v, str) and v for v in item.values())):
            raise ConfigError(f"{source}: [[queue]] #{n + 1} needs cluster_queue and tenant (text)", hint=hint)
        tenants[item["cluster_queue"]] = item["tenant"]
    return Queues(doc.get("resource", "nvidia.com/gpu"), tenants, local)


def load_queues(path: str | Path) -> Queues:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read queues {path}: {exc.strerror}", hint="pass --queues PATH") from None
    return parse_queues(text, str(path))


def _queries(resource: str) -> list[tuple[str, str]]:
    sel = f'resource="{resource}"'
    out = [(name, f"sum by (cluster_queue) (avg_over_time({metric}{{{sel}}}[1h]))") for name, metric in _GAUGES.items()]
    out += [(name, f"sum by (namespace, name) (avg_over_time({metric}{{{sel}}}[1h]))")
            for name, metric in LOCAL_GAUGES.items()]
    return [*out, ("wait_bucket", f"sum by (cluster_queue, le) (last_over_time({_WAIT}[1h]))")]


def _queue_key(series: str, labels: dict[str, str]) -> str | None:
    """The ``cluster_queue`` column: the ClusterQueue's name, or a LocalQueue's ``namespace/name``."""
    if series in LOCAL_GAUGES:
        return f"{labels['namespace']}/{labels['name']}" if labels.get("namespace") and labels.get("name") else None
    return labels.get("cluster_queue") or None


def import_queue_hours(store: HourlyWriter, prometheus: Prometheus, queues: Queues, hours: Iterable[int], *,
                       batch_hours: int = 24) -> int:
    """Import Kueue's series for each hour (replacing it) into the file or the lake (``store``, see
    :func:`gpuledger.analytics.work_units.import_hours`); returns the rows imported."""
    schema = {"hour_start_ns": pl.Int64, "cluster_queue": pl.String, "series": pl.String, "le": pl.Float64,
              "value": pl.Float64}
    imported = 0
    parts: list[HourPart] = []
    wanted = sorted({h - h % HOUR_NS for h in hours})
    for n, hour in enumerate(wanted, 1):
        rows = []
        for series, promql in _queries(queues.resource):
            for labels, value in prometheus.query(promql, (hour + HOUR_NS) / 1e9):
                key = _queue_key(series, labels)
                if key is None or not math.isfinite(value):
                    continue
                le = float(labels["le"]) if series == "wait_bucket" and "le" in labels else None
                if series == "wait_bucket" and le is None:
                    continue
                rows.append({"hour_start_ns": hour, "cluster_queue": key, "series": series,
                             "le": le, "value": value})
        parts.append((hour, {}, pl.DataFrame(rows, schema=schema).to_arrow()))
        imported += len(rows)
        if n % batch_hours == 0 or n == len(wanted):
            store.replace_hours("queue_hourly", parts)
            parts = []
    return imported


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """``histogram_quantile`` over cumulative (le, count) buckets; None without observations."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_le  # in the +Inf bucket: the highest finite bound, as Prometheus answers
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return None


def queue_report(store: Store, month: str, queues: Queues) -> list[dict[str, Any]]:
    """One entry per ClusterQueue with data in ``month`` (sorted by queue)."""
    start, end = (to_ns(t) for t in month_bounds(month))
    if not store.has_table("queue_hourly"):
        return []
    gauges = store.query("SELECT hour_start_ns, cluster_queue, series, value FROM queue_hourly WHERE series IN "
                         f"({', '.join('?' * len(_GAUGES))}) AND hour_start_ns >= ? AND hour_start_ns < ?",
                         [*_GAUGES, start, end])
    per: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in gauges.iter_rows(named=True):
        per[r["cluster_queue"]][r["hour_start_ns"]][r["series"]] = r["value"]
    waits = _month_buckets(store, start, end)
    measured = measured_by_tenant(store, start, end)
    out = []
    for cq in sorted(set(per) | set(waits)):
        hours = per.get(cq, {})
        quota_hours = [h for h in hours.values() if "nominal_quota" in h]

        def total(series: str, hours: dict[int, dict[str, float]] = hours) -> float | None:
            values = [h[series] for h in hours.values() if series in h]
            return round(sum(values), 6) if values else None

        both = [h for h in quota_hours if "reservation" in h]
        tenant = queues.tenant_of(cq)
        used, idle = measured.get(tenant, (None, None))
        buckets = waits.get(cq, [])
        p50, p95 = quantile(0.5, buckets), quantile(0.95, buckets)
        out.append({
            "cluster_queue": cq, "tenant": tenant, "hours": len(quota_hours),
            "quota_gpu_hours": total("nominal_quota"), "borrowing_limit_gpu_hours": total("borrowing_limit"),
            "reserved_gpu_hours": total("reservation"), "kueue_usage_gpu_hours": total("usage"),
            "borrowed_gpu_hours": round(sum(max(0.0, h["reservation"] - h["nominal_quota"]) for h in both), 6)
            if both else None,
            "unused_quota_gpu_hours": round(sum(max(0.0, h["nominal_quota"] - h["reservation"]) for h in both), 6)
            if both else None,
            "used_gpu_hours": used, "allocated_idle_gpu_hours": idle,
            "admissions": buckets[-1][1] if buckets else None,
            "wait_p50_s": None if p50 is None else round(p50, 3), "wait_p95_s": None if p95 is None else round(p95, 3),
        })
    return out


def _month_buckets(store: Store, start: int, end: int) -> dict[str, list[tuple[float, float]]]:
    """Per queue: the month's cumulative wait buckets, newest in the month minus newest before it."""
    def newest(where: str, params: list[Any]) -> dict[str, dict[float, float]]:
        frame = store.query(
            "SELECT cluster_queue, le, arg_max(value, hour_start_ns) AS v FROM queue_hourly "
            f"WHERE series = 'wait_bucket' AND {where} GROUP BY cluster_queue, le", params)
        out: dict[str, dict[float, float]] = defaultdict(dict)
        for r in frame.iter_rows(named=True):
            out[r["cluster_queue"]][r["le"]] = r["v"]
        return out

    now = newest("hour_start_ns >= ? AND hour_start_ns < ?", [start, end])
    before = newest("hour_start_ns < ?", [start])
    result = {}
    for cq, buckets in now.items():
        prior = before.get(cq, {})
        # A counter below its earlier value was reset (Kueue restarted): count from zero.
        result[cq] = sorted((le, v - prior.get(le, 0.0) if v >= prior.get(le, 0.0) else v) for le, v in buckets.items())
    return result


def measured_by_tenant(store: Store, start: int, end: int) -> dict[str, tuple[float, float]]:
    """Per tenant: busy and allocated-idle (+ unmeasured) GPU-hours of the month, from the rollups."""
    if not store.has_table("ledger_hourly"):
        return {}
    frame = store.query(
        "SELECT tenant, sum(gpu_seconds) FILTER (WHERE kind = ?) / 3600 AS used, "
        "sum(gpu_seconds) FILTER (WHERE kind IN (?, ?)) / 3600 AS idle FROM ledger_hourly "
        "WHERE hour_start_ns >= ? AND hour_start_ns < ? GROUP BY tenant",
        [K.BUSY, K.ALLOCATED_IDLE, K.UNMEASURED, start, end])
    return {r["tenant"]: (round(r["used"] or 0.0, 6), round(r["idle"] or 0.0, 6)) for r in frame.iter_rows(named=True)}
