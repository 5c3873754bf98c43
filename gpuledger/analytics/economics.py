"""Fleet economics: what the owned fleet cost per GPU-hour actually used, and what renting would have cost.

Read from the hourly rollups (``ledger_hourly``), per pool (node pool x GPU
model x cluster) and month, with capacity = every GPU-second of the pool (MIG slices
weighted by their fraction, as the ledger books them):

- ``utilization`` = used (busy) ÷ capacity; ``allocation`` = allocated
  (busy + allocated idle + unmeasured, i.e. capacity − unallocated) ÷
  capacity; ``efficiency`` = used ÷ allocated (null when nothing was allocated);
- ``own_cost``: capacity GPU-hours × the price book's rate for the model (and
  MIG profile) on each UTC day, rounded once to the book's quantum -- the
  capacity cost the chargeback file allocates (up to float GPU-seconds of the
  rollups instead of the bill's integer nanoseconds: an estimate, not the bill);
  ``cost_per_used_gpu_hour`` = own_cost ÷ used GPU-hours (null when none was used);
- from a second book of **on-demand cloud rates** per GPU model
  (:class:`CloudRates`; the shipped example ``gpuledger/defaults/cloud_rates.toml``
  is dated and names its source; point ``--cloud-rates`` at your own):
  ``rented_used_cost`` = used GPU-hours × rate (renting exactly the busy
  hours, the lower bound of renting), ``rented_allocated_cost`` = allocated
  GPU-hours × rate (renting what tenants held), and
  ``break_even_utilization`` = own_cost ÷ (capacity GPU-hours × rate): the
  utilization above which owning is cheaper than renting the used hours on
  demand. A model without a cloud rate has all three null, never 0.

Pools: the agent does not send node labels, so a node's pool comes from a
node-pools file (:class:`NodePools`; ``[[pool]] name = "train" nodes =
"gpu-h100-*"``, first match wins); a node no entry matches is in pool
``unassigned``. A pool's key includes the rollups' cluster, so two clusters'
same-named nodes and pools stay apart (the globs match node names in every
cluster).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

from gpuledger.analytics import kinds as K
from gpuledger.analytics.prices import PriceBook, PriceEntry
from gpuledger.config import parse_toml
from gpuledger.errors import ConfigError, GpuledgerError
from gpuledger.store import Store
from gpuledger.timeutil import DAY_NS, from_ns, month_bounds, to_ns
from gpuledger.wire import DEFAULT_CLUSTER

__all__ = ["UNASSIGNED", "CloudRates", "NodePools", "PoolEconomics", "default_cloud_rates", "economics",
           "load_cloud_rates", "load_node_pools", "parse_cloud_rates", "read_month", "report_dict", "report_text",
           "totals"]

UNASSIGNED = "unassigned"
DEFAULT_RATES = "defaults/cloud_rates.toml"
RATIO = Decimal("0.000001")  # ratios to 6 places
_HOURS = Decimal("0.000001")


@dataclass(frozen=True)
class CloudRates:
    """On-demand cloud rates per GPU-hour of a whole GPU, per model pattern (a snapshot: ``as_of``, ``source``)."""

    book: PriceBook  # entries effective from ``as_of``; matching as in the price book (globs, most specific wins)
    as_of: date
    source: str  # where the numbers come from (a URL, a quote)
    offers: dict[str, str] = field(default_factory=dict)  # entry id -> the offer it prices, e.g. "AWS p5.48xlarge"

    def rate(self, model: str) -> tuple[Decimal, str] | None:
        """(rate per GPU-hour, entry id) for ``model``, or None when the book has no rate for it."""
        try:
            price = self.book.price_for(model, None, self.as_of)
        except ConfigError:
            return None
        return price.per_gpu_hour, price.entry_id


def parse_cloud_rates(text: str, source: str = "<string>") -> CloudRates:
    """Validate a cloud rates file: ``currency``, ``as_of``, ``source``, ``[[rate]]`` (id, model, per_gpu_hour, offer)."""
    doc = parse_toml(text, source)
    unknown = set(doc) - {"currency", "as_of", "source", "rate"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {sorted(unknown)}",
                          hint="allowed: as_of, currency, rate, source")
    as_of, cited, currency = doc.get("as_of"), doc.get("source"), doc.get("currency")
    if not isinstance(as_of, date) or not isinstance(cited, str) or not cited.strip() or not isinstance(currency, str):
        raise ConfigError(f"{source}: cloud rates need currency, as_of (a date) and source (where the rates come from)",
                          hint='currency = "USD"  as_of = 2026-03-01  source = "https://... (retrieved 2026-03-01)"')
    rates = doc.get("rate")
    if not isinstance(rates, list) or not rates:
        raise ConfigError(f"{source}: no [[rate]] entries", hint='[[rate]] model = "*H100*" per_gpu_hour = "3.90"')
    entries, offers = [], {}
    for n, item in enumerate(rates):
        where = f"{source}: [[rate]] #{n + 1}"
        if not isinstance(item, dict) or set(item) - {"id", "model", "per_gpu_hour", "offer"} or "model" not in item:
            raise ConfigError(f"{where}: needs model and per_gpu_hour (and optional id, offer), nothing else",
                              hint='[[rate]] model = "*H100*" per_gpu_hour = "3.90" offer = "AWS p5 on-demand"')
        raw = item.get("per_gpu_hour")
        try:
            if not isinstance(raw, str):
                raise InvalidOperation
            value = Decimal(raw)
        except InvalidOperation:
            raise ConfigError(f"{where}: per_gpu_hour must be a quoted decimal, got {raw!r}",
                              hint='per_gpu_hour = "3.90" (a TOML float would lose cents)') from None
        if not value.is_finite() or value <= 0:
            raise ConfigError(f"{where}: per_gpu_hour must be positive, got {raw}", hint='e.g. per_gpu_hour = "3.90"')
        entry_id = str(item.get("id") or item["model"])
        entries.append(PriceEntry(entry_id, str(item["model"]), None, value, as_of, None, n))
        offers[entry_id] = str(item.get("offer", ""))
    return CloudRates(PriceBook(entries, currency, source=source), as_of, cited, offers)


def load_cloud_rates(path: str | Path) -> CloudRates:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read cloud rates {path}: {exc.strerror}",
                          hint="pass --cloud-rates PATH, or leave it unset for the shipped example") from None
    return parse_cloud_rates(text, str(path))


def default_cloud_rates() -> CloudRates:
    """The shipped, dated example (gpuledger/defaults/cloud_rates.toml)."""
    text = resources.files("gpuledger").joinpath(DEFAULT_RATES).read_text(encoding="utf-8")
    return parse_cloud_rates(text, DEFAULT_RATES)


@dataclass(frozen=True)
class NodePools:
    """Node name glob -> pool name, first match wins; no match: :data:`UNASSIGNED`."""

    rules: tuple[tuple[str, str], ...] = ()  # (glob, pool)

    def pool_of(self, node: str) -> str:
        return next((pool for glob, pool in self.rules if fnmatchcase(node, glob)), UNASSIGNED)


def load_node_pools(path: str | Path) -> NodePools:
    """``[[pool]] name = "train-h100" nodes = "gpu-h100-*"`` entries (``nodes``: a glob or a list of globs)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read node pools {path}: {exc.strerror}", hint="pass --node-pools PATH") from None
    doc = parse_toml(text, str(path))
    rules: list[tuple[str, str]] = []
    for n, item in enumerate(doc.get("pool", [])):
        nodes = item.get("nodes") if isinstance(item, dict) else None
        globs = [nodes] if isinstance(nodes, str) else nodes
        if (not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(globs, list)
                or not globs or not all(isinstance(g, str) for g in globs) or set(item) - {"name", "nodes"}):
            raise ConfigError(f"{path}: [[pool]] #{n + 1} needs name (text) and nodes (a glob or a list of globs)",
                              hint='[[pool]] name = "train-h100" nodes = ["gpu-h100-*"]')
        rules += [(g, item["name"]) for g in globs]
    if set(doc) - {"pool"} or not rules:
        raise ConfigError(f"{path}: expected one or more [[pool]] entries and nothing else",
                          hint='[[pool]] name = "train-h100" nodes = "gpu-h100-*"')
    return NodePools(tuple(rules))


