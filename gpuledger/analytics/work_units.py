"""Work units: what the GPU time produced (tokens, samples, steps), and what a unit of it cost in money and energy.

**Import.** Per-pod work counters are read from a real Prometheus through its
HTTP API (``GET /api/v1/query``), one instant query per unit and UTC hour,
evaluated at the hour's end, with the PromQL declared per unit in
configuration (``work_units_path``; the shipped default,
``gpuledger/defaults/work_units.toml``, counts vLLM's token counters). A query
must return one sample per pod: labels ``namespace`` and ``pod`` (``cluster``
when present), value = the work done in that hour (``increase(...[1h])``).
Rows go to ``work_units(hour_start_ns, cluster, namespace, pod, unit,
count)`` -- in the DuckDB file, or with ``--lake`` in the lake's Iceberg
table (:class:`~gpuledger.store.protocol.HourlyWriter`); an hour is replaced
as a whole per unit, so re-importing is idempotent. A series Prometheus does
not have is no row (never 0); a sample without ``namespace`` or ``pod``, or
whose value is not finite, is skipped and counted.

**Report** (:func:`unit_report`): the rollups (``ledger_hourly``) of the pods
and hours that have work units, joined on (hour, namespace, pod; a sample
with a ``cluster`` label joins that cluster's pod only), per tenant, GPU
model and pod: the units, used (busy) and held (busy + allocated idle +
unmeasured) GPU-hours, kWh, and cost at the price book's rate (GPU-hours x
the model's price; energy x the energy price where the book
charges it), each per ``per`` units (1,000,000 for tokens): *busy only* (the
GPU time the pod's processes ran) and *including the idle it held*. kWh is
the pod's measured energy (busy and held alike; null when not measured).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from gpuledger.analytics import kinds as K
from gpuledger.analytics.prices import PriceBook
from gpuledger.config import parse_toml
from gpuledger.errors import ConfigError, GpuledgerError
from gpuledger.store import Store
from gpuledger.store.protocol import HourlyWriter, HourPart
from gpuledger.timeutil import HOUR_NS, from_ns, month_bounds, to_ns

__all__ = ["DEFAULT_UNITS", "Prometheus", "PrometheusHTTP", "Unit", "WorkUnits", "default_work_units",
           "import_hours", "load_work_units", "parse_work_units", "unit_report"]

DEFAULT_UNITS = "defaults/work_units.toml"
_J_PER_KWH = 3_600_000


@dataclass(frozen=True)
class Unit:
    name: str  # e.g. "tokens"
    query: str  # PromQL: one sample per (namespace, pod), the work done in the hour ending at the query time
    per: int  # report per this many units (1,000,000 for tokens)


@dataclass(frozen=True)
class WorkUnits:
    prometheus_url: str | None
    units: tuple[Unit, ...]


def parse_work_units(text: str, source: str = "<string>") -> WorkUnits:
    doc = parse_toml(text, source)
    hint = '[[unit]] name = "tokens" per = 1000000 query = \'sum by (namespace, pod) (increase(...[1h]))\''
    if set(doc) - {"prometheus_url", "unit"}:
        raise ConfigError(f"{source}: unknown top-level key(s) {sorted(set(doc) - {'prometheus_url', 'unit'})}",
                          hint="allowed: prometheus_url, unit")
    units = []
    for n, item in enumerate(doc.get("unit", [])):
        if (not isinstance(item, dict) or set(item) - {"name", "query", "per"} or not isinstance(item.get("name"), str)
                or not isinstance(item.get("query"), str) or not isinstance(item.get("per", 1), int)
                or item.get("per", 1) < 1):
            raise ConfigError(f"{source}: [[unit]] #{n + 1} needs name, query (PromQL) and per (a positive integer)",
                              hint=hint)
        units.append(Unit(item["name"], item["query"], item.get("per", 1)))
    if not units or len({u.name for u in units}) != len(units):
        raise ConfigError(f"{source}: expected one or more [[unit]] entries with distinct names", hint=hint)
    url = doc.get("prometheus_url")
    return WorkUnits(url if isinstance(url, str) else None, tuple(units))


def load_work_units(path: str | Path) -> WorkUnits:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read work units {path}: {exc.strerror}", hint="pass --work-units PATH") from None
    return parse_work_units(text, str(path))


def default_work_units() -> WorkUnits:
    """The shipped default: vLLM's token counters (gpuledger/defaults/work_units.toml)."""
    return parse_work_units(resources.files("gpuledger").joinpath(DEFAULT_UNITS).read_text(encoding="utf-8"),
                            DEFAULT_UNITS)


