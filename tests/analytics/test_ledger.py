"""The ledger equation: conservation, splits, fallbacks and missing values."""

from __future__ import annotations

import math

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuledger.analytics import kinds as K
from gpuledger.analytics.job import run_attribution
from gpuledger.analytics.ledger import conservation_error
from tests.support.ledger_inputs import by, gpu_spec, ledger_of, message


def test_time_sliced_gpu_splits_busy_by_evidence_and_idle_by_allocation() -> None:
    ledger, _ = ledger_of(message([{"util": 0.8, "energy_mj": 10_000.0,
                                    "holders": [("a", 0.25, 0), ("b", 0.25, 1)],
                                    "procs": [("a", 3.0), ("b", 1.0)]}]))
    assert by(ledger, kind=K.BUSY, tenant="a") == pytest.approx(6.0)
    assert by(ledger, kind=K.BUSY, tenant="b") == pytest.approx(2.0)
    assert by(ledger, kind=K.ALLOCATED_IDLE, tenant="a") == pytest.approx(0.5)
    assert by(ledger, kind=K.UNALLOCATED, tenant=K.PLATFORM_TENANT) == pytest.approx(1.0)
    assert set(ledger["sharing"]) == {"time_sliced"}
    assert by(ledger.filter(pl.col("kind") == K.BUSY), rule=K.RULE_PROCESS_SAMPLES) == pytest.approx(8.0)
    # energy: busy 80 % of 10 J split 3:1, idle 20 % split by allocation
    busy_a = ledger.filter((pl.col("kind") == K.BUSY) & (pl.col("tenant") == "a"))["energy_j"].sum()
    assert busy_a == pytest.approx(6.0)


def test_processes_without_samples_fall_back_to_equal_split() -> None:
    ledger, _ = ledger_of(message([{"util": 0.5, "holders": [("a", 0.5, 0), ("b", 0.5, 1)],
                                    "procs": [("a", 0.0), ("b", 0.0)]}]))
    assert by(ledger, kind=K.BUSY, tenant="a") == pytest.approx(2.5)
    assert set(ledger.filter(pl.col("kind") == K.BUSY)["rule"]) == {K.RULE_EQUAL_PROCESSES}


def test_busy_without_processes_goes_to_holders_by_share() -> None:
    ledger, _ = ledger_of(message([{"util": 0.4, "holders": [("a", 0.75, -1), ("b", 0.25, -1)]}]))
    assert by(ledger, kind=K.BUSY, tenant="a") == pytest.approx(3.0)
    assert set(ledger.filter(pl.col("kind") == K.BUSY)["rule"]) == {K.RULE_ALLOCATION_SHARE}


def test_missing_utilization_is_unmeasured_not_zero_busy() -> None:
    ledger, _ = ledger_of(message([{"util": math.nan, "holders": [("a", 1.0, -1)]}]))
    assert by(ledger, kind=K.UNMEASURED, tenant="a") == pytest.approx(10.0)
    assert by(ledger, kind=K.BUSY) == 0.0


def test_mig_slices_take_their_fraction_and_the_rest_is_unallocated() -> None:
    ledger, _ = ledger_of(message([{"migs": [{"profile": "3g.40gb", "fraction": 3 / 7, "holder": "a", "util": 0.5},
                                             {"profile": "2g.20gb", "fraction": 2 / 7, "holder": "b"}]}]))
    assert by(ledger, tenant="a") == pytest.approx(30 / 7)
    assert by(ledger, kind=K.UNMEASURED, tenant="b") == pytest.approx(20 / 7)
    assert by(ledger, kind=K.UNALLOCATED) == pytest.approx(20 / 7)
    assert set(ledger["sharing"]) == {"mig"}


def test_missing_energy_stays_null() -> None:
    ledger, _ = ledger_of(message([{"util": 0.5, "holders": [("a", 1.0, -1)], "procs": [("a", 2.0)]}]))
    assert ledger["energy_j"].null_count() == ledger.height


def test_reattribution_is_identical_and_incremental_runs_add_only_new_intervals() -> None:
    spec = [{"util": 0.6, "holders": [("a", 0.5, 0)], "procs": [("a", 1.0), ("b", 2.0)]}]
    _, store = ledger_of(message(spec, seq=0))
    store.write_messages([message(spec, seq=1)])
    assert run_attribution(store).messages == 1
    first = store.query("SELECT * EXCLUDE (namespace, pod) FROM ledger ORDER BY ALL")
    run_attribution(store, full=True)
    again = store.query("SELECT * EXCLUDE (namespace, pod) FROM ledger ORDER BY ALL")
    assert first.equals(again)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gpus=st.lists(gpu_spec, min_size=1, max_size=4), dt_s=st.sampled_from([1.0, 10.0, 60.0]))
def test_conservation_used_plus_idle_plus_unallocated_is_capacity(gpus: list[dict], dt_s: float) -> None:
    ledger, store = ledger_of(message(gpus, dt_s=dt_s))
    err = conservation_error(ledger.lazy(), store.query("SELECT * FROM devices").lazy()).collect()
    assert err.height == len(gpus)
    assert err["error"].abs().max() <= 1e-9 * dt_s
    assert (ledger["gpu_seconds"] >= -1e-12).all()


def test_busy_the_samples_leave_unexplained_goes_to_the_listed_unsampled_process() -> None:
    # 10 device samples at 60 % over 10 s = 6 s busy; b's 10 samples say 0.2 each = 2 s; c is
    # listed but has no sample: the unexplained 4 s are c's (rule unsampled_remainder).
    ledger, _ = ledger_of(message([{"util": 0.6, "holders": [("b", 0.5, 0), ("c", 0.5, 1)],
                                    "procs": [("b", 2.0, 10), ("c", 0.0, 0)]}]))
    assert by(ledger, kind=K.BUSY, tenant="b", rule=K.RULE_PROCESS_SAMPLES) == pytest.approx(2.0)
    assert by(ledger, kind=K.BUSY, tenant="c", rule=K.RULE_UNSAMPLED_REMAINDER) == pytest.approx(4.0)


def test_samples_explaining_all_busy_leave_nothing_to_the_unsampled() -> None:
    ledger, _ = ledger_of(message([{"util": 0.2, "holders": [("b", 0.5, 0), ("c", 0.5, 1)],
                                    "procs": [("b", 2.5, 10), ("c", 0.0, 0)]}]))
    assert by(ledger, kind=K.BUSY, tenant="b") == pytest.approx(2.0)  # over-reporting is normalised
    assert by(ledger, kind=K.BUSY, tenant="c") == 0.0


def test_only_an_mps_server_visible_falls_back_to_the_holders() -> None:
    # the MPS control daemon's server process has no pod; clients are not listed
    ledger, _ = ledger_of(message([{"util": 0.5, "holders": [("a", 0.5, 0), ("b", 0.5, 1)],
                                    "procs": [(None, 0.0, 0)]}]))
    assert by(ledger, kind=K.BUSY, tenant="a", rule=K.RULE_SERVER_ONLY) == pytest.approx(2.5)
    assert by(ledger, kind=K.BUSY, tenant=K.UNATTRIBUTED_TENANT) == 0.0


def test_pod_less_processes_on_a_gpu_nobody_holds_stay_visible_as_unattributed() -> None:
    ledger, _ = ledger_of(message([{"util": 0.5, "procs": [(None, 3.0, 10)]}]))
    assert by(ledger, kind=K.BUSY, tenant=K.UNATTRIBUTED_TENANT) == pytest.approx(5.0)
