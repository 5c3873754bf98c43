"""Showback per Kueue LocalQueue: each tenant's share of its ClusterQueue's quota, per month.

A LocalQueue is namespace-scoped and points at one ClusterQueue
(``spec.clusterQueue``); the teams of a ClusterQueue submit through their own
LocalQueues. Kueue reports per LocalQueue (feature gate ``LocalQueueMetrics``)
``kueue_local_queue_resource_reservation`` and ``..._resource_usage``
(labels ``namespace``, ``name``, ``flavor``, ``resource``), imported hourly
with the ClusterQueue series (:mod:`gpuledger.analytics.queues`). Which
ClusterQueue a LocalQueue points at, and which tenant it is, is configuration
(``[[local_queue]] namespace name cluster_queue tenant``; tenant default: the
namespace) -- the series do not carry it.

Per LocalQueue and month (:func:`local_queue_report`), with ``r`` its
reservation, ``R`` its ClusterQueue's reservation and ``Q`` the ClusterQueue's
nominal quota in hour ``h`` (GPU-hours of that hour):

- ``reserved_gpu_hours`` = Σ_h r, ``kueue_usage_gpu_hours`` = Σ_h usage;
- ``quota_share_gpu_hours`` = Σ_h min(Q, R) x r / R: the part of the quota its
  admitted workloads took (hours where R = 0 add nothing);
- ``borrowed_gpu_hours`` = Σ_h max(0, R - Q) x r / R: its part of what the
  ClusterQueue borrowed above its quota;
- ``share_of_quota`` = quota_share ÷ Σ_h Q over the same hours;
- the tenant's measured ``used_gpu_hours`` and ``allocated_idle_gpu_hours``
  from the hourly rollups, as in the ClusterQueue report.

Hours without the ClusterQueue's quota or reservation give no share (the
share fields stay null when no hour has them); a LocalQueue not in the
configuration is reported with ``cluster_queue`` null and its namespace as
tenant.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from gpuledger.analytics.queues import LOCAL_GAUGES, LocalQueue, Queues, measured_by_tenant
from gpuledger.store import Store
from gpuledger.timeutil import month_bounds, to_ns

__all__ = ["local_queue_report"]


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 6)


def local_queue_report(store: Store, month: str, queues: Queues) -> list[dict[str, Any]]:
    """One entry per LocalQueue with data in ``month``, sorted by ``namespace/name``."""
    start, end = (to_ns(t) for t in month_bounds(month))
    if not store.has_table("queue_hourly"):
        return []
    series = [*LOCAL_GAUGES, "nominal_quota", "reservation"]
    frame = store.query("SELECT hour_start_ns, cluster_queue, series, value FROM queue_hourly WHERE series IN "
                        f"({', '.join('?' * len(series))}) AND hour_start_ns >= ? AND hour_start_ns < ?",
                        [*series, start, end])
    per: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in frame.iter_rows(named=True):
        per[row["cluster_queue"]][row["hour_start_ns"]][row["series"]] = row["value"]
    locals_ = sorted(k for k, hours in per.items() if any(s in h for h in hours.values() for s in LOCAL_GAUGES))
    measured = measured_by_tenant(store, start, end)
    out = []
    for key in locals_:
        namespace, _, name = key.partition("/")
        lq = queues.local_queues.get(key) or LocalQueue(namespace, name, "", namespace)
        hours, cq = per[key], per.get(lq.cluster_queue, {}) if lq.cluster_queue else {}
        share = borrowed = quota = None
        for hour, values in hours.items():
            q, big_r, r = cq.get(hour, {}).get("nominal_quota"), cq.get(hour, {}).get("reservation"), \
                values.get("local_reservation")
            if q is None or big_r is None or r is None:
                continue
            part = r / big_r if big_r > 0 else 0.0
            share = (share or 0.0) + min(q, big_r) * part
            borrowed = (borrowed or 0.0) + max(0.0, big_r - q) * part
            quota = (quota or 0.0) + q

        def total(s: str, hours: dict[int, dict[str, float]] = hours) -> float | None:
            values = [h[s] for h in hours.values() if s in h]
            return round(sum(values), 6) if values else None

        used, idle = measured.get(lq.tenant, (None, None))
        out.append({
            "local_queue": key, "namespace": namespace, "name": name, "cluster_queue": lq.cluster_queue or None,
            "tenant": lq.tenant, "hours": sum(1 for h in hours.values() if "local_reservation" in h),
            "reserved_gpu_hours": total("local_reservation"), "kueue_usage_gpu_hours": total("local_usage"),
            "quota_share_gpu_hours": _r(share), "borrowed_gpu_hours": _r(borrowed),
            "share_of_quota": None if share is None or not quota else round(share / quota, 6),
            "used_gpu_hours": used, "allocated_idle_gpu_hours": idle,
        })
    return out
