"""Grafana dashboards as code: ``python dashboards/build.py`` writes dashboards/*.json, and the Helm chart's
copies (deploy/helm/gpuledger/files/dashboards/: a chart can package only files under its own folder).

Plain dicts in Grafana's dashboard JSON model (schemaVersion 39), no
dependency: the maintained dashboards-as-code libraries on PyPI were either
unmaintained (grafanalib, last release 2024) or a large generated SDK for
four small dashboards. tests/dashboards checks that the committed JSON equals
this output, checks its structure, and runs every query: each Infinity URL
against the live API on demo data, each PromQL expression against a real
Prometheus scraping the agent's /metrics.

Data sources (fixed uids, see provisioning/datasources/gpuledger.yaml):

- ``gpuledger-api``: Infinity (``yesoreyeram-infinity-datasource``) with the
  API's base URL and a bearer token; panels use relative URLs with
  ``start=${__from}&end=${__to}`` (epoch ms);
- ``prometheus``: Prometheus scraping the agents (DCGM field names).

Variables (``/v1/values?dimension=...``, each following the ones before it):
``$cluster``, ``$tenant``, ``$namespace``, ``$model`` on the showback and idle
dashboards, used by every panel there (``FILTERS``); ``$cluster``, ``$model``
and ``$gpu`` on the GPU dashboard. "All" is the empty value, which the API
reads as no filter. Values are ``percentencode``d into the URLs.

tests/dashboards also validates each dashboard against Grafana's dashboard
JSON schema (vendored in dashboards/schema/, see its README) and each
Infinity query against the plugin's query model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
CHART_COPIES = HERE.parent / "deploy" / "helm" / "gpuledger" / "files" / "dashboards"
INFINITY = {"type": "yesoreyeram-infinity-datasource", "uid": "gpuledger-api"}
PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
PERIOD = "start=${__from}&end=${__to}"
#: The dashboard variables every panel of the showback and idle dashboards filters by.
FILTERS = ("cluster=${cluster:percentencode}&tenant=${tenant:percentencode}"
           "&namespace=${namespace:percentencode}&model=${model:percentencode}")


def col(selector: str, kind: str = "number", text: str | None = None) -> dict[str, str]:
    return {"selector": selector, "text": text or selector, "type": kind}


def infinity(url: str, columns: list[dict[str, str]], fmt: str = "table", root: str = "",
             ref: str = "A") -> dict[str, Any]:
    return {"refId": ref, "datasource": INFINITY, "type": "json", "source": "url", "parser": "backend",
            "format": fmt, "url": url, "url_options": {"method": "GET", "data": ""},
            "root_selector": root, "columns": columns, "filters": []}


def prom(expr: str, legend: str, ref: str = "A") -> dict[str, Any]:
    return {"refId": ref, "datasource": PROMETHEUS, "expr": expr, "legendFormat": legend, "range": True}


def panel(pid: int, title: str, kind: str, targets: list[dict[str, Any]], x: int, y: int, w: int = 12, h: int = 8,
          unit: str = "short", description: str = "", **options: Any) -> dict[str, Any]:
    ds = targets[0]["datasource"]
    return {"id": pid, "title": title, "type": kind, "datasource": ds, "description": description,
            "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": options}


def dashboard(uid: str, title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]] | None = None,
              time_from: str = "now-7d") -> dict[str, Any]:
    return {"uid": uid, "title": title, "tags": ["gpuledger"], "timezone": "utc", "schemaVersion": 39,
            "version": 1, "editable": True, "refresh": "", "time": {"from": time_from, "to": "now"},
            "templating": {"list": variables or []}, "panels": panels, "annotations": {"list": []},
            "links": [{"title": "gpuledger dashboards", "type": "dashboards", "tags": ["gpuledger"], "icon": "",
                       "tooltip": "", "asDropdown": True, "targetBlank": False, "includeVars": True,
                       "keepTime": True}]}


def query_var(name: str, label: str, url: str, selector: str, root: str = "rows",
              all_value: bool = False) -> dict[str, Any]:
    """An Infinity-backed template variable (one column of the API's answer).

    The query is Infinity's ``VariableQueryInfinity`` (``queryType``, ``refId``,
    ``infinityQuery``); with ``all_value`` an "All" option whose value is empty:
    the API reads an empty filter as none.
    """
    q = infinity(url, [col(selector, "string")], root=root)
    var: dict[str, Any] = {"name": name, "label": label, "type": "query", "datasource": INFINITY, "refresh": 2,
                           "query": {"queryType": "infinity", "refId": f"variable-{name}", "infinityQuery": q},
                           "includeAll": all_value, "multi": False, "sort": 1}
    if all_value:
        var.update(allValue="", current={"text": "All", "value": "$__all"})
    return var


def dimension_var(name: str, label: str, after: str = "") -> dict[str, Any]:
    """A variable listing one dimension's values (``/v1/values``), filtered by the variables before it."""
    return query_var(name, label, f"/v1/values?dimension={name}&{PERIOD}{after}", "value", root="", all_value=True)


