"""Who pays for idle in the chargeback file: the three idle policies, hand-computed, and closed months."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from gpuledger.analytics import closing
from gpuledger.analytics import kinds as K
from gpuledger.analytics.focus import ExportContext, focus_csv
from gpuledger.analytics.policy import apply_idle_policy_to_rows
from gpuledger.analytics.prices import default_price_book
from gpuledger.analytics.reconcile import reconcile
from gpuledger.store import Store
from tests.support.chargeback_rows import HOUR_NS, SCHEMA, T0, ledger, parse, row


def hour(start_ns: int = T0, seq: int = 0) -> list[dict[str, Any]]:
    """policy.py's worked example: one H100 hour (2.99/h) -- vision busy 0.60 h, nlp busy 0.20 h,
    each 0.05 h allocated idle, 0.10 h unallocated."""
    kw = {"start_ns": start_ns, "seq": seq}
    return [row("vision", K.BUSY, 2160, **kw), row("nlp", K.BUSY, 720, **kw),
            row("vision", K.ALLOCATED_IDLE, 180, **kw), row("nlp", K.ALLOCATED_IDLE, 180, **kw),
            row("", K.UNALLOCATED, 360, **kw)]


def by_tenant(policy: str) -> tuple[dict[str, Decimal], list[dict[str, str]]]:
    text, totals = focus_csv(ledger(hour()), default_price_book(), "2025-03",
                             ExportContext(idle_policy=policy))  # type: ignore[arg-type]
    out = parse(text)
    costs: dict[str, Decimal] = defaultdict(Decimal)
    for r in out:
        costs[r["SubAccountId"]] += Decimal(r["BilledCost"])
    assert sum(costs.values()) == totals.fleet_cost == Decimal("2.99")  # the pool never changes
    assert {r["x_IdlePolicy"] for r in out} == {policy}
    return dict(costs), out


def test_holder_keeps_idle_with_the_holder_and_unallocated_on_platform() -> None:
    # vision 0.65 h x 2.99 = 1.9435, nlp 0.25 h = 0.7475, platform 0.10 h = 0.299 -> largest remainder
    assert by_tenant("holder")[0] == {"vision": Decimal("1.94"), "nlp": Decimal("0.75"), "platform": Decimal("0.30")}


def test_share_unallocated_spreads_the_platforms_hour_over_the_tenants() -> None:
    # vision gets 0.10 x 0.65/0.90 h more, nlp 0.10 x 0.25/0.90 h: rows 1.9435 + 0.21594 and 0.7475 + 0.08306
    costs, rows = by_tenant("share_unallocated")
    assert costs == {"vision": Decimal("2.16"), "nlp": Decimal("0.83")}
    shares = {r["SubAccountId"]: r for r in rows if r["x_ChargeType"] == "unallocated"}
    assert {t: r["x_UnallocatedGpuHours"] for t, r in shares.items()} == {"vision": "0.072222", "nlp": "0.027778"}
    assert shares["nlp"]["ChargeDescription"].startswith(
        "Share of unallocated GPU capacity (idle, held by no tenant) charged to tenant nlp")


def test_platform_policy_bills_tenants_for_what_ran_only() -> None:
    # vision 0.60 h = 1.794, nlp 0.20 h = 0.598, platform 0.10 h idle + 0.10 h unallocated = 0.299 + 0.299
    costs, rows = by_tenant("platform")
    assert costs == {"vision": Decimal("1.79"), "nlp": Decimal("0.60"), "platform": Decimal("0.60")}
    idle = [r for r in rows if r["SubAccountId"] == "platform" and r["x_ChargeType"] == "usage"]
    assert [r["x_AllocatedIdleGpuHours"] for r in idle] == ["0.100000"]


def test_row_policy_keeps_every_gpu_intervals_seconds() -> None:
    rows = ledger(hour() + hour(T0 + HOUR_NS, 1))
    for policy in ("holder", "share_unallocated", "platform"):
        got = apply_idle_policy_to_rows(rows, policy).group_by("seq").agg(pl.col("gpu_seconds").sum()).collect()
        assert sorted(got["gpu_seconds"].round(6).to_list()) == [3600.0, 3600.0]
    with pytest.raises(ValueError, match="unknown idle policy 'nobody'"):
        apply_idle_policy_to_rows(rows, "nobody")  # type: ignore[arg-type]


def test_a_month_closed_under_one_policy_is_corrected_and_reconciled_under_it(tmp_path: Path) -> None:
    # March closed under share_unallocated; April exported under holder: March is unchanged, so no correction.
    april = T0 + 31 * 24 * HOUR_NS
    with Store(tmp_path / "p.duckdb") as store:
        store.append("ledger", pl.DataFrame(hour() + hour(april, 1), schema=SCHEMA))
        shared = ExportContext(idle_policy="share_unallocated")
        march = closing.export(store, "2025-03", default_price_book(), final=True, context=shared,
                               now=datetime(2025, 4, 2, tzinfo=UTC))
        assert {r["x_IdlePolicy"] for r in parse(march.content.decode())} == {"share_unallocated"}
        later = closing.export(store, "2025-04", default_price_book(), context=ExportContext(),
                               now=datetime(2025, 4, 20, tzinfo=UTC))
        assert [c for c in later.rows if c.charge_class] == []
        report = reconcile(store, "2025-03", default_price_book(), ExportContext(), now=datetime(2025, 4, 20, tzinfo=UTC))
        assert report.ok, report.problems
