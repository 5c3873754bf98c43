"""The monthly chargeback file: FOCUS 1.2 columns, one row per charge, CSV.

Columns are declared once in :data:`COLUMNS` (name, type, how to compute it
from a :class:`Charge`), so conformance work edits a table, not code paths.
FOCUS names are used where one applies; gpuledger's own columns carry the
``x_`` prefix FOCUS reserves for custom columns.

Rows: for every chargeback line (tenant × model × MIG profile × price entry,
see :func:`~gpuledger.analytics.chargeback.chargeback_lines`) one ``GPU-Hours``
row, plus one ``kWh`` row when the price book charges measured energy.
Dates are UTC ISO 8601 (``2025-03-01T00:00:00Z``), periods start inclusive
and end exclusive. The file is UTF-8, RFC 4180 (CRLF), stable row order, no
comment lines. Text cells that a spreadsheet would run as a formula (leading
``= + - @``, tab or CR) get a leading apostrophe; numeric cells are written by
this module from Decimals and are never formulas.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol

import polars as pl

from gpuledger.analytics import chargeback as cb
from gpuledger.analytics.prices import Price, PriceBook

__all__ = ["Charge", "Column", "COLUMNS", "charges", "focus_csv", "write_csv", "sanitize_cell"]

HOURS = Decimal("0.000001")  # GPU-hours and kWh are written to 6 decimals (3.6 ms, 3.6 J)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class Writable(Protocol):
    def write(self, text: str, /) -> object: ...


@dataclass(frozen=True)
class Charge:
    """One row of the file, before formatting."""

    line: dict[str, Any]  # a row of chargeback_lines (seconds, joules, keys)
    price: Price
    unit: Literal["GPU-Hours", "kWh"]
    quantity: Decimal  # in ``unit``
    unit_price: Decimal  # money per ``unit``
    cost: Decimal
    period: tuple[datetime, datetime]  # billing period (the month)
    charge_period: tuple[datetime, datetime]  # month ∩ the price entry's effective period


@dataclass(frozen=True)
class Column:
    name: str
    kind: Literal["text", "decimal", "datetime"]
    value: Callable[[Charge], str | Decimal | datetime | None]


def _hours(seconds: float | None) -> Decimal | None:
    return None if seconds is None else (Decimal(seconds) / 3600).quantize(HOURS)


def _gpu_only(get: Callable[[Charge], Any]) -> Callable[[Charge], Any]:
    """A capacity measure: shown on the GPU-Hours row only, so column sums do not double count."""
    return lambda c: get(c) if c.unit == "GPU-Hours" else None


def _description(c: Charge) -> str:
    line, p = c.line, c.price
    where = line["model"] + (f" MIG {line['profile']}" if line["profile"] else "")
    what = ("Unallocated GPU capacity (idle, held by no tenant)" if line["line_kind"] == "unallocated"
            else f"GPU capacity used or held by tenant {line['tenant']}")
    if c.unit == "kWh":
        what = f"Measured GPU energy of tenant {line['tenant']}"
    rate = f"{c.unit_price} {p.currency}/{'kWh' if c.unit == 'kWh' else 'GPU-hour'}"
    entry = (f"default price entry '{p.entry_id}' (no price entry matches this model)"
             if p.is_default else f"price entry '{p.entry_id}'")
    return f"{what} on {where} at {rate}, {entry}"


def _coverage(c: Charge) -> Decimal | None:
    busy = c.line["busy_seconds"]
    return None if not busy else (Decimal(c.line["direct_busy_seconds"]) / Decimal(busy)).quantize(HOURS)


def _sku(c: Charge) -> str:
    base = ("gpu-energy/" if c.unit == "kWh" else "gpu/") + c.line["model"]
    return base + (f"/{c.line['profile']}" if c.line["profile"] else "")


#: The file's columns, in order. ChargeClass is null: no corrections yet.
COLUMNS: tuple[Column, ...] = (
    Column("BilledCost", "decimal", lambda c: c.cost),
    Column("EffectiveCost", "decimal", lambda c: c.cost),
    Column("ListCost", "decimal", lambda c: c.cost),
    Column("ContractedCost", "decimal", lambda c: c.cost),
    Column("BillingCurrency", "text", lambda c: c.price.currency),
    Column("BillingPeriodStart", "datetime", lambda c: c.period[0]),
    Column("BillingPeriodEnd", "datetime", lambda c: c.period[1]),
    Column("ChargePeriodStart", "datetime", lambda c: c.charge_period[0]),
    Column("ChargePeriodEnd", "datetime", lambda c: c.charge_period[1]),
    Column("ChargeCategory", "text", lambda c: "Usage"),
    Column("ChargeClass", "text", lambda c: None),
    Column("ChargeFrequency", "text", lambda c: "Usage-Based"),
    Column("ChargeDescription", "text", _description),
    Column("PricingCategory", "text", lambda c: "Standard"),
    Column("PricingQuantity", "decimal", lambda c: c.quantity),
    Column("PricingUnit", "text", lambda c: c.unit),
    Column("ConsumedQuantity", "decimal", lambda c: c.quantity),
    Column("ConsumedUnit", "text", lambda c: c.unit),
    Column("ListUnitPrice", "decimal", lambda c: c.unit_price),
    Column("ContractedUnitPrice", "decimal", lambda c: c.unit_price),
    Column("ProviderName", "text", lambda c: "gpuledger"),
    Column("PublisherName", "text", lambda c: "gpuledger"),
    Column("InvoiceIssuerName", "text", lambda c: "gpuledger"),
    Column("ServiceName", "text", lambda c: "GPU compute"),
    Column("ServiceCategory", "text", lambda c: "AI and Machine Learning"),
    Column("SubAccountId", "text", lambda c: c.line["tenant"]),
    Column("SubAccountName", "text", lambda c: c.line["tenant"]),
    Column("ResourceType", "text", lambda c: "MIG slice" if c.line["profile"] else "GPU"),
    Column("SkuId", "text", _sku),
    Column("SkuPriceId", "text", lambda c: c.price.entry_id),
    Column("x_UsedGpuHours", "decimal", _gpu_only(lambda c: _hours(c.line["busy_seconds"]))),
    Column("x_AllocatedIdleGpuHours", "decimal", _gpu_only(lambda c: _hours(c.line["idle_seconds"]))),
    Column("x_UnmeasuredGpuHours", "decimal", _gpu_only(lambda c: _hours(c.line["unmeasured_seconds"]))),
    Column("x_UnallocatedGpuHours", "decimal", _gpu_only(lambda c: _hours(c.line["unallocated_seconds"]))),
    Column("x_EnergyKwh", "decimal", _gpu_only(lambda c: None if c.line["energy_j"] is None
                                               else (Decimal(c.line["energy_j"]) / cb.J_PER_KWH).quantize(HOURS))),
    Column("x_GpuModel", "text", lambda c: c.line["model"]),
    Column("x_MigProfile", "text", lambda c: c.line["profile"]),
    Column("x_Coverage", "decimal", _gpu_only(_coverage)),
    Column("x_DefaultPrice", "text", lambda c: "true" if c.price.is_default else "false"),
    Column("x_ChargeType", "text", lambda c: "unallocated" if c.line["line_kind"] == "unallocated"
           else ("energy" if c.unit == "kWh" else "usage")),
)


def charges(ledger: pl.LazyFrame, book: PriceBook, month: str) -> tuple[list[Charge], cb.Totals]:
    """The month's charges in file order, and totals checked to reconcile."""
    period = cb.month_bounds(month)
    lines, pool_map = cb.chargeback_lines(cb.in_period(ledger, *period), book)
    totals = cb.monthly_totals(lines, pool_map, book.currency)
    out: list[Charge] = []
    for line in lines.iter_rows(named=True):
        price = pool_map[(line["model"], line["entry_id"])].price
        start = max(period[0], _midnight(price.effective_from) or period[0])
        end = min(period[1], _midnight(price.effective_until) or period[1])
        hours = _hours(line["gpu_seconds"])
        assert hours is not None
        out.append(Charge(line, price, "GPU-Hours", hours, price.per_gpu_hour, line["capacity_cost"],
                          period, (start, end)))
        if line["energy_cost"] is not None and price.energy_per_kwh is not None:
            kwh = (Decimal(line["energy_j"]) / cb.J_PER_KWH).quantize(HOURS)
            out.append(Charge(line, price, "kWh", kwh, price.energy_per_kwh, line["energy_cost"],
                              period, (start, end)))
    out.sort(key=_order)
    return out, totals