#: $cluster, $tenant, $namespace, $model: each lists its values under the ones before it.
FILTER_VARS = [
    dimension_var("cluster", "Cluster"),
    dimension_var("tenant", "Tenant", "&cluster=${cluster:percentencode}"),
    dimension_var("namespace", "Namespace", "&cluster=${cluster:percentencode}&tenant=${tenant:percentencode}"),
    dimension_var("model", "GPU model", "&cluster=${cluster:percentencode}&tenant=${tenant:percentencode}"
                  "&namespace=${namespace:percentencode}"),
]


USAGE_COLS = [col("time", "timestamp_epoch"), col("tenant", "string"), col("used_gpu_hours"),
              col("allocated_idle_gpu_hours"), col("unmeasured_gpu_hours"), col("unallocated_gpu_hours"),
              col("cost")]


def fleet() -> dict[str, Any]:
    util = "DCGM_FI_DEV_GPU_UTIL"
    panels = [
        panel(1, "Fleet GPU utilization", "timeseries", [prom(f"avg({util})", "fleet")], 0, 0, unit="percent",
              description="Mean of every GPU's driver utilization samples (DCGM_FI_DEV_GPU_UTIL)."),
        panel(2, "Utilization by node", "timeseries", [prom(f"avg by (Hostname) ({util})", "{{Hostname}}")], 12, 0,
              unit="percent"),
        panel(3, "GPU utilization per GPU", "timeseries",
              [prom(f"{util}", "{{Hostname}} gpu{{gpu}} {{modelName}}")], 0, 8, unit="percent"),
        panel(4, "Framebuffer used", "timeseries",
              [prom("sum by (Hostname) (DCGM_FI_DEV_FB_USED)", "{{Hostname}}")], 12, 8, unit="decmbytes"),
        panel(5, "Power draw", "timeseries", [prom("sum by (Hostname) (DCGM_FI_DEV_POWER_USAGE)", "{{Hostname}}")],
              0, 16, unit="watt"),
        panel(6, "GPU temperature (max)", "timeseries",
              [prom("max by (Hostname) (DCGM_FI_DEV_GPU_TEMP)", "{{Hostname}}")], 12, 16, unit="celsius"),
        panel(7, "GPUs not healthy (degraded or lost)", "stat",
              [prom("count(gpuledger_gpu_health_state > 0) or vector(0)", "not healthy")], 0, 24, w=6,
              description="gpuledger_gpu_health_state: 0 ok, 1 degraded, 2 lost."),
        panel(8, "XID errors in the last interval", "stat",
              [prom("count(DCGM_FI_DEV_XID_ERRORS > 0) or vector(0)", "GPUs with an XID")], 6, 24, w=6),
        panel(9, "Fields NVML could not read", "timeseries",
              [prom("sum by (field, reason) (gpuledger_field_errors)", "{{field}}: {{reason}}")], 12, 24),
        panel(10, "Fleet: health, sharing and current holders (API)", "table",
              [infinity(f"/v1/fleet?{PERIOD}&limit=1000", [
                  col("cluster", "string"), col("node", "string"), col("gpu_index"), col("gpu", "string"),
                  col("model", "string"),
                  col("sharing", "string"), col("health", "string"), col("xid_events"), col("field_errors"),
                  col("last_seen", "timestamp")], root="rows")], 0, 32, w=24, h=10),
        panel(11, "Fleet economics per pool: utilization, cost per used GPU-hour, rent vs own (API)", "table",
              [infinity(f"/v1/economics?{PERIOD}", [
                  col("pool", "string"), col("model", "string"), col("cluster", "string"), col("utilization"),
                  col("allocation"),
                  col("efficiency"), col("own_cost"), col("cost_per_used_gpu_hour"), col("cloud_rate"),
                  col("rented_used_cost"), col("rented_allocated_cost"), col("break_even_utilization")],
                        root="pools")], 0, 42, w=24, h=8,
              description="From the hourly rollups (docs/economics.md); needs an admin or finance token. "
              "break_even_utilization: above it, owning is cheaper than renting the used hours on demand."),
    ]
    return dashboard("gpuledger-fleet", "gpuledger / Fleet utilization and health", panels, time_from="now-6h")


