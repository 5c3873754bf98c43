"""Idle policies, tenant lines (coverage, memory), explain: conservation and the documented example."""

from __future__ import annotations

import math

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuledger.analytics import kinds as K
from gpuledger.analytics.explain import explain
from gpuledger.analytics.policy import POLICIES, RULE_SHARED_UNALLOCATED, apply_idle_policy
from gpuledger.analytics.rollups import tenant_lines
from tests.support.ledger_inputs import gpu_spec, ledger_of, message

HOUR = 3600.0


def worked_example() -> pl.DataFrame:
    """docs/attribution.md: an H100 time-sliced into 4 replicas for one hour; vision and nlp hold one each,
    the GPU is 80 % busy and vision's process has 3x nlp's samples."""
    ledger, _ = ledger_of(message([{"util": 0.8, "energy_mj": 2.5e6,
                                    "holders": [("vision", 0.25, 0), ("nlp", 0.25, 1)],
                                    "procs": [("vision", 3.0), ("nlp", 1.0)]}], dt_s=HOUR))
    return ledger


def hours(lines: pl.DataFrame) -> dict[str, float]:
    return {r["tenant"]: r["total_s"] / HOUR for r in lines.iter_rows(named=True)}


def test_holder_policy_is_the_worked_example() -> None:
    got = hours(tenant_lines(worked_example().lazy()).collect())
    assert got == pytest.approx({"vision": 0.65, "nlp": 0.25, K.PLATFORM_TENANT: 0.10})


def test_share_unallocated_spreads_platform_idle_by_what_tenants_were_charged() -> None:
    lines = tenant_lines(worked_example().lazy(), policy="share_unallocated").collect()
    got = hours(lines)
    assert got == pytest.approx({"vision": 0.65 + 0.10 * 0.65 / 0.90, "nlp": 0.25 + 0.10 * 0.25 / 0.90})
    assert sum(got.values()) == pytest.approx(1.0)
    assert K.PLATFORM_TENANT not in got


def test_platform_policy_keeps_allocated_idle_on_the_platform() -> None:
    got = hours(tenant_lines(worked_example().lazy(), policy="platform").collect())
    assert got == pytest.approx({"vision": 0.60, "nlp": 0.20, K.PLATFORM_TENANT: 0.20})


def test_share_unallocated_keeps_idle_on_platform_when_nobody_was_charged() -> None:
    ledger, _ = ledger_of(message([{"util": 0.0}]))  # nobody holds or runs anything
    lines = apply_idle_policy(ledger.lazy(), "share_unallocated").collect()
    assert lines["tenant"].to_list() == [K.PLATFORM_TENANT]
    assert RULE_SHARED_UNALLOCATED not in lines["rule"].to_list()


def test_unknown_policy_says_which_exist() -> None:
    with pytest.raises(ValueError, match="share_unallocated"):
        apply_idle_policy(worked_example().lazy(), "everyone")  # type: ignore[arg-type]


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gpus=st.lists(gpu_spec, min_size=1, max_size=4), policy=st.sampled_from(POLICIES))
def test_every_policy_conserves_capacity(gpus: list[dict], policy: str) -> None:
    ledger, store = ledger_of(message(gpus, dt_s=10.0))
    lines = apply_idle_policy(ledger.lazy(), policy).collect()  # type: ignore[arg-type]
    capacity = 10.0 * len(gpus)
    assert lines["gpu_seconds"].sum() == pytest.approx(capacity, rel=1e-9, abs=1e-9)
    assert (lines["gpu_seconds"] >= -1e-9).all()
    energy = ledger["energy_j"].drop_nulls().sum()
    assert lines["energy_j"].drop_nulls().sum() == pytest.approx(energy, rel=1e-9, abs=1e-6)


def test_coverage_is_the_share_of_busy_from_per_process_samples() -> None:
    # GPU 0: a's busy from samples; GPU 1: a's and b's processes without samples (equal split)
    ledger, _ = ledger_of(message([
        {"util": 0.5, "holders": [("a", 1.0, -1)], "procs": [("a", 4.0)]},
        {"util": 0.5, "holders": [("a", 0.5, 0), ("b", 0.5, 1)], "procs": [("a", 0.0), ("b", 0.0)]},
        {"util": 0.0},  # held by nobody: platform's unallocated line, no busy
    ]))
    lines = {r["tenant"]: r for r in tenant_lines(ledger.lazy()).collect().iter_rows(named=True)}
    assert lines["a"]["coverage"] == pytest.approx(5.0 / 7.5)
    assert lines["b"]["coverage"] == pytest.approx(0.0)
    assert lines[K.PLATFORM_TENANT]["coverage"] is None  # no busy time: no coverage, not 0
    # memory: each process holds 2e9 B for 10 s -> 2e10 GB-s... per process 20 GB-s
    assert lines["a"]["memory_gb_h"] == pytest.approx(2 * 20.0 / 3600)


def test_explain_lists_the_gpus_and_rules_behind_a_line_and_sums_to_it() -> None:
    ledger, _ = ledger_of(
        message([{"util": 0.5, "holders": [("a", 1.0, -1)], "procs": [("a", 4.0)]},
                 {"util": 0.5, "holders": [("a", 0.5, 0), ("b", 0.5, 1)], "procs": [("a", 0.0), ("b", 0.0)]}], seq=0),
        message([{"util": 0.2, "holders": [("a", 1.0, -1)], "procs": [("a", 1.0)]}, {"util": math.nan}], seq=1),
    )
    rows = explain(ledger.lazy(), "a").collect()
    assert set(rows["gpu_uuid"]) == {"GPU-0", "GPU-1"}
    assert set(rows["rule"]) == {K.RULE_PROCESS_SAMPLES, K.RULE_EQUAL_PROCESSES, K.RULE_IDLE_SHARE}
    busy_gpu0 = rows.filter((pl.col("gpu_uuid") == "GPU-0") & (pl.col("kind") == K.BUSY))
    assert busy_gpu0["intervals"].item() == 2 and busy_gpu0["gpu_seconds"].item() == pytest.approx(7.0)
    total = tenant_lines(ledger.lazy()).collect().filter(pl.col("tenant") == "a")["total_s"].item()
    assert rows["gpu_seconds"].sum() == pytest.approx(total)
    assert explain(ledger.lazy(), "a").collect().equals(rows)  # same data, same listing
    assert explain(ledger.lazy(), "a", start_ns=10**10).collect()["intervals"].max() == 1
