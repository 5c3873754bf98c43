"""``gpuledger explain``: a summary per GPU first, detail on request, the table and the CSV in one set of units.

A hand-made ledger (tests/support/api_ledger.py rows): ml holds an H100 for 50 minutes (30 busy with
1 kWh, 20 idle) and uses 15 minutes of an A100 under the equal-split rule; cv's rows must not appear.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import polars as pl
import pytest

from gpuledger import cli
from gpuledger.analytics import kinds as K
from gpuledger.analytics.explain import explain_command
from gpuledger.store import Store
from tests.support.api_ledger import A100, SCHEMA, row

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "explain.duckdb"
    rows = [row("ml", K.BUSY, 1800, seq=1, energy_j=3.6e6), row("ml", K.ALLOCATED_IDLE, 1200, seq=1),
            row("ml", K.BUSY, 900, seq=1, gpu=1, model=A100, rule=K.RULE_EQUAL_PROCESSES),
            row("cv", K.BUSY, 2700, seq=1, gpu=1, model=A100)]
    with Store(path) as store:
        store.append("ledger", pl.DataFrame(rows, schema=SCHEMA))
    return str(path)


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_the_summary_is_one_row_per_gpu_with_its_share_of_the_line(db: str) -> None:
    rows = _csv(explain_command(db, "ml", None, None, "csv"))
    assert [(r["gpu_index"], r["model"]) for r in rows] == [("0", "NVIDIA H100 80GB HBM3"), ("1", A100)]
    h100, a100 = rows
    assert (h100["gpu_hours"], h100["used_gpu_hours"], h100["idle_gpu_hours"], h100["unmeasured_gpu_hours"]) == (
        "0.833333", "0.5", "0.333333", "0.0")
    assert (h100["rules"], h100["energy_kwh"], h100["share_of_line"]) == (
        f"{K.RULE_IDLE_SHARE}, {K.RULE_PROCESS_SAMPLES}", "1.0", "0.769231")
    assert (a100["gpu_hours"], a100["rules"], a100["energy_kwh"], a100["share_of_line"]) == (
        "0.25", K.RULE_EQUAL_PROCESSES, "", "0.230769")  # no energy measured: empty, not 0
    assert h100["first_interval_start"] == "2025-03-01T00:00:00Z" and h100["last_interval_end"] == "2025-03-01T01:00:00Z"


def test_table_and_csv_use_the_same_columns_units_and_iso_times(db: str) -> None:
    for detail in (False, True):
        text = explain_command(db, "ml", None, None, "csv", detail=detail)
        rows = _csv(text)
        assert all(ISO.match(r["first_interval_start"]) and ISO.match(r["last_interval_end"]) for r in rows)
        assert not re.search(r"\d{16,}", text)  # no nanosecond epochs
        assert "gpu_seconds" not in text and "gpu_hours" in rows[0]
        table = explain_command(db, "ml", None, None, "table", detail=detail)
        shown = set(rows[0]) - {"gpu_uuid", "model"} if not detail else set(rows[0]) - {"model"}
        assert all(column in table for column in shown), (detail, shown)
        assert "2025-03-01T00:00:00Z" in table and "GPU-hours, times UTC" in table
    summary = explain_command(db, "ml", None, None)
    assert "2 GPUs (--detail: per pod, kind and rule)" in summary and "76.9 %" in summary
    assert "cv" not in _csv(explain_command(db, "ml", None, None, "csv", detail=True))[0].values()


def test_detail_lists_each_gpu_pod_kind_and_rule_and_the_cli_takes_it(db: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    detail = _csv(explain_command(db, "ml", None, None, "csv", detail=True))
    assert [(r["gpu_index"], r["kind"], r["rule"]) for r in detail] == [
        ("0", K.ALLOCATED_IDLE, K.RULE_IDLE_SHARE), ("0", K.BUSY, K.RULE_PROCESS_SAMPLES),
        ("1", K.BUSY, K.RULE_EQUAL_PROCESSES)]
    summary = _csv(explain_command(db, "ml", None, None, "csv"))
    for gpu in ("0", "1"):  # the detail adds up to the summary, GPU by GPU
        assert sum(float(r["gpu_hours"]) for r in detail if r["gpu_index"] == gpu) == pytest.approx(
            float(next(r["gpu_hours"] for r in summary if r["gpu_index"] == gpu)), abs=2e-6)
    assert cli.main(["explain", "--db", db, "--tenant", "ml", "--detail"]) == 0
    assert "one row per GPU, pod, kind and rule" in capsys.readouterr().out