def _order(c: Charge) -> tuple[Any, ...]:
    line = c.line
    return (line["line_kind"] == "unallocated", line["tenant"], line["model"], line["profile"] or "",
            c.charge_period[0], line["entry_id"], c.unit)


def _midnight(day: Any) -> datetime | None:
    return None if day is None else datetime(day.year, day.month, day.day, tzinfo=UTC)


def sanitize_cell(text: str) -> str:
    """Neutralise spreadsheet formula injection (OWASP CSV injection)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _format(column: Column, charge: Charge) -> str:
    value = column.value(charge)
    if value is None:
        return ""
    if column.kind == "datetime":
        assert isinstance(value, datetime)
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if column.kind == "decimal":
        return format(Decimal(value), "f")
    return sanitize_cell(str(value))


def write_csv(rows: Iterable[Charge], out: Writable, columns: tuple[Column, ...] = COLUMNS) -> int:
    """Write the header and one line per charge to a text stream; returns rows written."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([c.name for c in columns])
    n = 0
    for charge in rows:
        writer.writerow([_format(col, charge) for col in columns])
        n += 1
    return n


def focus_csv(ledger: pl.LazyFrame, book: PriceBook, month: str) -> tuple[str, cb.Totals]:
    """The month's chargeback file as text (encode as UTF-8), and its checked totals."""
    rows, totals = charges(ledger, book, month)
    buf = io.StringIO()
    write_csv(rows, buf)
    return buf.getvalue(), totals