@dataclass(frozen=True)
class PoolEconomics:
    """One pool's month (see the module docstring); hours to 6 places, money at the book's quantum."""

    pool: str
    model: str
    cluster: str
    capacity_gpu_hours: Decimal
    used_gpu_hours: Decimal
    allocated_gpu_hours: Decimal
    utilization: Decimal | None
    allocation: Decimal | None
    efficiency: Decimal | None
    own_cost: Decimal
    cost_per_used_gpu_hour: Decimal | None
    cloud_rate: Decimal | None  # on-demand, per GPU-hour; None: no rate for the model
    cloud_rate_id: str | None
    rented_used_cost: Decimal | None
    rented_allocated_cost: Decimal | None
    break_even_utilization: Decimal | None
    currency: str

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in self.__dict__.items()}


def _ratio(a: Decimal, b: Decimal) -> Decimal | None:
    return None if b == 0 else (a / b).quantize(RATIO)


def economics(rows: pl.LazyFrame, book: PriceBook, rates: CloudRates, pools: NodePools = NodePools()) -> list[PoolEconomics]:
    """Rollup rows (``hour_start_ns, cluster, node, model, profile, kind, gpu_seconds``) -> one entry per
    pool x model x cluster.

    Raises GpuledgerError when the cloud rates are in another currency than the price book.
    """
    if rates.book.currency != book.currency:
        raise GpuledgerError(f"cloud rates are in {rates.book.currency}, the price book in {book.currency}",
                             hint="use a cloud rates file in the price book's currency")
    day = (pl.col("hour_start_ns") - pl.col("hour_start_ns") % DAY_NS).alias("day_ns")
    grouped = rows.group_by("cluster", "node", "model", "profile", day).agg(
        capacity=pl.col("gpu_seconds").sum(),
        used=pl.col("gpu_seconds").filter(pl.col("kind") == K.BUSY).sum(),
        unallocated=pl.col("gpu_seconds").filter(pl.col("kind") == K.UNALLOCATED).sum(),
    ).collect()
    acc: dict[tuple[str, str, str], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for r in grouped.iter_rows(named=True):
        a = acc[(pools.pool_of(r["node"]), r["model"], r["cluster"])]
        capacity = Decimal(r["capacity"]) / 3600
        a["capacity"] += capacity
        a["used"] += Decimal(r["used"]) / 3600
        a["allocated"] += capacity - Decimal(r["unallocated"]) / 3600
        a["cost"] += capacity * book.price_for(r["model"], r["profile"], from_ns(r["day_ns"]).date()).per_gpu_hour
    out = []
    for (pool, model, cluster), a in sorted(acc.items()):
        cap, used, alloc = a["capacity"], a["used"], a["allocated"]  # exact sums; rounded where shown
        cost = a["cost"].quantize(book.quantum)
        found = rates.rate(model)
        rate, rate_id = found if found else (None, None)
        out.append(PoolEconomics(
            pool, model, cluster, cap.quantize(_HOURS), used.quantize(_HOURS), alloc.quantize(_HOURS),
            _ratio(used, cap), _ratio(alloc, cap), _ratio(used, alloc), cost,
            None if used == 0 else (cost / used).quantize(book.quantum),
            rate, rate_id,
            None if rate is None else (used * rate).quantize(book.quantum),
            None if rate is None else (alloc * rate).quantize(book.quantum),
            None if rate is None else _ratio(cost, cap * rate), book.currency))
    return out


def read_month(store: Store, month: str) -> tuple[pl.LazyFrame, int]:
    """The month's rollup rows and how many of its hours are pending a refresh (counted as last rolled up)."""
    start, end = (to_ns(t) for t in month_bounds(month))
    return read_period(store, start, end)


def read_period(store: Store, start: int, end: int) -> tuple[pl.LazyFrame, int]:
    """Rollup rows of the hours starting in [start, end) (ns), and how many of them are pending a refresh."""
    if not store.has_table("ledger_hourly"):
        raise GpuledgerError("this database has no hourly rollups (ledger_hourly)",
                             hint="run `gpuledger attribute` with a current gpuledger: it creates and fills them")
    named = store.scalar("SELECT count(*) FROM duckdb_columns() WHERE table_name = 'ledger_hourly' "
                         "AND column_name = 'cluster'")  # a file no writer opened since migration 12: all default
    cluster = "cluster" if named else f"{DEFAULT_CLUSTER!r} AS cluster"
    rows = store.query(f"SELECT hour_start_ns, {cluster}, node, model, profile, kind, gpu_seconds FROM ledger_hourly "
                       "WHERE hour_start_ns >= ? AND hour_start_ns < ?", [start, end])
    pending = int(store.scalar("SELECT count(*) FROM ledger_hourly_pending WHERE hour_start_ns >= ? AND "
                               "hour_start_ns < ?", [start, end]) or 0) if store.has_table("ledger_hourly_pending") else 0
    return rows.lazy(), pending


def totals(entries: Iterable[PoolEconomics]) -> dict[str, str | None]:
    """Fleet-wide sums of the money columns (null where any pool lacks a cloud rate)."""
    items = list(entries)
    out: dict[str, str | None] = {"own_cost": str(sum((e.own_cost for e in items), Decimal(0)))}
    for k in ("rented_used_cost", "rented_allocated_cost"):
        values = [getattr(e, k) for e in items]
        out[k] = None if any(v is None for v in values) else str(sum(values, Decimal(0)))
    return out


def report_dict(month: str | None, entries: list[PoolEconomics], rates: CloudRates, pending_hours: int,
                period: dict[str, str] | None = None) -> dict[str, Any]:
    """The report as JSON-ready data (CLI ``--format json`` and ``GET /v1/economics``); ``month`` None: a period."""
    return {
        "month": month, "period": period, "currency": entries[0].currency if entries else rates.book.currency,
        "cloud_rates": {"as_of": rates.as_of.isoformat(), "source": rates.source, "file": rates.book.source,
                        "offers": rates.offers},
        "pending_hours": pending_hours, "pools": [e.to_dict() for e in entries], "totals": totals(entries),
    }


def report_text(body: dict[str, Any]) -> str:
    """The report as a plain-text table."""
    def cell(v: Any) -> str:
        return "-" if v is None else str(v)

    head = ("pool", "model", "cluster", "capacity_gpu_hours", "used_gpu_hours", "allocated_gpu_hours", "utilization",
            "allocation", "efficiency", "own_cost", "cost_per_used_gpu_hour", "cloud_rate", "rented_used_cost",
            "rented_allocated_cost", "break_even_utilization")
    lines = [f"fleet economics {body['month'] or body['period']} ({body['currency']}); cloud rates as of "
             f"{body['cloud_rates']['as_of']}: {body['cloud_rates']['source']}"]
    if body["pending_hours"]:
        lines.append(f"note: {body['pending_hours']} hour(s) of the month are pending a rollup refresh "
                     "(`gpuledger attribute`); they count as last rolled up")
    lines.append("\t".join(head))
    lines += ["\t".join(cell(p[k]) for k in head) for p in body["pools"]]
    t = body["totals"]
    lines.append(f"total own cost {t['own_cost']}; rented used {cell(t['rented_used_cost'])}; "
                 f"rented allocated {cell(t['rented_allocated_cost'])} (- : a model has no cloud rate)")
    return "\n".join(lines)
