"""The monthly chargeback file: FOCUS 1.4 (default) or 1.2 columns, one row per charge, CSV or Parquet.

Columns are declared once per FOCUS version (:data:`COLUMNS_1_4`,
:data:`COLUMNS_1_2`; name, type, how to compute it from a :class:`Charge`),
so conformance work edits a table, not code paths. The version is the
:class:`ExportContext`'s ``focus_version`` (``gpuledger export chargeback
--focus-version``). 1.4 replaces ``ProviderName``/``PublisherName`` with
``ServiceProviderName``/``HostProviderName`` and describes each row as a
split cost allocation (FOCUS 1.3+): ``AllocatedMethodId``,
``AllocatedMethodDetails`` (one element per kind of GPU time with its ratio
of the pool and its GPU-hours), ``AllocatedResourceId/Name`` (the tenant's
share of the pool) and ``AllocatedTags``.
FOCUS names are used where one applies; gpuledger's own columns carry the
``x_`` prefix FOCUS reserves for custom columns. docs/chargeback.md lists every
column with its meaning, nullability and precision.

Rows: for every chargeback line (tenant × model × MIG profile × price entry,
× UTC day when the charge period is ``day``; see
:func:`~gpuledger.analytics.chargeback.chargeback_lines`) one ``GPU-Hours``
row, plus one ``kWh`` row when the price book charges measured energy, then
any ``ChargeClass = Correction`` rows (built by
:mod:`~gpuledger.analytics.closing`). Dates are UTC ISO 8601
(``2025-03-01T00:00:00Z``), periods start inclusive and end exclusive.

CSV: UTF-8, RFC 4180 (CRLF), stable row order, no comment lines, written by
the project's one CSV writer (:mod:`~gpuledger.analytics.csvfile`): text cells
that a spreadsheet would run as a formula (leading ``= + - @``, tab or CR) get
a leading apostrophe; numeric cells are handed to it as Decimals and are never
altered. Parquet: the same columns with exact types
(``decimal128``: money at the book's quantum, quantities at 6 places, unit
prices at 10; timestamps UTC, whole seconds, stored in ms); text is not altered.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from gpuledger.analytics import chargeback as cb
from gpuledger.analytics import kinds as K
from gpuledger.analytics.csvfile import Writable, sanitize_cell, write_rows
from gpuledger.analytics.policy import POLICIES, Policy, apply_idle_policy_to_rows
from gpuledger.analytics.prices import Price, PriceBook
from gpuledger.analytics.rollups import in_period
from gpuledger.config import FocusVersion, Settings
from gpuledger.store import Store
from gpuledger.timeutil import DAY_NS, from_ns, iso_utc, month_bounds, to_ns

__all__ = [
    "ALLOCATION_METHOD",
    "COLUMNS",
    "COLUMNS_1_2",
    "COLUMNS_1_4",
    "CORRECTION",
    "DEFAULT_FOCUS_VERSION",
    "FOCUS_VERSIONS",
    "HOURS",
    "METRICS",
    "Charge",
    "Column",
    "ExportContext",
    "charges",
    "columns_for",
    "csv_bytes",
    "focus_csv",
    "metrics_of",
    "parquet_bytes",
    "sanitize_cell",
    "write_csv",
]

HOURS = Decimal("0.000001")  # GPU-hours and kWh are written to 6 decimals (3.6 ms, 3.6 J)
PRICE_SCALE = 10  # decimals of unit prices in Parquet
CORRECTION = "Correction"
#: Additive usage measures of a row (x_ columns), keyed by name; coverage is a ratio, not additive.
METRICS = ("used_h", "idle_h", "unmeasured_h", "unallocated_h", "energy_kwh")
FOCUS_VERSIONS: tuple[FocusVersion, ...] = ("1.4", "1.2")
DEFAULT_FOCUS_VERSION: FocusVersion = "1.4"
#: AllocatedMethodId of every row: a pool's cost split by GPU-seconds held or used (energy: by joules).
ALLOCATION_METHOD = "gpuledger/gpu-seconds/v1"
RATIO = Decimal("0.000000001")  # AllocatedRatio places (9): a ratio, not money; the cost columns stay exact


@dataclass(frozen=True)
class ExportContext:
    """Who bills whom, and at what granularity (settings: docs/configuration.md)."""

    billing_account_id: str = "gpuledger"
    billing_account_name: str = "gpuledger GPU fleet"
    provider_name: str = "gpuledger"
    region_id: str | None = None  # None: RegionId/RegionName are null (not known)
    charge_period: Literal["month", "day"] = "month"
    focus_version: FocusVersion = DEFAULT_FOCUS_VERSION
    idle_policy: Policy = "holder"  # who pays for idle (gpuledger/analytics/policy.py); the file says which

    @classmethod
    def from_settings(cls, settings: Settings) -> ExportContext:
        """From the validated :class:`~gpuledger.config.Settings` (docs/configuration.md)."""
        return cls(settings.billing_account_id, settings.billing_account_name, settings.provider_name,
                   settings.region_id, settings.charge_period, settings.focus_version, settings.idle_policy)

    def as_closed(self, charge_period: str, inputs: Mapping[str, Any]) -> ExportContext:
        """This context with what a closed month was computed with: its charge period and idle policy.

        ``inputs`` is the close record's; a month closed before idle policies were
        recorded was closed under ``holder``.
        """
        stored = inputs.get("context") or {}
        policy = stored.get("idle_policy", "holder")
        if policy not in POLICIES or charge_period not in ("month", "day"):
            raise ValueError(f"a close record holds idle policy {policy!r}, charge period {charge_period!r}")
        return replace(self, charge_period="month" if charge_period == "month" else "day",
                       idle_policy=policy)


@dataclass(frozen=True)
class Charge:
    """One row of the file, before formatting."""

    tenant: str
    model: str
    profile: str | None
    line_kind: str  # "usage" or "unallocated"
    cluster: str  # where the GPU time was used (x_Cluster): a tenant's use in two clusters is two rows
    price: Price
    unit: Literal["GPU-Hours", "kWh"]
    quantity: Decimal  # in ``unit``
    unit_price: Decimal  # money per ``unit``
    cost: Decimal
    period: tuple[datetime, datetime]  # billing period (the month)
    charge_period: tuple[datetime, datetime]  # month (or day) ∩ the price entry's effective period
    metrics: Mapping[str, Decimal | None]  # METRICS (6 decimals) and "coverage"; GPU-Hours rows only
    sharing: str | None = None  # sharing modes seen, comma-separated
    charge_class: str | None = None  # None or "Correction"
    corrects: str | None = None  # YYYY-MM of the closed month a correction row corrects
    context: ExportContext = field(default_factory=ExportContext)
    #: The row's share of its pool (model, price entry) over the month, per kind of time, in the row's unit:
    #: ``(kind, quantity, ratio)``; empty for corrections (a difference is no share).
    allocation: tuple[tuple[str, Decimal, Decimal], ...] = ()

    @property
    def key(self) -> tuple[str, ...]:
        """What a correction is matched on: charge period start, tenant, model, profile, kind, entry, unit, cluster."""
        return (iso_utc(self.charge_period[0]), self.tenant, self.model, self.profile or "", self.line_kind,
                self.price.entry_id, self.unit, self.cluster)


@dataclass(frozen=True)
class Column:
    name: str
    kind: Literal["text", "decimal", "money", "price", "datetime", "json"]
    value: Callable[[Charge], str | Decimal | datetime | None]


def _hours(seconds: float | None) -> Decimal | None:
    return None if seconds is None else (Decimal(seconds) / 3600).quantize(HOURS)


def _kwh(joules: float | None) -> Decimal | None:
    return None if joules is None else (Decimal(joules) / cb.J_PER_KWH).quantize(HOURS)


def metrics_of(line: Mapping[str, Any]) -> dict[str, Decimal | None]:
    """The x_ measures of one chargeback line, rounded as written (6 decimals)."""
    busy = line["busy_seconds"]
    return {
        "used_h": _hours(busy), "idle_h": _hours(line["idle_seconds"]),
        "unmeasured_h": _hours(line["unmeasured_seconds"]), "unallocated_h": _hours(line["unallocated_seconds"]),
        "energy_kwh": _kwh(line["energy_j"]),
        "coverage": None if not busy else (Decimal(line["direct_busy_seconds"]) / Decimal(busy)).quantize(HOURS),
    }


def _gpu_only(name: str) -> Callable[[Charge], Decimal | None]:
    """A capacity measure: shown on the GPU-Hours row only, so column sums do not double count."""
    return lambda c: c.metrics.get(name) if c.unit == "GPU-Hours" else None


def _where(c: Charge) -> str:
    return c.model + (f" MIG {c.profile}" if c.profile else "")


def _description(c: Charge) -> str:
    p = c.price
    what = ("Unallocated GPU capacity (idle, held by no tenant)" if c.line_kind == "unallocated"
            else f"GPU capacity used or held by tenant {c.tenant}")
    if c.line_kind == "unallocated" and c.tenant != K.PLATFORM_TENANT:
        what = f"Share of unallocated GPU capacity (idle, held by no tenant) charged to tenant {c.tenant}"
    if c.unit == "kWh":
        what = f"Measured GPU energy of tenant {c.tenant}"
    rate = f"{c.unit_price} {p.currency}/{'kWh' if c.unit == 'kWh' else 'GPU-hour'}"
    entry = (f"default price entry '{p.entry_id}' (no price entry matches this model)"
             if p.is_default else f"price entry '{p.entry_id}'")
    text = f"{what} on {_where(c)} at {rate}, {entry}"
    if c.charge_class == CORRECTION:
        text = (f"Correction to {c.corrects} (closed): usage or attribution changed after the close; "
                f"difference to what was billed. {text}")
    return text


def _sku(c: Charge) -> str:
    base = ("gpu-energy/" if c.unit == "kWh" else "gpu/") + c.model
    return base + (f"/{c.profile}" if c.profile else "")


def _resource_id(c: Charge) -> str:
    """The fleet's pool of one GPU model (and MIG profile): rows aggregate GPUs of a model."""
    return f"{c.context.billing_account_id}/gpu-pool/{c.model}" + (f"/{c.profile}" if c.profile else "")