def showback() -> dict[str, Any]:
    q = f"{PERIOD}&{FILTERS}"
    panels = [
        panel(1, "GPU-hours used per tenant", "timeseries",
              [infinity(f"/v1/series/showback?{q}&group_by=tenant", USAGE_COLS, fmt="timeseries")], 0, 0,
              unit="h", description="Busy GPU-hours per time bucket (hour/day/month by range)."),
        panel(2, "Cost per tenant over time", "timeseries",
              [infinity(f"/v1/series/showback?{q}&group_by=tenant",
                        [col("time", "timestamp_epoch"), col("tenant", "string"), col("cost")], fmt="timeseries")],
              12, 0, unit="currencyUSD"),
        panel(3, "Efficiency per tenant over time", "timeseries",
              [infinity(f"/v1/series/efficiency?{q}&group_by=tenant",
                        [col("time", "timestamp_epoch"), col("tenant", "string"), col("utilization")],
                        fmt="timeseries")], 0, 8, unit="percentunit",
              description="Used / (used + allocated idle) GPU-hours per time bucket: what a tenant held and ran."),
        panel(4, "Idle cost per tenant over time", "timeseries",
              [infinity(f"/v1/series/efficiency?{q}&group_by=tenant",
                        [col("time", "timestamp_epoch"), col("tenant", "string"), col("idle_cost")],
                        fmt="timeseries")], 12, 8, unit="currencyUSD",
              description="Cost of the GPU time each tenant held allocated but idle, per time bucket."),
        panel(5, "Showback by tenant", "table",
              [infinity(f"/v1/showback?{q}&group_by=tenant&limit=1000", [
                  col("tenant", "string"), col("used_gpu_hours"), col("allocated_idle_gpu_hours"),
                  col("unmeasured_gpu_hours"), col("unallocated_gpu_hours"), col("utilization"),
                  col("memory_gb_hours"), col("energy_kwh"), col("coverage"), col("cost"), col("idle_cost"),
                  col("currency", "string")], root="rows")],
              0, 16, w=24, h=9),
        panel(6, "Cost by tenant and GPU model", "barchart",
              [infinity(f"/v1/showback?{q}&group_by=tenant,model&limit=1000", [
                  col("tenant", "string"), col("model", "string"), col("cost")], root="rows")], 0, 25, w=24,
              unit="currencyUSD"),
    ]
    return dashboard("gpuledger-showback", "gpuledger / Tenant showback and cost", panels, FILTER_VARS)


