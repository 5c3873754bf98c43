"""Month close and corrections: a closed month's file never changes; late changes are billed later.

The process (docs/chargeback.md):

1. ``export(..., final=True)`` of a month that has ended *closes* it: the CSV
   and Parquet files are stored byte for byte in ``chargeback_closes`` with
   their SHA-256 and the inputs (price book digest, ledger row count and
   GPU-seconds, settings), and every row's key and amounts go to
   ``chargeback_billed``. Re-exporting a closed month returns the stored
   bytes, whatever the ledger says now.
2. Usage that arrives after the close (a spool replayed late) or a corrected
   tenancy rule (``gpuledger attribute --full``) changes the ledger of the
   closed month ``M``. The export of any later month ``N`` that is still open
   recomputes ``M`` and adds, per row key (charge period, tenant, model, MIG
   profile, kind, price entry, unit), the difference between what ``M`` costs
   now and what was billed for it so far (the close plus corrections in months
   closed since) as ``ChargeClass = Correction`` rows whose ChargePeriod is
   ``M``'s. Closing ``N`` records them, so each difference is billed once.
3. Invariant after every close: for each closed month, the rows that refer to
   it across all closed files sum to its current cost, to the cent.

The tables are in :mod:`gpuledger.store.schema` (every writable open has
them); a read-only open of a file older than them simply has no closed months.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import polars as pl

from gpuledger import __version__
from gpuledger.analytics import chargeback as cb
from gpuledger.analytics.focus import (
    CORRECTION,
    METRICS,
    Charge,
    ExportContext,
    charges,
    csv_bytes,
    order,
    parquet_bytes,
)
from gpuledger.analytics.prices import Price, PriceBook
from gpuledger.errors import GpuledgerError
from gpuledger.store import Store
from gpuledger.timeutil import iso_utc, month_bounds, parse_iso_utc, to_ns

__all__ = [
    "CloseRecord",
    "ExportError",
    "ExportResult",
    "Format",
    "closed_months",
    "corrections",
    "export",
    "months_to_close",
    "resolve_month",
]

Format = Literal["csv", "parquet"]
FORMATS = ("csv", "parquet")

_KEY_COLS = ("charge_start", "tenant", "model", "profile", "line_kind", "entry_id", "unit", "cluster")


class ExportError(GpuledgerError):
    """An export or close that cannot be done as asked."""


@dataclass(frozen=True)
class CloseRecord:
    month: str
    closed_at: datetime
    charge_period: str
    currency: str
    fleet_cost: Decimal
    regular_total: Decimal
    corrections_total: Decimal
    billed_total: Decimal
    n_rows: int
    csv_sha256: str
    parquet_sha256: str
    inputs: dict[str, Any]


@dataclass
class ExportResult:
    """One month's file and what is known about it."""

    month: str
    format: str
    content: bytes
    closed: bool  # True: the stored bytes of a closed month
    rows: list[Charge] = field(default_factory=list)  # empty for a stored (closed) file
    totals: cb.Totals | None = None  # the month's own fleet cost (None for a stored file)
    corrections: dict[str, Decimal] = field(default_factory=dict)  # corrected month -> Σ correction rows
    expected_corrections: dict[str, Decimal] = field(default_factory=dict)  # cost now − billed so far
    record: CloseRecord | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # both formats when computed (not for a stored file)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def resolve_month(month: str, now: datetime | None = None) -> str:
    """``YYYY-MM`` as given, or ``previous`` / ``current`` relative to ``now`` (UTC)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if month == "current":
        return f"{now.year:04d}-{now.month:02d}"
    if month == "previous":
        y, m = (now.year, now.month - 1) if now.month > 1 else (now.year - 1, 12)
        return f"{y:04d}-{m:02d}"
    month_bounds(month)  # ValueError when malformed
    return month


# --- reading the close tables ---------------------------------------------------


def _has_tables(store: Store) -> bool:
    return store.has_table("chargeback_closes")


def closed_months(store: Store) -> dict[str, CloseRecord]:
    """Every closed month's record (without the file bytes), by month."""
    if not _has_tables(store):
        return {}
    frame = store.query("SELECT * EXCLUDE (csv, parquet) FROM chargeback_closes ORDER BY month")
    out = {}
    for r in frame.iter_rows(named=True):
        out[r["month"]] = CloseRecord(
            r["month"], r["closed_at"], r["charge_period"], r["currency"], Decimal(r["fleet_cost"]),
            Decimal(r["regular_total"]), Decimal(r["corrections_total"]), Decimal(r["billed_total"]), r["n_rows"],
            r["csv_sha256"], r["parquet_sha256"], json.loads(r["inputs"]))
    return out


