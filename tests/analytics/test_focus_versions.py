"""FOCUS 1.4 (default) and 1.2 files: the split cost allocation columns, and the 1.4 data model.

The 1.4 file is checked against the FOCUS 1.4 data model the FinOps Foundation
publishes as a workbook, in the machine-readable form ``focus-data-toolkit``
bundles (``focus_1_4_model.json``, with its model-driven linter and the
official JSON schema of ``AllocatedMethodDetails``). The 1.2 file is checked
by the FinOps validator itself in ``test_focus_validator.py``.
"""

from __future__ import annotations

import io
from collections import defaultdict
from decimal import Decimal
from typing import Any

import pyarrow.parquet as pq
import pytest
from focus_data_toolkit.model.validator import lint_focus_1_4_structure, load_model

from gpuledger.analytics import kinds as K
from gpuledger.analytics.focus import (
    ALLOCATION_METHOD,
    COLUMNS_1_2,
    COLUMNS_1_4,
    ExportContext,
    charges,
    columns_for,
    focus_csv,
    parquet_bytes,
)
from gpuledger.analytics.focus_rules import check_rows
from gpuledger.analytics.prices import parse_price_book
from tests.support.chargeback_rows import A100, HOUR_NS, T0, ledger, parse, row

BOOK = parse_price_book("""currency = "USD"
energy_per_kwh = "0.20"
[[price]]
id = "h100"
model = "*H100*"
per_gpu_hour = "2.99"
effective_from = 2024-01-01
[[price]]
id = "a100"
model = "*A100*"
per_gpu_hour = "1.40"
effective_from = 2024-01-01
[[price]]
id = "a100-1g"
model = "*A100*"
profile = "1g.5gb"
per_gpu_hour = "1.75"
effective_from = 2024-01-01
""", source="test")


def fleet() -> list[dict[str, Any]]:
    """An H100 hour split three ways (hand-computed below), an A100 hour and an A100 MIG slice, with energy."""
    return [
        row("ml", K.BUSY, 1800, energy_j=500_000), row("ml", K.ALLOCATED_IDLE, 1200, energy_j=100_000),
        row("", K.UNALLOCATED, 600, energy_j=20_000),
        row("cv", K.BUSY, 3600, gpu=1, model=A100, energy_j=900_000),
        # An A100 hour in MIG mode: cv holds a 1/7 slice (unmeasured), the rest is nobody's.
        row("cv", K.UNMEASURED, 3600 / 7, gpu=2, model=A100, profile="1g.5gb", mig=0, seq=1,
            start_ns=T0 + HOUR_NS, sharing="mig"),
        row("", K.UNALLOCATED, 3600 * 6 / 7, gpu=2, model=A100, seq=1, start_ns=T0 + HOUR_NS, sharing="mig"),
    ]


def csv_of(version: str, charge_period: str = "month") -> list[dict[str, str]]:
    text, _ = focus_csv(ledger(fleet()), BOOK, "2025-03",
                        ExportContext(focus_version=version, charge_period=charge_period))  # type: ignore[arg-type]
    return parse(text)


def details(r: dict[str, str]) -> list[dict[str, Any]]:
    import json
    return json.loads(r["AllocatedMethodDetails"])["Elements"]  # type: ignore[no-any-return]


# --- the allocation, hand-computed --------------------------------------------------


def test_a_1_4_row_says_how_its_pool_was_split() -> None:
    # The H100 hour: ml busy 0.5 h + idle 1/3 h, platform 1/6 h unallocated; energy 600 kJ of 620 kJ is ml's.
    out = {(r["SubAccountId"], r["PricingUnit"]): r for r in csv_of("1.4") if "H100" in r["x_GpuModel"]}
    ml = out[("ml", "GPU-Hours")]
    assert ml["AllocatedMethodId"] == ALLOCATION_METHOD == "gpuledger/gpu-seconds/v1"
    assert details(ml) == [
        {"AllocatedRatio": 0.5, "UsageQuantity": 0.5, "UsageUnit": "GPU-Hours", "x_Kind": "used"},
        {"AllocatedRatio": 0.333333333, "UsageQuantity": 0.333333, "UsageUnit": "GPU-Hours", "x_Kind": "allocated_idle"},
    ]
    assert details(out[("platform", "GPU-Hours")]) == [
        {"AllocatedRatio": 0.166666667, "UsageQuantity": 0.166667, "UsageUnit": "GPU-Hours", "x_Kind": "unallocated"}]
    assert details(out[("ml", "kWh")]) == [
        {"AllocatedRatio": 0.967741935, "UsageQuantity": 0.166667, "UsageUnit": "kWh", "x_Kind": "energy"}]
    assert ml["AllocatedResourceId"] == "gpuledger/gpu-pool/NVIDIA H100 80GB HBM3/tenant/ml"
    assert ml["AllocatedResourceName"] == "ml share of NVIDIA H100 80GB HBM3 pool"
    assert ml["AllocatedTags"] == '{"gpuledger/tenant":"ml"}'
    assert (ml["ServiceProviderName"], ml["HostProviderName"]) == ("gpuledger", "gpuledger")