def _tags(c: Charge) -> str:
    """Provider-defined tags (prefix ``gpuledger/``), JSON object, keys sorted."""
    tags: dict[str, str] = {"gpuledger/tenant": c.tenant, "gpuledger/cluster": c.cluster,
                            "gpuledger/gpu-model": c.model, "gpuledger/charge-type": _charge_type(c)}
    if c.profile:
        tags["gpuledger/mig-profile"] = c.profile
    if c.sharing:
        tags["gpuledger/sharing"] = c.sharing
    return json.dumps(tags, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _charge_type(c: Charge) -> str:
    return "unallocated" if c.line_kind == "unallocated" else ("energy" if c.unit == "kWh" else "usage")


def _invoice_id(c: Charge) -> str:
    """One invoice per billing account and billing month (corrections are billed on the month that carries them)."""
    return f"{c.context.billing_account_id}/{c.period[0]:%Y-%m}"


def _allocated(value: Callable[[Charge], str]) -> Callable[[Charge], str | None]:
    """An allocation column: null on correction rows (a difference of two splits is no split)."""
    return lambda c: value(c) if c.allocation else None


def _allocated_resource_id(c: Charge) -> str:
    return f"{_resource_id(c)}/tenant/{c.tenant}"


def _allocation_details(c: Charge) -> str:
    """FOCUS AllocatedMethodDetails: one element per kind of time (or the energy) with its ratio of the pool.

    ``AllocatedRatio`` = the kind's GPU-hours (kWh) ÷ the pool's, over the whole
    billing month (the pool is priced once per month); ``UsageQuantity`` is in
    ``UsageUnit`` (the row's PricingUnit). The row's ratios sum to its share of
    the pool's cost before the cent rounding of the largest-remainder split.
    """
    elements = [{"AllocatedRatio": float(ratio), "UsageQuantity": float(quantity), "UsageUnit": c.unit,
                 "x_Kind": kind} for kind, quantity, ratio in c.allocation]
    return json.dumps({"Elements": elements}, ensure_ascii=False, separators=(",", ":"))


def _allocated_tags(c: Charge) -> str:
    """Tags of the resource that received the cost: the tenant's share of the pool."""
    return json.dumps({"gpuledger/tenant": c.tenant}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _columns(version: FocusVersion) -> tuple[Column, ...]:
    if version == "1.2":
        providers = (Column("ProviderName", "text", lambda c: c.context.provider_name),
                     Column("PublisherName", "text", lambda c: c.context.provider_name))
        allocation: tuple[Column, ...] = ()
    else:  # 1.4: ServiceProviderName/HostProviderName replace ProviderName/PublisherName; split cost allocation
        providers = (Column("ServiceProviderName", "text", lambda c: c.context.provider_name),
                     Column("HostProviderName", "text", lambda c: c.context.provider_name))
        allocation = (
            Column("AllocatedMethodId", "text", _allocated(lambda c: ALLOCATION_METHOD)),
            Column("AllocatedMethodDetails", "json", _allocated(_allocation_details)),
            Column("AllocatedResourceId", "text", _allocated(_allocated_resource_id)),
            Column("AllocatedResourceName", "text", _allocated(lambda c: f"{c.tenant} share of {_where(c)} pool")),
            Column("AllocatedTags", "json", _allocated(_allocated_tags)),
        )
    return (
        Column("BilledCost", "money", lambda c: c.cost),
        Column("EffectiveCost", "money", lambda c: c.cost),
        Column("ListCost", "money", lambda c: c.cost),
        Column("ContractedCost", "money", lambda c: c.cost),
        Column("BillingCurrency", "text", lambda c: c.price.currency),
        Column("BillingAccountId", "text", lambda c: c.context.billing_account_id),
        Column("BillingAccountName", "text", lambda c: c.context.billing_account_name),
        Column("BillingPeriodStart", "datetime", lambda c: c.period[0]),
        Column("BillingPeriodEnd", "datetime", lambda c: c.period[1]),
        Column("ChargePeriodStart", "datetime", lambda c: c.charge_period[0]),
        Column("ChargePeriodEnd", "datetime", lambda c: c.charge_period[1]),
        Column("ChargeCategory", "text", lambda c: "Usage"),
        Column("ChargeClass", "text", lambda c: c.charge_class),
        Column("ChargeFrequency", "text", lambda c: "Usage-Based"),
        Column("ChargeDescription", "text", _description),
        Column("PricingCategory", "text", lambda c: "Standard"),
        Column("PricingQuantity", "decimal", lambda c: c.quantity),
        Column("PricingUnit", "text", lambda c: c.unit),
        Column("ConsumedQuantity", "decimal", lambda c: c.quantity),
        Column("ConsumedUnit", "text", lambda c: c.unit),
        Column("ListUnitPrice", "price", lambda c: c.unit_price),
        Column("ContractedUnitPrice", "price", lambda c: c.unit_price),
        *providers,
        Column("InvoiceIssuerName", "text", lambda c: c.context.provider_name),
        Column("InvoiceId", "text", _invoice_id),
        Column("ServiceName", "text", lambda c: "GPU compute"),
        Column("ServiceCategory", "text", lambda c: "AI and Machine Learning"),
        Column("ServiceSubcategory", "text", lambda c: "AI Platforms"),
        Column("SubAccountId", "text", lambda c: c.tenant),
        Column("SubAccountName", "text", lambda c: c.tenant),
        Column("RegionId", "text", lambda c: c.context.region_id),
        Column("RegionName", "text", lambda c: c.context.region_id),
        Column("ResourceId", "text", _resource_id),
        Column("ResourceName", "text", lambda c: f"{_where(c)} pool"),
        Column("ResourceType", "text", lambda c: "MIG slice" if c.profile else "GPU"),
        Column("SkuId", "text", _sku),
        Column("SkuPriceId", "text", lambda c: c.price.entry_id),
        Column("Tags", "json", _tags),
        *allocation,
        Column("x_UsedGpuHours", "decimal", _gpu_only("used_h")),
        Column("x_AllocatedIdleGpuHours", "decimal", _gpu_only("idle_h")),
        Column("x_UnmeasuredGpuHours", "decimal", _gpu_only("unmeasured_h")),
        Column("x_UnallocatedGpuHours", "decimal", _gpu_only("unallocated_h")),
        Column("x_EnergyKwh", "decimal", _gpu_only("energy_kwh")),
        Column("x_Cluster", "text", lambda c: c.cluster),
        Column("x_GpuModel", "text", lambda c: c.model),
        Column("x_MigProfile", "text", lambda c: c.profile),
        Column("x_SharingModes", "text", lambda c: c.sharing),
        Column("x_Coverage", "decimal", _gpu_only("coverage")),
        Column("x_DefaultPrice", "text", lambda c: "true" if c.price.is_default else "false"),
        Column("x_ChargeType", "text", _charge_type),
        Column("x_CorrectedPeriod", "text", lambda c: c.corrects),
        Column("x_IdlePolicy", "text", lambda c: c.context.idle_policy),
    )


#: The file's columns, in order, per FOCUS version.
COLUMNS_1_4: tuple[Column, ...] = _columns("1.4")
COLUMNS_1_2: tuple[Column, ...] = _columns("1.2")
#: The default version's columns.
COLUMNS: tuple[Column, ...] = COLUMNS_1_4
_BY_VERSION: dict[str, tuple[Column, ...]] = {"1.4": COLUMNS_1_4, "1.2": COLUMNS_1_2}


def columns_for(version: str | Iterable[Charge]) -> tuple[Column, ...]:
    """The columns of a FOCUS version, or of the version the rows were made for (their context's).

    Raises ValueError for a version gpuledger does not write.
    """
    if not isinstance(version, str):
        first = next(iter(version), None)
        version = first.context.focus_version if first is not None else DEFAULT_FOCUS_VERSION
    if version not in _BY_VERSION:
        raise ValueError(f"unknown FOCUS version {version!r}; gpuledger writes {', '.join(FOCUS_VERSIONS)}")
    return _BY_VERSION[version]


def charges(source: pl.LazyFrame | Store, book: PriceBook, month: str,
            context: ExportContext | None = None) -> tuple[list[Charge], cb.Totals]:
    """The month's regular charges in file order, and totals checked to reconcile.

    ``source``: a store (the month's hourly rollups, summed in DuckDB: memory
    bounded whatever the fleet's size) or ledger rows (tests, small inputs).
    """
    ctx = context or ExportContext()
    period = month_bounds(month)
    if isinstance(source, Store):
        usage = cb.read_usage(source, period[0], period[1], cb.line_keys(ctx.charge_period), policy=ctx.idle_policy)
        lines, pool_map = cb.chargeback_lines(usage, book, ctx.charge_period)
    else:
        rows = apply_idle_policy_to_rows(in_period(source, to_ns(period[0]), to_ns(period[1])), ctx.idle_policy)
        lines, pool_map = cb.chargeback_lines(rows, book, ctx.charge_period)
    totals = cb.monthly_totals(lines, pool_map, book.currency)
    pool_totals = _pool_totals(lines)
    out: list[Charge] = []
    for line in lines.iter_rows(named=True):
        pool_s, pool_j = pool_totals[(line["model"], line["entry_id"])]
        price = pool_map[(line["model"], line["entry_id"])].price
        start = max(period[0], _midnight(price.effective_from) or period[0])
        end = min(period[1], _midnight(price.effective_until) or period[1])
        if ctx.charge_period == "day":
            start = from_ns(line["charge_day_ns"])
            end = from_ns(line["charge_day_ns"] + DAY_NS)
        hours = _hours(line["gpu_seconds"])
        assert hours is not None
        common = {"tenant": line["tenant"], "cluster": line["cluster"], "model": line["model"], "profile": line["profile"],
                      "line_kind": line["line_kind"], "price": price, "period": period, "charge_period": (start, end),
                      "sharing": line["sharing_modes"] or None, "context": ctx}
        out.append(Charge(unit="GPU-Hours", quantity=hours, unit_price=price.per_gpu_hour,
                          cost=line["capacity_cost"], metrics=metrics_of(line),
                          allocation=_time_allocation(line, pool_s), **common))
        if line["energy_cost"] is not None and price.energy_per_kwh is not None:
            kwh = _kwh(line["energy_j"])
            assert kwh is not None
            share = (Decimal(line["energy_j"]) / Decimal(pool_j)).quantize(RATIO) if pool_j else Decimal(0)
            out.append(Charge(unit="kWh", quantity=kwh, unit_price=price.energy_per_kwh, cost=line["energy_cost"],
                              metrics={}, allocation=(("energy", kwh, share),), **common))
    out.sort(key=order)
    return out, totals


_KIND_SECONDS = (("used", "busy_seconds"), ("allocated_idle", "idle_seconds"),
                 ("unmeasured", "unmeasured_seconds"), ("unallocated", "unallocated_seconds"))


def _pool_totals(lines: pl.DataFrame) -> dict[tuple[str, str], tuple[float, float | None]]:
    """GPU-seconds and joules of each priced pool (model, price entry) over the month: the split's denominators."""
    if lines.is_empty():
        return {}
    # Summed as exact integers (GPU-ps, nJ): the same denominators whatever the lines' order.
    pools = lines.group_by("model", "entry_id").agg(
        s=pl.col("gpu_ps").sum(), j=pl.when(pl.col("energy_nj").is_not_null().any()).then(pl.col("energy_nj").sum()))
    return {(r["model"], r["entry_id"]): (int(r["s"]) / 10**12, None if r["j"] is None else int(r["j"]) / 10**9)
            for r in pools.iter_rows(named=True)}


def _time_allocation(line: Mapping[str, Any], pool_s: float) -> tuple[tuple[str, Decimal, Decimal], ...]:
    """The row's kinds of GPU time with their GPU-hours and ratio of the pool's GPU-seconds (kinds with time only)."""
    out = []
    for kind, column in _KIND_SECONDS:
        seconds = line[column]
        if seconds:
            hours = _hours(seconds)
            assert hours is not None
            out.append((kind, hours, (Decimal(seconds) / Decimal(pool_s)).quantize(RATIO)))
    return tuple(out)


def order(c: Charge) -> tuple[Any, ...]:
    """File order: regular rows, then corrections by corrected month; then tenant, model, period."""
    return (c.charge_class or "", c.corrects or "", c.line_kind == "unallocated", c.tenant, c.model,
            c.profile or "", c.charge_period[0], c.price.entry_id, c.unit, c.cluster)


def _midnight(day: Any) -> datetime | None:
    return None if day is None else datetime(day.year, day.month, day.day, tzinfo=UTC)


def _cell(column: Column, charge: Charge) -> str | Decimal | datetime | None:
    """A cell as the CSV writer takes it: numbers as Decimals (never altered), text as str (neutralised)."""
    value = column.value(charge)
    if value is None or column.kind == "datetime":
        return value
    if column.kind in ("decimal", "money", "price"):
        assert not isinstance(value, datetime)
        return Decimal(value)
    return str(value)


def write_csv(rows: Iterable[Charge], out: Writable, columns: tuple[Column, ...] | None = None) -> int:
    """Write the header and one line per charge to a text stream; returns rows written.

    ``columns`` default: those of the rows' FOCUS version (:func:`columns_for`).
    """
    rows = list(rows)
    columns = columns or columns_for(rows)
    return write_rows(out, [c.name for c in columns], ([_cell(col, charge) for col in columns] for charge in rows))


def csv_bytes(rows: Iterable[Charge]) -> bytes:
    """The CSV file as UTF-8 bytes (no byte-order mark)."""
    buf = io.StringIO()
    write_csv(rows, buf)
    return buf.getvalue().encode("utf-8")


def parquet_bytes(rows: list[Charge], quantum: Decimal, columns: tuple[Column, ...] | None = None) -> bytes:
    """The file as Parquet: decimals stay exact (decimal128), timestamps UTC, text unaltered.

    ``columns`` default: those of the rows' FOCUS version. Raises ValueError if
    a unit price has more than 10 decimal places.
    """
    columns = columns or columns_for(rows)
    money_scale = max(0, -int(quantum.as_tuple().exponent))
    types: dict[str, pa.DataType] = {
        "money": pa.decimal128(38, money_scale), "decimal": pa.decimal128(38, 6),
        "price": pa.decimal128(38, PRICE_SCALE), "datetime": pa.timestamp("s", tz="UTC"),
        "text": pa.string(), "json": pa.string(),
    }
    arrays = []
    for col in columns:
        values = [col.value(c) for c in rows]
        if col.kind == "price":
            exact = [v for v in values if isinstance(v, Decimal | str)
                     and Decimal(v) != Decimal(v).quantize(Decimal(10) ** -PRICE_SCALE)]
            if exact:
                raise ValueError(f"{col.name} {exact[0]} has more than {PRICE_SCALE} decimal places; "
                                 "round the price book entry")
        arrays.append(pa.array(values, types[col.kind]))
    table = pa.table(arrays, names=[c.name for c in columns])
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def focus_csv(ledger: pl.LazyFrame, book: PriceBook, month: str,
              context: ExportContext | None = None) -> tuple[str, cb.Totals]:
    """The month's chargeback file (regular rows only) as text (encode as UTF-8), and its checked totals."""
    rows, totals = charges(ledger, book, month, context)
    buf = io.StringIO()
    write_csv(rows, buf)
    return buf.getvalue(), totals