def stored_file(store: Store, month: str, fmt: Format) -> bytes:
    frame = store.query(f"SELECT {fmt} AS content FROM chargeback_closes WHERE month = ?", [month])
    if frame.is_empty():
        raise ExportError(f"month {month} is not closed")
    return bytes(frame["content"][0])


def retired_months(store: Store) -> set[str]:
    """Months whose interval-grain ledger retention removed (closed before, by its rule)."""
    if not store.has_table("ledger_retired"):
        return set()
    return set(store.query("SELECT month FROM ledger_retired")["month"].to_list())


def _billed(store: Store, usage_month: str) -> dict[tuple[str, ...], dict[str, Any]]:
    """What closed files billed for ``usage_month`` so far, summed per row key."""
    if not _has_tables(store):
        return {}
    frame = store.query("SELECT * FROM chargeback_billed WHERE usage_month = ? "
                        "ORDER BY billing_month, charge_class NULLS FIRST", [usage_month])
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in frame.iter_rows(named=True):
        key = tuple(r[c] for c in _KEY_COLS)
        acc = out.setdefault(key, {"cost": Decimal(0), "quantity": Decimal(0), **{m: None for m in METRICS},
                                   "charge_end": r["charge_end"], "unit_price": Decimal(r["unit_price"]),
                                   "is_default": r["is_default"], "sharing": r["sharing"]})
        acc["cost"] += Decimal(r["cost"])
        acc["quantity"] += Decimal(r["quantity"])
        for m in METRICS:
            if r[m] is not None:
                acc[m] = (acc[m] or Decimal(0)) + Decimal(r[m])
    return out


# --- corrections ------------------------------------------------------------------


def corrections(store: Store, month: str, book: PriceBook, context: ExportContext,
                closed: dict[str, CloseRecord]) -> tuple[list[Charge], dict[str, Decimal]]:
    """Correction rows for the export of open ``month``; and per corrected month, cost now − billed so far."""
    period = month_bounds(month)
    out: list[Charge] = []
    expected: dict[str, Decimal] = {}
    retired = retired_months(store)
    for m, record in sorted(closed.items()):
        if m >= month or m in retired:  # a retired month's ledger is gone (gpuledger/ingest/retention.py): its bill is final
            continue
        ctx_m = context.as_closed(record.charge_period, record.inputs)  # recomputed as it was closed
        start, end = month_bounds(m)
        now_rows, totals = charges(store, book, m, ctx_m)
        billed = _billed(store, m)
        expected[m] = totals.fleet_cost - sum((b["cost"] for b in billed.values()), Decimal(0))
        current = {c.key: c for c in now_rows}
        for key in sorted(set(current) | set(billed)):
            fix = _difference(key, current.get(key), billed.get(key), book, period, m, context)
            if fix is not None:
                out.append(fix)
    out.sort(key=order)
    return out, expected