def idle() -> dict[str, Any]:
    q = f"{PERIOD}&{FILTERS}"
    panels = [
        panel(1, "Allocated vs used GPU-hours", "timeseries",
              [infinity(f"/v1/series/efficiency?{q}&group_by=tenant", [
                  col("time", "timestamp_epoch"), col("tenant", "string"), col("allocated_gpu_hours"),
                  col("used_gpu_hours"), col("idle_gpu_hours"), col("utilization")], fmt="timeseries")], 0, 0,
              unit="h"),
        panel(2, "Idle cost per tenant over time", "timeseries",
              [infinity(f"/v1/series/efficiency?{q}&group_by=tenant", [
                  col("time", "timestamp_epoch"), col("tenant", "string"), col("idle_cost")], fmt="timeseries")],
              12, 0, unit="currencyUSD"),
        panel(3, "Top wasters (idle cost)", "table",
              [infinity(f"/v1/efficiency/top-wasters?{q}&group_by=tenant,workload&limit=20", [
                  col("tenant", "string"), col("workload", "string"), col("idle_gpu_hours"), col("idle_cost"),
                  col("utilization"), col("allocated_gpu_hours")], root="rows")], 0, 8),
        panel(4, "GPUs allocated but idle for 2 h or more", "table",
              [infinity(f"/v1/efficiency/idle-gpus?{q}&min_hours=2&limit=1000", [
                  col("node", "string"), col("gpu", "string"), col("mig_index"), col("tenant", "string"),
                  col("pod", "string"), col("idle_since", "timestamp"), col("idle_hours"), col("ongoing", "string")],
                        root="rows")], 12, 8),
        panel(5, "Efficiency and coverage by tenant", "table",
              [infinity(f"/v1/efficiency?{q}&group_by=tenant&limit=1000", [
                  col("tenant", "string"), col("allocated_gpu_hours"), col("used_gpu_hours"), col("idle_gpu_hours"),
                  col("utilization"), col("idle_cost"), col("coverage")], root="rows")], 0, 16, w=24),
    ]
    return dashboard("gpuledger-idle", "gpuledger / Idle waste", panels, FILTER_VARS)


def gpu() -> dict[str, Any]:
    variables = [FILTER_VARS[0], dimension_var("model", "GPU model", "&cluster=${cluster:percentencode}"),
                 query_var("gpu", "GPU", f"/v1/fleet?{PERIOD}&cluster=${{cluster:percentencode}}"
                           "&model=${model:percentencode}&limit=1000", "gpu")]
    panels = [
        panel(1, "Who used this GPU over time", "timeseries",
              [infinity(f"/v1/series/gpu?gpu=${{gpu}}&{PERIOD}&group_by=tenant", USAGE_COLS, fmt="timeseries")],
              0, 0, w=24, unit="h", description="Busy and allocated-idle GPU-hours per tenant on the GPU."),
        panel(2, "Device utilization (DCGM)", "timeseries",
              [prom('DCGM_FI_DEV_GPU_UTIL{UUID="${gpu}"}', "gpu{{gpu}} {{GPU_I_PROFILE}}")], 0, 8, unit="percent"),
        panel(3, "Per-pod share of this GPU (gpuledger)", "timeseries",
              [prom('gpuledger_pod_gpu_busy_ratio{UUID="${gpu}"}', "{{namespace}}/{{pod}}")], 12, 8,
              unit="percentunit"),
        panel(4, "Units, sharing and tenants of this GPU (ledger)", "table",
              [infinity(f"/v1/drilldown?gpu=${{gpu}}&{PERIOD}&view=gpus&limit=1000", [
                  col("gpu", "string"), col("mig_index"), col("profile", "string"), col("sharing", "string"),
                  col("gpu_hours"), col("tenants", "string")], root="rows")], 0, 16, w=24),
        panel(5, "Attribution rules on this GPU", "table",
              [infinity(f"/v1/drilldown?gpu=${{gpu}}&{PERIOD}&view=rules", [
                  col("kind", "string"), col("rule", "string"), col("gpu_hours"), col("rows")], root="rows")],
              0, 24, w=24),
    ]
    return dashboard("gpuledger-gpu", "gpuledger / GPU drill-down", panels, variables, time_from="now-2d")


