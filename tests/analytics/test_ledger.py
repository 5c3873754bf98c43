"""The ledger equation: conservation, splits, fallbacks and missing values."""

from __future__ import annotations

import math

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuledger import split
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


def test_a_listed_process_without_samples_is_idle_and_a_small_shortfall_is_normalised() -> None:
    # NVML returns a per-process sample only for a process with non-zero utilization: c, listed with
    # no sample, ran nothing. 6 s busy; b's samples explain 5.7 s (5 % short, within the tolerance of
    # lost samples and jitter): all 6 s are b's, c only holds its idle share (4 s idle x 1/2).
    ledger, _ = ledger_of(message([{"util": 0.6, "holders": [("b", 0.5, 0), ("c", 0.5, 1)],
                                    "procs": [("b", 5.7, 10), ("c", 0.0, 0)]}]))
    assert by(ledger, kind=K.BUSY, tenant="b", rule=K.RULE_PROCESS_SAMPLES) == pytest.approx(6.0)
    assert by(ledger, kind=K.BUSY, tenant="c") == 0.0
    assert by(ledger, kind=K.ALLOCATED_IDLE, tenant="c") == pytest.approx(2.0)
    assert K.RULE_UNPLACED_REMAINDER not in set(ledger["rule"])


def test_busy_the_samples_cannot_place_stays_visible_as_its_own_rule() -> None:
    # 10 device samples at 60 % over 10 s = 6 s busy; b's 10 samples say 0.2 each = 2 s (a third).
    # c is listed without a sample: idle per NVML, so it gets none of it; b is scaled up by at most
    # 1 / (1 - tolerance) -- 10 % of busy, or two of the 10 device samples: 20 % --; the rest is
    # nobody's, booked visibly as unplaced_remainder.
    ledger, _ = ledger_of(message([{"util": 0.6, "holders": [("b", 0.5, 0), ("c", 0.5, 1)],
                                    "procs": [("b", 2.0, 10), ("c", 0.0, 0)]}]))
    tolerance = max(split.SAMPLE_TOLERANCE, split.LOST_SAMPLES / 10)
    assert tolerance == 0.2
    placed = 6.0 * (2.0 / 6.0) / (1 - tolerance)
    assert by(ledger, kind=K.BUSY, tenant="b", rule=K.RULE_PROCESS_SAMPLES) == pytest.approx(placed)
    assert by(ledger, kind=K.BUSY, tenant="c") == 0.0
    assert by(ledger, kind=K.BUSY, tenant=K.UNATTRIBUTED_TENANT,
              rule=K.RULE_UNPLACED_REMAINDER) == pytest.approx(6.0 - placed)
    assert by(ledger, kind=K.BUSY) == pytest.approx(6.0)


def test_sampled_processes_alone_take_all_busy_however_short_their_samples() -> None:
    # no unsampled context listed: nobody else can have run, so the samples are normalised to the device
    ledger, _ = ledger_of(message([{"util": 0.6, "holders": [("b", 0.5, 0), ("c", 0.5, 1)],
                                    "procs": [("b", 1.5, 10), ("c", 0.5, 10)]}]))
    assert by(ledger, kind=K.BUSY, tenant="b") == pytest.approx(4.5)
    assert by(ledger, kind=K.BUSY, tenant="c") == pytest.approx(1.5)


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