def _difference(key: tuple[str, ...], now: Charge | None, was: dict[str, Any] | None, book: PriceBook,
                period: tuple[datetime, datetime], corrects: str, context: ExportContext) -> Charge | None:
    zero: dict[str, Any] = {"cost": Decimal(0), "quantity": Decimal(0), **{m: None for m in METRICS}}
    was = was or zero
    cost = (now.cost if now else Decimal(0)) - was["cost"]
    quantity = (now.quantity if now else Decimal(0)) - was["quantity"]
    metrics: dict[str, Decimal | None] = {}
    for m in METRICS:
        new = now.metrics.get(m) if now else None
        metrics[m] = None if new is None and was[m] is None else (new or Decimal(0)) - (was[m] or Decimal(0))
    if cost == 0 and quantity == 0 and not any(metrics.values()):
        return None
    charge_start, tenant, model, profile, line_kind, entry_id, unit, cluster = key
    if now is not None:
        price, unit_price, charge_period, sharing = now.price, now.unit_price, now.charge_period, now.sharing
    else:
        assert was is not zero
        unit_price = was["unit_price"]
        price = Price(unit_price, book.currency, entry_id, bool(was["is_default"]))
        charge_period = (parse_iso_utc(charge_start), parse_iso_utc(was["charge_end"]))
        sharing = was["sharing"]
    return Charge(tenant=tenant, cluster=cluster, model=model, profile=profile or None, line_kind=line_kind, price=price,
                  unit=unit, quantity=quantity, unit_price=unit_price, cost=cost,  # type: ignore[arg-type]
                  period=period, charge_period=charge_period, metrics={**metrics, "coverage": None},
                  sharing=sharing, charge_class=CORRECTION, corrects=corrects, context=context)


# --- export and close ---------------------------------------------------------------