# --- the Prometheus seam --------------------------------------------------------------


class Prometheus(Protocol):
    def query(self, promql: str, at_s: float) -> list[tuple[dict[str, str], float]]:
        """An instant vector at ``at_s`` (Unix seconds): (labels, value) per sample."""


class PrometheusError(GpuledgerError):
    hint = "check --prometheus-url (or prometheus_url in the work units file) and the unit's PromQL"


class PrometheusHTTP:
    """Prometheus's HTTP API (``/api/v1/query``) over the standard library."""

    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        self.base_url, self.timeout_s = base_url.rstrip("/"), timeout_s

    def query(self, promql: str, at_s: float) -> list[tuple[dict[str, str], float]]:
        url = f"{self.base_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql, "time": f"{at_s:.3f}"})
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:  # noqa: S310 (a configured http(s) URL)
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise PrometheusError(f"Prometheus answered {exc.code} to {promql!r}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise PrometheusError(f"cannot query Prometheus at {self.base_url}: {exc}") from None
        data = body.get("data", {})
        if body.get("status") != "success" or data.get("resultType") != "vector":
            raise PrometheusError(f"{promql!r} did not give an instant vector: {str(body)[:300]}",
                                  hint="a unit's query must return one sample per pod (an instant vector)")
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]


# --- import ----------------------------------------------------------------------------


@dataclass
class ImportResult:
    hours: int = 0
    rows: int = 0
    skipped: int = 0  # samples without namespace/pod, or not finite
    written: int = 0  # rows the store wrote (the lake writes none when it held exactly these rows already)


def import_hours(store: HourlyWriter, prometheus: Prometheus, units: WorkUnits, hours: Iterable[int], *,
                 batch_hours: int = 24) -> ImportResult:
    """Import each unit for each hour (any ns inside it): replace that hour's rows of the unit.

    ``store`` is the DuckDB file (:class:`~gpuledger.store.Store`) or the lake
    (:class:`~gpuledger.store.lake.products.LakeProducts`); ``batch_hours`` hours
    go to it at a time (one transaction, or one Iceberg commit).
    """
    result = ImportResult()
    schema = {"hour_start_ns": pl.Int64, "cluster": pl.String, "namespace": pl.String, "pod": pl.String,
              "unit": pl.String, "count": pl.Float64}
    parts: list[HourPart] = []
    wanted = sorted({h - h % HOUR_NS for h in hours})
    for n, hour in enumerate(wanted, 1):
        for unit in units.units:
            rows = []
            for labels, value in prometheus.query(unit.query, (hour + HOUR_NS) / 1e9):
                if not labels.get("namespace") or not labels.get("pod") or not math.isfinite(value):
                    result.skipped += 1
                    continue
                rows.append({"hour_start_ns": hour, "cluster": labels.get("cluster"), "namespace": labels["namespace"],
                             "pod": labels["pod"], "unit": unit.name, "count": value})
            parts.append((hour, {"unit": unit.name}, pl.DataFrame(rows, schema=schema).to_arrow()))
            result.rows += len(rows)
        result.hours += 1
        if n % batch_hours == 0 or n == len(wanted):
            result.written += store.replace_hours("work_units", parts)
            parts = []
    return result


# --- report ----------------------------------------------------------------------------


def _money(v: Decimal | None, quantum: Decimal) -> str | None:
    return None if v is None else str(v.quantize(quantum))