@pytest.mark.parametrize("charge_period", ["month", "day"])
def test_each_pools_ratios_sum_to_one(charge_period: str) -> None:
    sums: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for r in csv_of("1.4", charge_period):
        for e in details(r):
            sums[(r["x_GpuModel"], r["SkuPriceId"], r["PricingUnit"])] += Decimal(str(e["AllocatedRatio"]))
    assert len(sums) == 5  # H100, A100, A100 1g: GPU-Hours; H100, A100: kWh (the slice measured no energy)
    assert all(abs(s - 1) <= Decimal("1e-8") for s in sums.values()), sums


def test_the_1_2_file_has_the_1_2_provider_columns_and_no_allocation() -> None:
    rows = csv_of("1.2")
    assert {"ProviderName", "PublisherName", "InvoiceId", "ServiceSubcategory"} <= set(rows[0])
    assert not {c for c in rows[0] if c.startswith("Allocated") or c in ("ServiceProviderName", "HostProviderName")}
    # The same charges in the same order: only the columns differ.
    assert [(r["SubAccountId"], r["BilledCost"]) for r in rows] == [
        (r["SubAccountId"], r["BilledCost"]) for r in csv_of("1.4")]


def test_columns_for_a_version_and_for_rows() -> None:
    assert columns_for("1.2") is COLUMNS_1_2 and columns_for("1.4") is COLUMNS_1_4
    rows, _ = charges(ledger(fleet()), BOOK, "2025-03", ExportContext(focus_version="1.2"))
    assert columns_for(rows) is COLUMNS_1_2 and columns_for([]) is COLUMNS_1_4
    with pytest.raises(ValueError, match="unknown FOCUS version '1.3'"):
        columns_for("1.3")


def test_our_own_rule_checker_reads_either_version() -> None:
    for version in ("1.2", "1.4"):
        rows = csv_of(version)
        assert check_rows(rows, list(rows[0])) == []
    rows = csv_of("1.4")
    rows[0]["ServiceProviderName"] = ""
    rows[1]["AllocatedTags"] = "[1]"
    assert check_rows(rows, list(rows[0])) == ["row 1: ServiceProviderName is null", "row 2: AllocatedTags is not a JSON object"]


# --- the FOCUS 1.4 data model ------------------------------------------------------

_TYPES = {"Decimal": {"decimal", "money", "price"}, "Date/Time": {"datetime"}, "JSON": {"json"}, "String": {"text"}}


def test_1_4_columns_and_types_match_the_focus_1_4_data_model() -> None:
    model = load_model()
    assert model["focus_version"] == "1.4"
    spec = model["datasets"]["Cost and Usage"]["columns"]
    ours = {c.name: c for c in COLUMNS_1_4 if not c.name.startswith("x_")}
    assert sorted(set(ours) - set(spec)) == []  # every FOCUS-named column is a 1.4 column
    mandatory = {n for n, s in spec.items() if s["feature_level"] == "Mandatory"}
    assert sorted(mandatory - set(ours)) == []
    wrong = {n: (c.kind, spec[n]["data_type"]) for n, c in ours.items() if c.kind not in _TYPES[spec[n]["data_type"]]}
    assert wrong == {}
    # And the Parquet file's physical types follow: decimals exact, periods timestamps, the rest strings.
    rows, _ = charges(ledger(fleet()), BOOK, "2025-03")
    schema = pq.read_schema(io.BytesIO(parquet_bytes(rows, BOOK.quantum)))
    for name in ours:
        kind = str(schema.field(name).type)
        expect = {"Decimal": "decimal128", "Date/Time": "timestamp", "JSON": "string", "String": "string"}
        assert kind.startswith(expect[spec[name]["data_type"]]), (name, kind)


def test_the_1_4_file_passes_the_1_4_model_linter_but_for_the_documented_rounding() -> None:
    rows = csv_of("1.4") + csv_of("1.4", "day")
    report = lint_focus_1_4_structure("Cost and Usage", rows)
    # The one departure docs/chargeback.md states: a row is an allocated share rounded once to the cent, so
    # unit price x quantity matches the cost within a quantum (our check_rows holds it to that), not exactly.
    assert {v.rule for v in report.violations} <= {"cost_not_unit_price_times_quantity"}
    for v in report.violations:
        r = rows[v.row_index or 0]
        gap = abs(Decimal(r["ListUnitPrice"]) * Decimal(r["PricingQuantity"]) - Decimal(r["ListCost"]))
        assert gap < Decimal("0.01") + Decimal(r["ListUnitPrice"]) * Decimal("0.0000005"), (v, r)
    # The linter sees what it should: a ratio above 1 or a 1.2 column breaks the 1.4 model.
    bad = [dict(r) for r in rows]
    bad[0]["AllocatedMethodDetails"] = '{"Elements":[{"AllocatedRatio":2,"UsageQuantity":1,"UsageUnit":"GPU-Hours"}]}'
    bad[1]["ProviderName"] = "gpuledger"
    rules = {v.rule for v in lint_focus_1_4_structure("Cost and Usage", bad).violations}
    assert "unknown_column" in rules and len(rules - {"cost_not_unit_price_times_quantity", "unknown_column"}) == 1
    assert not lint_focus_1_4_structure("Cost and Usage", csv_of("1.2")).ok  # the 1.2 file is no 1.4 file
