"""Golden files: a fixed simulated fleet across a month end, closed, then corrected by a late spool;
and the export property over random simulated fleets.

One node of 8 simulated H100s (exclusive, time-sliced, fractional and MIG
GPUs; seed 3) runs from 2026-10-31T22:00Z for 4 hours at a 5-minute tick,
through the real agent sampler, the store and the attribution job. Six
October messages are held back (an agent spool replayed late). October is
closed without them; they arrive; November's file then carries correction
rows for October. Both files are compared byte for byte with the reviewed
files in tests/golden/. After a deliberate change, regenerate them with
``GPULEDGER_UPDATE_GOLDEN=1 pytest tests/analytics/test_chargeback_golden.py``
and review the diff.
"""

from __future__ import annotations

import datetime as dt
import os
from datetime import date
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuledger.agent.sampler import Sampler
from gpuledger.analytics import closing
from gpuledger.analytics.focus import ExportContext
from gpuledger.analytics.focus_rules import check_rows
from gpuledger.analytics.job import run_attribution
from gpuledger.analytics.money import quantize_fraction
from gpuledger.analytics.prices import default_price_book, parse_price_book
from gpuledger.analytics.reconcile import reconcile
from gpuledger.sim.fleetsim import demo_fleet
from gpuledger.store import Store
from gpuledger.timeutil import HOUR_NS
from tests.support.chargeback_rows import parse

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
START = dt.datetime(2026, 10, 31, 22, tzinfo=dt.UTC)
#: Fixed here, not the shipped book, so a change of default prices does not move the golden files.
BOOK = parse_price_book("""currency = "USD"
energy_per_kwh = "0.20"
[[price]]
id = "h100"
model = "*H100*"
per_gpu_hour = "3.00"
effective_from = 2026-01-01
[[price]]
id = "h100-1g"
model = "*H100*"
profile = "1g.10gb"
per_gpu_hour = "3.50"
effective_from = 2026-01-01
""", source="golden")


def simulated(store: Store) -> list:  # type: ignore[type-arg]
    """Ingest and attribute the fleet's 4 hours except six October messages; return those."""
    fleet = demo_fleet(n_nodes=1, gpus_per_node=8, seed=3, horizon_s=4 * 3600,
                       start_us=int(START.timestamp() * 1e6))
    sampler = Sampler(fleet.nodes[0], fleet.nodes[0], node=fleet.nodes[0].spec.name, boot_id="golden")
    sampler.tick()
    messages = []
    for _ in range(48):
        fleet.advance(300)
        msg = sampler.tick()
        assert msg is not None
        messages.append(msg)
    late = messages[10:16]  # 22:50-23:20 on October 31
    store.write_messages([m for m in messages if m not in late])
    run_attribution(store)
    return late


def compare(name: str, content: bytes) -> None:
    path = GOLDEN / name
    if os.environ.get("GPULEDGER_UPDATE_GOLDEN") == "1":
        path.write_bytes(content)
    assert path.exists(), f"missing {path}; run with GPULEDGER_UPDATE_GOLDEN=1 and review it"
    expected = path.read_bytes()
    if content != expected:
        got, want = content.decode().splitlines(), expected.decode().splitlines()
        diff = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        pytest.fail(f"{name} differs from the golden file at line {diff + 1}:\n got  {got[diff:diff + 1]}\n"
                    f" want {want[diff:diff + 1]}\n(regenerate with GPULEDGER_UPDATE_GOLDEN=1 if intended)")


def test_golden_month_close_and_correction(tmp_path: Path) -> None:
    with Store(tmp_path / "golden.duckdb") as store:
        late = simulated(store)
        october = closing.export(store, "2026-10", BOOK, final=True, now=dt.datetime(2026, 11, 2, tzinfo=dt.UTC))
        compare("chargeback-2026-10.csv", october.content)
        store.write_messages(late)  # the spool replays
        run_attribution(store)
        november = closing.export(store, "2026-11", BOOK, now=dt.datetime(2026, 12, 2, tzinfo=dt.UTC))
        compare("chargeback-2026-11.csv", november.content)
        assert closing.export(store, "2026-10", BOOK).content == october.content  # the closed file holds
        rows = parse(november.content.decode())
        assert check_rows(rows, list(rows[0]), BOOK.quantum) == []
        fixes = sum(Decimal(r["BilledCost"]) for r in rows if r["ChargeClass"] == "Correction")
        # 6 late 5-minute intervals of 8 H100s at 3.00/GPU-hour = 12.00 of capacity, plus measured energy.
        assert Decimal("12.00") <= fixes == november.expected_corrections["2026-10"]
        for month in ("2026-10", "2026-11"):
            report = reconcile(store, month, BOOK, now=dt.datetime(2026, 12, 2, tzinfo=dt.UTC))
            assert report.ok, report.problems
        assert reconcile(store, "2026-10", BOOK).drift == fixes  # billed by November once it closes


# --- the property over simulated fleets: whatever the fleet, the file bills exactly its capacity ---

@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), gpus=st.integers(1, 8), ticks=st.integers(2, 8),
       tick_s=st.sampled_from([30.0, 120.0, 600.0]), period=st.sampled_from(["month", "day"]))
def test_simulated_fleets_bill_exactly_their_capacity_cost(seed: int, gpus: int, ticks: int, tick_s: float,
                                                           period: str) -> None:
    book = default_price_book()
    fleet = demo_fleet(n_nodes=1, gpus_per_node=gpus, seed=seed, horizon_s=ticks * tick_s,
                       start_us=int(START.timestamp() * 1e6))
    sampler = Sampler(fleet.nodes[0], fleet.nodes[0], node="n0", boot_id="p")
    sampler.tick()
    messages = []
    for _ in range(ticks):
        fleet.advance(tick_s)
        messages.append(sampler.tick())
    with Store() as store:
        store.write_messages([m for m in messages if m is not None])
        run_attribution(store)
        capacity = store.query("SELECT model, strftime(make_timestamp(interval_start_ns // 1000), '%Y-%m') AS month, "
                               "sum(interval_end_ns - interval_start_ns)::HUGEINT AS ns FROM devices "
                               "WHERE mig_index = -1 GROUP BY ALL")
        for month in ("2026-10", "2026-11"):
            result = closing.export(store, month, book, context=ExportContext(charge_period=period))
            rows = parse(result.content.decode())
            expected = sum((quantize_fraction(Fraction(int(ns), HOUR_NS)
                                              * Fraction(book.price_for(model, None, date(2026, 10, 31)).per_gpu_hour))
                            for model, m, ns in capacity.iter_rows() if m == month), Decimal(0))
            assert sum((Decimal(r["BilledCost"]) for r in rows), Decimal(0)) == expected
            assert not rows or check_rows(rows, list(rows[0]), book.quantum) == []