def unit_report(store: Store, month: str, book: PriceBook, units: WorkUnits) -> list[dict[str, Any]]:
    """Per unit, tenant, GPU model and pod with work in ``month``: the work, GPU time, energy, cost, and per ``per``."""
    start, end = (to_ns(t) for t in month_bounds(month))
    if not store.has_table("work_units"):
        return []
    work = store.query("SELECT hour_start_ns, cluster AS _wc, namespace, pod, unit, sum(count) AS count FROM work_units "
                       "WHERE hour_start_ns >= ? AND hour_start_ns < ? GROUP BY ALL", [start, end])
    if work.is_empty():
        return []
    gpu = store.query(
        "SELECT hour_start_ns, cluster, namespace, pod, tenant, model, profile, kind, sum(gpu_seconds) AS s, "
        "CASE WHEN count(energy_j) > 0 THEN sum(energy_j) END AS j FROM ledger_hourly "
        "WHERE hour_start_ns >= ? AND hour_start_ns < ? AND pod IS NOT NULL GROUP BY ALL", [start, end])
    per = {u.name: u.per for u in units.units}
    out = []
    keys = ["unit", "tenant", "model", "pod"]
    # A sample with a ``cluster`` label is that cluster's pod only; without one, the pod's in any cluster.
    same = pl.col("_wc").is_null() | (pl.col("_wc") == pl.col("cluster"))
    joined = work.join(gpu, on=["hour_start_ns", "namespace", "pod"], how="inner").filter(same)
    # Work counted once per (hour, pod): a pod on two kinds or models splits GPU time, not work.
    counted = work.join(gpu.select("hour_start_ns", "cluster", "namespace", "pod", "tenant", "model").unique(),
                        on=["hour_start_ns", "namespace", "pod"], how="inner").filter(same).drop("cluster").unique()
    totals = counted.group_by(keys).agg(count=pl.col("count").sum())
    for (unit, tenant, model, pod), part in sorted(joined.group_by(keys), key=lambda kv: tuple(map(str, kv[0]))):
        busy_h = held_h = Decimal(0)
        busy_cost = held_cost = Decimal(0)
        joules: float | None = None
        for r in part.iter_rows(named=True):
            price = book.price_for(r["model"], r["profile"], from_ns(r["hour_start_ns"]).date())
            hours = Decimal(r["s"]) / 3600
            energy = None if r["j"] is None else Decimal(r["j"]) / _J_PER_KWH
            cost = hours * price.per_gpu_hour + (energy * price.energy_per_kwh
                                                 if energy is not None and price.energy_per_kwh is not None else 0)
            held_h += hours
            held_cost += cost
            if r["kind"] == K.BUSY:
                busy_h += hours
                busy_cost += cost
            if r["j"] is not None:
                joules = (joules or 0.0) + r["j"]
        count = float(totals.filter((pl.col("unit") == unit) & (pl.col("tenant") == tenant) & (pl.col("model") == model)
                              & (pl.col("pod") == pod))["count"].sum())
        scale = Decimal(per.get(str(unit), 1))
        kwh = None if joules is None else Decimal(joules) / _J_PER_KWH
        q = Decimal("0.000001")

        def each(v: Decimal | None, digits: Decimal, scale: Decimal = scale, count: float = count) -> str | None:
            """``v`` per ``scale`` units; null when ``v`` is unknown or no work was counted."""
            return None if v is None or not count else str((v * scale / Decimal(count)).quantize(digits))

        out.append({
            "unit": unit, "per": int(scale), "tenant": tenant, "model": model, "pod": pod, "count": count,
            "used_gpu_hours": str(busy_h.quantize(q)), "held_gpu_hours": str(held_h.quantize(q)),
            "energy_kwh": None if kwh is None else str(kwh.quantize(q)),
            "cost_busy": _money(busy_cost, book.quantum), "cost_held": _money(held_cost, book.quantum),
            "cost_per_busy": each(busy_cost, book.quantum), "cost_per_held": each(held_cost, book.quantum),
            "used_gpu_hours_per": each(busy_h, q), "held_gpu_hours_per": each(held_h, q), "kwh_per": each(kwh, q),
            "currency": book.currency,
        })
    return out
