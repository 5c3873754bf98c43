"""`gpuledger demo --no-serve --out DIR`: the newcomer's first run."""

from __future__ import annotations

import subprocess
import sys
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import polars as pl
import pytest

from gpuledger.analytics.prices import default_price_book
from gpuledger.store import Store

pytestmark = pytest.mark.slow  # the whole demo: a simulated day of 32 GPUs through every stage


def test_demo_writes_outputs_and_its_csv_totals_fleet_capacity_times_price(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "gpuledger.cli", "demo", "--no-serve", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "chargeback" in run.stdout
    assert "tenancy rules demo-1: each namespace is its team's tenant (team-vision -> vision" in run.stdout
    csv = out / "chargeback-2026-10.csv"
    assert csv.exists() and (out / "gpuledger.duckdb").exists()

    frame = pl.read_csv(csv, infer_schema=False)
    billed = sum(Decimal(v) for v in frame["BilledCost"])
    # Capacity from the raw device rows, independent of the ledger: every physical
    # GPU's interval lengths (exact integer ns) x the price of its model.
    with Store(out / "gpuledger.duckdb", read_only=True) as store:
        cap = store.query(
            "SELECT model, sum(interval_end_ns - interval_start_ns)::HUGEINT AS ns FROM devices "
            "WHERE mig_index = -1 GROUP BY model"
        )
        hours = store.scalar("SELECT (max(interval_end_ns) - min(interval_start_ns)) / 3.6e12 FROM messages")
        tenants = set(store.query("SELECT DISTINCT tenant FROM ledger")["tenant"])
    # One tenant per team: pods without the team label no longer fall back to their namespace.
    assert tenants - {"platform", "unattributed"} == {"vision", "nlp", "search", "ads", "research"}
    book = default_price_book()
    expected = Decimal(0)
    for model, ns in zip(cap["model"], cap["ns"]):
        price = book.price_for(model, None, __import__("datetime").date(2026, 10, 1)).per_gpu_hour
        expected += (Decimal(int(ns)) / Decimal(3_600 * 10**9) * price).quantize(Decimal("0.01"), ROUND_HALF_EVEN)
    assert billed == expected
    assert hours == 24.0
    assert cap["ns"].sum() == 32 * 24 * 3600 * 10**9  # 32 GPUs, one day, no gap or overlap