def business() -> dict[str, Any]:
    """Cost per result, quotas, budgets and fleet economics: the month holding the time range's end."""
    month = "the month that holds the time range's end"
    panels = [
        panel(1, "Cost and energy per 1M tokens by tenant and model", "table",
              [infinity(f"/v1/units?{PERIOD}", [
                  col("unit", "string"), col("tenant", "string"), col("model", "string"), col("pod", "string"),
                  col("count"), col("cost_per_busy"), col("cost_per_held"), col("kwh_per"),
                  col("used_gpu_hours_per"), col("held_gpu_hours_per"), col("currency", "string")], root="rows")],
              0, 0, w=24, h=9,
              description=f"Per work unit (tokens: per 1M; docs/economics.md#work-units), {month}: cost busy only "
              "and including the idle the pod held, measured kWh, GPU-hours. Work units are imported hourly from "
              "Prometheus (`gpuledger units import`)."),
        panel(2, "Kueue quota vs admitted vs used GPU-hours per ClusterQueue", "barchart",
              [infinity(f"/v1/queues?{PERIOD}", [
                  col("cluster_queue", "string"), col("quota_gpu_hours"), col("reserved_gpu_hours"),
                  col("used_gpu_hours"), col("allocated_idle_gpu_hours")], root="queues")], 0, 9, unit="h",
              description=f"{month}: nominal quota, admitted (reserved), measured used and allocated-idle "
              "GPU-hours of the queue's tenant (docs/economics.md#kueue-quotas)."),
        panel(3, "Borrowed, lent and admission wait per ClusterQueue", "table",
              [infinity(f"/v1/queues?{PERIOD}", [
                  col("cluster_queue", "string"), col("tenant", "string"), col("borrowed_gpu_hours"),
                  col("unused_quota_gpu_hours"), col("admissions"), col("wait_p50_s"), col("wait_p95_s")],
                        root="queues")], 12, 9,
              description="borrowed: admitted above the nominal quota; unused_quota (lent or idle): quota left "
              "unadmitted; wait p50/p95 from Kueue's admission-wait histogram."),
        panel(4, "Budgets: month-to-date and forecast vs budget per tenant", "barchart",
              [infinity(f"/v1/budgets?{PERIOD}", [
                  col("tenant", "string"), col("budget"), col("month_to_date"), col("forecast")],
                        root="tenants")], 0, 17, unit="currencyUSD",
              description=f"{month}: the budgets file's monthly budget, the month-to-date cost and its linear "
              "forecast to the month's end (docs/economics.md#budgets)."),
        panel(5, "Budget status per tenant", "table",
              [infinity(f"/v1/budgets?{PERIOD}", [
                  col("tenant", "string"), col("budget"), col("month_to_date"), col("forecast"),
                  col("over_under"), col("status", "string")], root="tenants")], 12, 17),
        panel(8, "Each LocalQueue's share of its ClusterQueue's quota", "table",
              [infinity(f"/v1/queues?{PERIOD}", [
                  col("local_queue", "string"), col("cluster_queue", "string"), col("tenant", "string"),
                  col("reserved_gpu_hours"), col("quota_share_gpu_hours"), col("borrowed_gpu_hours"),
                  col("share_of_quota")], root="local_queues")], 0, 33, w=24,
              description="Per namespace-scoped LocalQueue (Kueue's LocalQueueMetrics): GPU-hours admitted, the part "
              "of the ClusterQueue's quota its workloads took, its part of what the ClusterQueue borrowed."),
        panel(6, "Utilization and allocation per pool", "barchart",
              [infinity(f"/v1/economics?{PERIOD}", [
                  col("pool", "string"), col("utilization"), col("allocation"), col("efficiency")],
                        root="pools")], 0, 25, unit="percentunit",
              description="used / capacity, allocated / capacity and used / allocated GPU-hours over the time "
              "range (docs/economics.md); needs an admin or finance token."),
        panel(7, "Effective cost per used GPU-hour, rent vs own", "table",
              [infinity(f"/v1/economics?{PERIOD}", [
                  col("pool", "string"), col("model", "string"), col("cluster", "string"), col("own_cost"),
                  col("cost_per_used_gpu_hour"),
                  col("cloud_rate"), col("rented_used_cost"), col("break_even_utilization")], root="pools")],
              12, 25,
              description="Above break_even_utilization, owning is cheaper than renting the used hours on demand. "
              "Pools are keyed by node pool, GPU model and cluster."),
    ]
    return dashboard("gpuledger-business", "gpuledger / Cost per result, quotas, budgets, economics", panels,
                     time_from="now/M")


DASHBOARDS = {"fleet": fleet, "showback": showback, "idle": idle, "gpu": gpu, "business": business}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2, sort_keys=True) + "\n"


def main() -> int:
    for name in DASHBOARDS:
        for folder in (HERE, CHART_COPIES):
            (folder / f"gpuledger-{name}.json").write_text(render(name), encoding="utf-8")
        print(f"wrote dashboards/gpuledger-{name}.json and the chart's copy", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
