"""The monthly reconciliation report: does the month's file add up? Fails loudly when not.

For one month it states the fleet's capacity cost, what the file bills
(regular rows and corrections per corrected month), the unallocated share,
per-tenant totals and coverage, and runs checks; :attr:`Reconciliation.ok`
is False (and the CLI exits 1, the API answers 500) when any check fails:

- the file's regular rows sum to the fleet cost of the month, to the cent;
- each correction total equals that closed month's cost now minus what was
  billed for it so far;
- per-tenant totals sum to the file total;
- the regular GPU-Hours quantities add up to the fleet's capacity GPU-hours
  (within the 6-decimal rounding of each row);
- every row satisfies the FOCUS rules of :mod:`~gpuledger.analytics.focus_rules`;
- a closed month: the stored CSV and Parquet match their SHA-256, and both
  files have the same rows and total as the close record.

For a closed month it also reports the *drift*: what the month would cost now
minus what was billed for it, which the next open month's corrections bill.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pyarrow.parquet as pq

from gpuledger.analytics import chargeback as cb
from gpuledger.analytics import closing
from gpuledger.analytics.focus import ExportContext, charges
from gpuledger.analytics.focus_rules import check_rows
from gpuledger.analytics.prices import PriceBook
from gpuledger.store import Store
from gpuledger.timeutil import month_bounds, to_ns

__all__ = ["Check", "Reconciliation", "reconcile"]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Reconciliation:
    month: str
    currency: str
    closed: bool
    fleet_cost: Decimal  # capacity + energy cost of the month, recomputed from the ledger now (retired: as closed)
    capacity_gpu_hours: Decimal
    regular_total: Decimal  # Σ BilledCost of the month's own rows in the file
    corrections: dict[str, Decimal]  # corrected month -> Σ BilledCost of its correction rows
    billed_total: Decimal  # Σ BilledCost of the file
    unallocated_cost: Decimal
    tenants: list[dict[str, Any]]
    coverage: float | None  # share of busy GPU-seconds attributed from per-process samples
    drift: Decimal | None  # closed month: cost now − billed for it so far (billed by the next open month)
    checks: list[Check] = field(default_factory=list)
    sha256: str = ""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def problems(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]

    @property
    def unallocated_share(self) -> float | None:
        return None if not self.regular_total else float(self.unallocated_cost / self.regular_total)

    def to_dict(self) -> dict[str, Any]:
        return {
            "month": self.month, "currency": self.currency, "closed": self.closed, "ok": self.ok,
            "fleet_cost": str(self.fleet_cost), "capacity_gpu_hours": str(self.capacity_gpu_hours),
            "regular_total": str(self.regular_total),
            "corrections": {m: str(v) for m, v in self.corrections.items()},
            "billed_total": str(self.billed_total), "unallocated_cost": str(self.unallocated_cost),
            "unallocated_share": None if self.unallocated_share is None else round(self.unallocated_share, 6),
            "coverage": None if self.coverage is None else round(self.coverage, 6),
            "drift_since_close": None if self.drift is None else str(self.drift), "sha256": self.sha256,
            "tenants": [{k: str(v) if isinstance(v, Decimal) else v for k, v in t.items()} for t in self.tenants],
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }

    def text(self) -> str:
        """The report for a terminal; the last line says PASSED or FAILED."""
        cur = self.currency
        lines = [f"reconciliation {self.month} ({'closed' if self.closed else 'open'}), {cur}",
                 f"  fleet cost (now)      {self.fleet_cost}  ({self.capacity_gpu_hours} GPU-hours)",
                 f"  billed, regular rows  {self.regular_total}"]
        lines += [f"  corrections to {m}   {v}" for m, v in sorted(self.corrections.items())]
        lines += [f"  billed, file total    {self.billed_total}",
                  f"  unallocated           {self.unallocated_cost}"
                  + ("" if self.unallocated_share is None else f"  ({self.unallocated_share:.2%} of the month)"),
                  f"  coverage              {'-' if self.coverage is None else f'{self.coverage:.2%}'}"]
        if self.drift is not None:
            lines.append(f"  drift since close     {self.drift}  (billed as corrections by the next open month)")
        lines.append("  tenant                           GPU-hours        cost   corrections")
        lines += [f"  {t['tenant'][:30]:<30} {t['gpu_hours']:>11} {t['cost']:>11} {t['corrections']:>13}"
                  for t in self.tenants]
        lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        lines.append("RECONCILIATION PASSED" if self.ok else "RECONCILIATION FAILED: " + "; ".join(self.problems))
        return "\n".join(lines)


def reconcile(store: Store, month: str, book: PriceBook, context: ExportContext | None = None,
              now: datetime | None = None) -> Reconciliation:
    """The report for ``month``: the closed file when closed, else the file an export would write now."""
    ctx = context or ExportContext()
    record = closing.closed_months(store).get(month)
    if record is not None:
        ctx = ctx.as_closed(record.charge_period, record.inputs)
    start, end = month_bounds(month)
    result = closing.export(store, month, book, fmt="csv", context=ctx, now=now)
    if record is None:
        assert result.totals is not None
        totals, parquet = result.totals, result.files["parquet"]
    else:
        _, totals = charges(store, book, month, ctx)
        parquet = closing.stored_file(store, month, "parquet")
    rows = pq.read_table(io.BytesIO(parquet)).to_pylist()
    header, csv_rows = closing.parse_csv(result.content)
    checks: list[Check] = []

    regular = [r for r in rows if r["ChargeClass"] is None]
    regular_total = sum((r["BilledCost"] for r in regular), Decimal(0))
    fixes: dict[str, Decimal] = {}
    for r in rows:
        if r["ChargeClass"] is not None:
            fixes[r["x_CorrectedPeriod"]] = fixes.get(r["x_CorrectedPeriod"], Decimal(0)) + r["BilledCost"]
    billed_total = regular_total + sum(fixes.values(), Decimal(0))
    month_cost = record.fleet_cost if record else totals.fleet_cost
    checks.append(Check("regular rows = fleet cost", regular_total == month_cost,
                        f"{regular_total} billed vs {month_cost} fleet cost {'at close' if record else 'now'}"))
    if record is None:
        ok = all(fixes.get(m, Decimal(0)) == v for m, v in result.expected_corrections.items()) and \
            set(fixes) <= set(result.expected_corrections)
        checks.append(Check("corrections = cost now - billed", ok,
                            f"rows {_fmt(fixes)} vs expected {_fmt(result.expected_corrections)}"))
    else:
        got = sum(fixes.values(), Decimal(0))
        checks.append(Check("corrections = close record", got == record.corrections_total,
                            f"rows {got} vs recorded {record.corrections_total}"))
    tenants = _tenants(rows)
    tenant_sum = sum((t["cost"] + t["corrections"] for t in tenants), Decimal(0))
    checks.append(Check("tenants sum to the file total", tenant_sum == billed_total, f"{tenant_sum} vs {billed_total}"))
    hours = sum((r["PricingQuantity"] for r in regular if r["PricingUnit"] == "GPU-Hours"), Decimal(0))
    capacity = totals.capacity_gpu_hours
    tolerance = Fraction(len(regular) + 1, 2 * 10**6)
    if record is None:
        checks.append(Check("GPU-hours = capacity", abs(Fraction(hours) - capacity) <= tolerance,
                            f"{hours} in rows vs {float(capacity):.6f} capacity"))
    unbooked = store.scalar("SELECT count(*) FROM messages m ANTI JOIN attributed a USING (agent_id, boot_id, seq) "
                            "WHERE m.interval_start_ns >= ? AND m.interval_start_ns < ?", [to_ns(start), to_ns(end)])
    checks.append(Check("every stored message of the month is booked", not unbooked,
                        f"{unbooked} message(s) not attributed: run `gpuledger attribute` (a chunk that fails "
                        "names its messages)" if unbooked else "all attributed"))
    problems = check_rows(csv_rows, header, book.quantum)
    checks.append(Check("FOCUS column rules", not problems, "; ".join(problems) or f"{len(csv_rows)} rows pass"))
    if record is not None:
        csv_ok = hashlib.sha256(result.content).hexdigest() == record.csv_sha256
        pq_ok = hashlib.sha256(parquet).hexdigest() == record.parquet_sha256
        checks.append(Check("closed files match their SHA-256", csv_ok and pq_ok, f"csv {csv_ok}, parquet {pq_ok}"))
        csv_total = closing.money_sum(r["BilledCost"] for r in csv_rows)
        same = len(csv_rows) == len(rows) == record.n_rows and csv_total == billed_total == record.billed_total
        checks.append(Check("CSV, Parquet and close record agree", same,
                            f"{len(csv_rows)}/{len(rows)}/{record.n_rows} rows, "
                            f"{csv_total}/{billed_total}/{record.billed_total} billed"))
    retired = month in closing.retired_months(store)
    if retired:  # the interval ledger is gone: the month stands as closed and is never recomputed
        checks.append(Check("interval ledger retired", True, "figures as closed; a retired month is never "
                            "recomputed (no drift, no corrections); hourly rollups and the closed files remain"))
    drift = None
    if record is not None and not retired:
        billed_for_month = sum((b["cost"] for b in closing._billed(store, month).values()), Decimal(0))
        drift = totals.fleet_cost - billed_for_month
    unallocated = sum((r["BilledCost"] for r in regular if r["x_ChargeType"] == "unallocated"), Decimal(0))
    cov = store.query("SELECT sum(gpu_ps) FILTER (WHERE kind = 'busy') AS busy, sum(gpu_ps) FILTER "
                      f"(WHERE kind = 'busy' AND rule = 'process_samples') AS direct FROM ({cb.hour_rows_sql(store)})",
                      {"lo": to_ns(start), "hi": to_ns(end)})
    busy, direct = cov["busy"][0], cov["direct"][0]
    capacity_hours = hours if retired else Decimal(float(totals.capacity_gpu_hours)).quantize(Decimal("0.000001"))
    fleet_cost = record.fleet_cost if retired and record else totals.fleet_cost
    return Reconciliation(month, book.currency, record is not None, fleet_cost, capacity_hours, regular_total,
                          fixes, billed_total, unallocated, tenants,
                          None if not busy else int(direct or 0) / int(busy), drift, checks, result.sha256)


def _tenants(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        t = out.setdefault(r["SubAccountId"], {"tenant": r["SubAccountId"], "gpu_hours": Decimal(0),
                                               "cost": Decimal(0), "corrections": Decimal(0)})
        if r["ChargeClass"] is None:
            t["cost"] += r["BilledCost"]
            if r["PricingUnit"] == "GPU-Hours":
                t["gpu_hours"] += r["PricingQuantity"]
        else:
            t["corrections"] += r["BilledCost"]
    return [out[k] for k in sorted(out)]


def _fmt(amounts: dict[str, Decimal]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(amounts.items())) + "}"