def export(store: Store, month: str, book: PriceBook, *, fmt: Format = "csv", final: bool = False,
           context: ExportContext | None = None, now: datetime | None = None) -> ExportResult:
    """The month's FOCUS file: stored bytes when closed; else computed (and closed with ``final``).

    Raises ExportError for a month that has not ended (with ``final``), a
    format that does not exist, or a charge period other than the closed file's.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    ctx = context or ExportContext()
    closed = closed_months(store)
    if month in closed:
        record = closed[month]
        if record.charge_period != ctx.charge_period:
            raise ExportError(f"month {month} was closed with charge period {record.charge_period!r}, "
                              f"not {ctx.charge_period!r}",
                              hint=f"a closed file never changes: export it with --charge-period {record.charge_period}")
        return ExportResult(month, fmt, stored_file(store, month, fmt), True, record=record)
    start, end = month_bounds(month)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if final and now < end:
        raise ExportError(f"month {month} has not ended (it ends {end:%Y-%m-%dT%H:%M:%SZ}); it cannot be closed yet",
                          hint="export without --final for a preview; close it after the month ends")
    regular, totals = charges(store, book, month, ctx)
    fixes, expected = corrections(store, month, book, ctx, closed)
    rows = regular + fixes
    got = {m: sum((c.cost for c in fixes if c.corrects == m), Decimal(0)) for m in expected}
    if got != expected:  # by construction; a failure here is a bug, so fail loudly
        raise cb.ReconciliationError(f"corrections {got} differ from cost now minus billed {expected}")
    content = {"csv": csv_bytes(rows), "parquet": parquet_bytes(rows, book.quantum)}
    result = ExportResult(month, fmt, content[fmt], False, rows, totals, got, expected, files=content)
    if final:
        result.record = _close(store, month, book, ctx, rows, totals, content, now)
        result.closed = True
    return result


def _close(store: Store, month: str, book: PriceBook, ctx: ExportContext, rows: list[Charge], totals: cb.Totals,
           content: dict[str, bytes], now: datetime) -> CloseRecord:
    if store.read_only:
        raise ExportError(f"closing {month} writes to the database, which is open read-only",
                          hint="run `gpuledger export ... --final` where it can open the file for writing "
                          "(stop the writer, as for `gpuledger attribute`)")
    regular = sum((c.cost for c in rows if c.charge_class is None), Decimal(0))
    fixes = sum((c.cost for c in rows if c.charge_class is not None), Decimal(0))
    inputs = _inputs(store, month, book, ctx)
    record = CloseRecord(month, now, ctx.charge_period, book.currency, totals.fleet_cost, regular, fixes,
                         regular + fixes, len(rows), hashlib.sha256(content["csv"]).hexdigest(),
                         hashlib.sha256(content["parquet"]).hexdigest(), inputs)
    with store.transaction() as tx:
        tx.execute("INSERT INTO chargeback_closes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            month, now, ctx.charge_period, book.currency, str(totals.fleet_cost), str(regular), str(fixes),
            str(regular + fixes), len(rows), content["csv"], record.csv_sha256, content["parquet"],
            record.parquet_sha256, json.dumps(inputs, sort_keys=True)])
        tx.append("chargeback_billed", _billed_frame(month, rows))
    return record


def _billed_frame(month: str, rows: list[Charge]) -> pl.DataFrame:
    text = pl.String
    records = [{
        "billing_month": month, "usage_month": c.corrects or month, "charge_class": c.charge_class,
        "charge_start": c.key[0], "charge_end": iso_utc(c.charge_period[1]), "tenant": c.tenant, "model": c.model,
        "profile": c.profile or "", "line_kind": c.line_kind, "entry_id": c.price.entry_id, "unit": c.unit,
        "unit_price": str(c.unit_price), "is_default": c.price.is_default, "sharing": c.sharing,
        "cost": str(c.cost), "quantity": str(c.quantity),
        **{m: None if c.metrics.get(m) is None else str(c.metrics[m]) for m in METRICS}, "cluster": c.cluster,
    } for c in rows]
    schema = {k: (pl.Boolean if k == "is_default" else text) for k in _BILLED_COLUMNS}
    return pl.DataFrame(records, schema=schema)


_BILLED_COLUMNS = ("billing_month", "usage_month", "charge_class", "charge_start", "charge_end", "tenant", "model",
                   "profile", "line_kind", "entry_id", "unit", "unit_price", "is_default", "sharing", "cost",
                   "quantity", *METRICS, "cluster")


def _inputs(store: Store, month: str, book: PriceBook, ctx: ExportContext) -> dict[str, Any]:
    """What the closed file was computed from, to explain a later correction."""
    start, end = month_bounds(month)
    stats = store.query(f"SELECT sum(intervals) AS n, sum(gpu_ps)::DOUBLE / 1e12 AS s, count(*) AS r "
                        f"FROM ({cb.hour_rows_sql(store)})", {"lo": to_ns(start), "hi": to_ns(end)})
    entries = [[e.entry_id, e.model, e.profile, str(e.per_gpu_hour), e.effective_from.isoformat(),
                None if e.energy_per_kwh is None else str(e.energy_per_kwh)] for e in book.entries]
    digest = hashlib.sha256(json.dumps([book.currency, str(book.quantum), entries]).encode()).hexdigest()
    return {"gpuledger_version": __version__, "price_book": book.source, "price_book_sha256": digest,
            "ledger_rows": int(stats["n"][0] or 0), "rollup_rows": int(stats["r"][0]),
            "ledger_gpu_seconds": float(stats["s"][0] or 0.0), "context": dict(ctx.__dict__)}


# --- scheduling ---------------------------------------------------------------------


def months_to_close(store: Store, now: datetime, grace_hours: float = 6.0) -> list[str]:
    """Months with attributed usage, ended at least ``grace_hours`` before ``now``, not closed yet (oldest first)."""
    hours = ("SELECT hour_start_ns AS t FROM ledger_hourly UNION SELECT hour_start_ns FROM ledger_hourly_pending"
             if store.has_table("ledger_hourly_pending") else "SELECT interval_start_ns AS t FROM ledger")
    frame = store.query(f"SELECT DISTINCT strftime(make_timestamp(t // 1000), '%Y-%m') AS month FROM ({hours}) "
                        "ORDER BY month")
    closed = closed_months(store)
    out = []
    for month in frame["month"].to_list() if frame.height else []:
        end = month_bounds(month)[1]
        if month not in closed and (now - end).total_seconds() >= grace_hours * 3600:
            out.append(month)
    return out


def parse_csv(content: bytes) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a chargeback CSV, as a consumer reads them."""
    reader = csv.DictReader(io.StringIO(content.decode("utf-8"), newline=""))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def money_sum(values: Iterable[str]) -> Decimal:
    return sum((Decimal(v) for v in values if v), Decimal(0))
