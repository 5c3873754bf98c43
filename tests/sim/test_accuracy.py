"""Every sharing mode, end to end against the simulator's ground truth.

Simulator -> Sampler -> wire -> Store -> run_attribution, then per-tenant busy
GPU-seconds vs ``FleetSim.truth()`` (gpuledger/sim/accuracy.py). Horizons are short
(15 min at a 10 s tick) to keep the suite fast; benchmarks/bench_accuracy.py
runs the long versions and the 1 s / 60 s ticks.
"""

from __future__ import annotations

import math

import polars as pl
import pytest

from gpuledger.analytics import kinds as K
from gpuledger.analytics.ledger import conservation_error
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.sim import scenarios as simscenarios
from gpuledger.sim.accuracy import compare, errors, simulate
from gpuledger.sim.fleetsim import FleetSim, demo_fleet
from gpuledger.sim.spec import FleetSpec, GpuSpec, Holding, NodeSpec, PodSpec, ProcSpec, Quirks

H = 900.0  # simulated seconds per test
TICK = 10.0


def run(sim: FleetSim) -> tuple[pl.DataFrame, pl.DataFrame]:
    store = simulate(sim, TICK, H)
    table = compare(sim, store)
    ledger = store.query("SELECT * FROM ledger")
    err = conservation_error(ledger.lazy(), store.query("SELECT * FROM devices").lazy()).collect()
    assert err["error"].abs().max() < 1e-6  # books close on every GPU interval
    return table, ledger


def rules_of(ledger: pl.DataFrame, kind: str = K.BUSY) -> set[str]:
    return set(ledger.filter(pl.col("kind") == kind)["rule"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["timeslice", "fractional", "mps"])
def test_shared_gpus_are_attributed_within_one_percent_per_tenant(name: str) -> None:
    table, ledger = run(FleetSim(simscenarios.SCENARIOS[name](seed=11, horizon_s=H), seed=11))
    mean, worst = errors(table, "ledger_s")
    assert worst <= 1.0, table
    assert errors(table, "request_s")[1] > 5 * worst  # the request baseline is far off on the same data
    assert K.RULE_PROCESS_SAMPLES in rules_of(ledger)
    sharing = {"timeslice": "time_sliced", "fractional": "fractional", "mps": "time_sliced"}[name]
    assert sharing in set(ledger["sharing"])


def test_idle_context_holders_beside_busy_pods_with_lost_and_biased_samples_get_no_busy_time() -> None:
    """Issue 15: listed processes that run nothing (no sample, as NVML documents) beside busy ones whose
    per-process samples are lost (2 %), noisy (5 %) and read up to 4 % high or low per GPU. The idle
    holders' tenants get not one busy GPU-second (the previous rule gave them every shortfall), pay
    their allocated idle, and the busy tenants stay within 1 %."""
    table, ledger = run(FleetSim(simscenarios.idle_holders(seed=11, horizon_s=H), seed=11))
    idle = table.filter(pl.col("tenant").str.starts_with("idle"))
    assert idle.height >= 6 and (idle["true_s"] == 0).all()
    assert (idle["ledger_s"] == 0).all(), idle
    held = ledger.filter(pl.col("tenant").str.starts_with("idle") & (pl.col("kind") == K.ALLOCATED_IDLE))
    assert held["tenant"].n_unique() == idle.height
    mean, worst = errors(table, "ledger_s")
    assert worst <= 1.0, table
    assert errors(table, "request_s")[1] > 5 * worst


def test_mps_with_only_the_server_visible_falls_back_to_allocation_share() -> None:
    sim = FleetSim(simscenarios.mps(seed=11, horizon_s=H, clients_hidden=True), seed=11)
    table, ledger = run(sim)
    assert rules_of(ledger) == {K.RULE_SERVER_ONLY}
    assert K.UNATTRIBUTED_TENANT not in set(ledger.filter(pl.col("kind") == K.BUSY)["tenant"])
    # no per-client evidence: the ledger is exactly the device-busy-by-request baseline, no better
    assert errors(table, "ledger_s")[1] == pytest.approx(errors(table, "dev_x_req_s")[1], rel=1e-6)


def test_mig_slices_take_their_fraction_and_busy_from_gr_engine_active() -> None:
    table, ledger = run(FleetSim(simscenarios.mig_mix(seed=11, horizon_s=H), seed=11))
    # exact up to the last driver tick before the end (GR_ENGINE_ACTIVE is read at the agent tick)
    assert errors(table, "ledger_s")[1] < 0.05
    assert set(ledger["sharing"]) == {"mig"}
    idle_holders = ledger.filter((pl.col("kind") == K.ALLOCATED_IDLE) & (pl.col("mig_index") >= 0))
    assert idle_holders.height > 0


def _spanning_job() -> FleetSpec:
    """One DDP job of tenant 'llm' as two pods on two nodes, two GPUs each, plus an exclusive pod."""
    def pod(uid: str, team: str, gpus: tuple[int, ...], start: float = 0.0) -> PodSpec:
        procs = tuple(ProcSpec(gpu=g, start_s=start + 3.3, series=7, phase_s=1000.0, floor=0.6, scale=1.0)
                      for g in gpus)
        return PodSpec(uid, "ml", f"p-{uid}", (("team", team),), "main", tuple(Holding(g) for g in gpus), procs)
    nodes = tuple(NodeSpec(f"n{k}", (GpuSpec("NVIDIA A100-SXM4-80GB"),) * 3,
                           (pod(f"job-{k}", "llm", (0, 1)), pod(f"solo-{k}", f"solo{k}", (2,), start=123.4)))
                  for k in range(2))
    return FleetSpec(nodes)


def test_multi_gpu_pods_and_jobs_spanning_nodes_add_up_per_tenant() -> None:
    table, ledger = run(FleetSim(_spanning_job(), seed=2))
    assert errors(table, "ledger_s")[1] < 0.5
    llm = ledger.filter((pl.col("tenant") == "llm") & (pl.col("kind") == K.BUSY))
    assert llm.select(pl.struct("node", "gpu_index").n_unique()).item() == 4
    assert set(ledger.filter(pl.col("tenant") == "llm")["sharing"]) == {"exclusive"}


def test_demo_fleet_with_driver_quirks_stays_within_one_percent() -> None:
    """Dropped samples, noise, an idle context holder, PID reuse, an energy-counter reset."""
    table, ledger = run(demo_fleet(2, 8, seed=5, horizon_s=H, quirks=Quirks.mild()))
    assert errors(table, "ledger_s")[1] <= 1.0, table
    assert math.isfinite(errors(table, "request_s")[0])


def test_reattribution_with_corrected_rules_moves_past_usage() -> None:
    from gpuledger.analytics.job import run_attribution

    sim = FleetSim(simscenarios.timeslice(seed=4, horizon_s=300.0), seed=4)
    store = simulate(sim, TICK, 300.0)
    before = store.query("SELECT tenant, sum(gpu_seconds) s FROM ledger GROUP BY 1")
    rules = TenancyRules(version="2", label_keys=("cost-center",))
    run_attribution(store, rules, full=True)
    after = store.query("SELECT tenant, sum(gpu_seconds) s FROM ledger GROUP BY 1")
    # (a process sampled just after its pod ended keeps a few ms as unattributed: never dropped)
    assert set(after.filter(pl.col("s") > 1.0)["tenant"]) - {K.PLATFORM_TENANT} == {"cc-100", "cc-101", "cc-102"}
    assert after["s"].sum() == pytest.approx(before["s"].sum())
    assert compare(sim, store, rules).filter(pl.col("true_s") > 0).height == 3
