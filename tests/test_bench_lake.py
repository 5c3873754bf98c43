"""The lake benchmark's arithmetic on its own rows (the run itself is `python -m benchmarks lake`)."""

from __future__ import annotations

import pytest

from benchmarks.bench_lake import _ledger_rows, _sizing, attribution_slope


def _attribute(executor: str, cpu_s: float) -> dict:
    return {"step": "attribute", "target": "postgresql+s3", "executor": executor, "messages": 500, "cpu_s": cpu_s}


def test_the_attribution_slope_is_the_cpu_above_the_nothing_new_run_per_message() -> None:
    rows = [_attribute("one process", 7.0), _attribute("nothing new", 2.0), _attribute("pool", 99.0)]
    assert attribution_slope(rows) == pytest.approx(0.01)
    assert attribution_slope(rows[:1]) is None  # no fixed cost measured: no slope, never a guess


def test_attribution_cores_at_half_rate_and_three_and_a_half_reads_every_10_minutes() -> None:
    one = {"msgs_per_s": 100.0, "cpu_s_per_msg": 0.003, "data_bytes_per_msg": 2500, "files_per_flush": 6.0}
    row = _sizing(100_000, one, [], None, 0.01)  # 1,250 msg/s x 10 ms = 12.5 cores busy
    assert (row["attribution_cores"], row["attribution_cores_every_10min"]) == (25, 88)
    assert "attribution_cores" not in _sizing(100_000, one, [], None, None)


def test_the_ledger_rows_are_read_from_the_attribute_summary() -> None:
    line = ("attributed 8 shards (8 node groups per hour) in this process from the lake s3://b/raw: "
            "750 messages into 48,000 ledger rows, 3,000 rollup rows written to its ledger_hourly")
    assert _ledger_rows(line) == 48_000
    assert _ledger_rows("attributed 0 shards") is None
