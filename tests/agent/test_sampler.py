"""The agent's sampler: sample buffers integrated per tick, missing is not zero."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpuledger import wire
from gpuledger.agent.sampler import Sampler
from gpuledger.sim.fleetsim import FleetSim
from gpuledger.sim.spec import FleetSpec, GpuSpec, Holding, NodeSpec, PodSpec, ProcSpec

H100 = "NVIDIA H100 80GB HBM3"


def fleet(gpus: tuple[GpuSpec, ...], pods: tuple[PodSpec, ...] = ()) -> FleetSim:
    return FleetSim(FleetSpec((NodeSpec("node-0", gpus, pods),)), seed=1)


def bursty_pod(gpu: int = 0, *, series: int = 3, mig: int = -1, ns: str = "team-a") -> PodSpec:
    return PodSpec(uid=f"uid-{ns}-{gpu}-{mig}", namespace=ns, name=f"pod-{ns}", holds=(Holding(gpu, mig=mig),),
                   procs=(ProcSpec(gpu, mig=mig, series=series, scale=1.0),))


def ticks(sim: FleetSim, sampler: Sampler, n: int, tick_s: float) -> list[wire.Message]:
    sampler.tick()
    out = []
    for _ in range(n):
        sim.advance(tick_s)
        msg = sampler.tick()
        assert msg is not None
        out.append(msg)
    return out


def test_a_10s_tick_integrates_every_driver_sample_not_a_1s_snapshot() -> None:
    sim = fleet((GpuSpec(H100),), (bursty_pod(),))
    node = sim.nodes[0]
    sampler = Sampler(node, node, node="node-0")
    msgs = ticks(sim, sampler, 60, 10.0)
    # Ten driver samples (1 s period) per 10 s tick.
    assert all(m.devices["util_samples"][0] in (9, 10, 11) for m in msgs)
    measured = sum(float(m.devices["gpu_util"][0]) * 10.0 for m in msgs)
    truth = sim.truth()["busy_gpu_seconds"].sum()
    assert measured == pytest.approx(truth, rel=2e-3)
    # A 1 s snapshot at each tick (what an instantaneous read sees) is far off on bursty work.
    snapshot = []
    sim2 = fleet((GpuSpec(H100),), (bursty_pod(),))
    for _ in range(60):
        sim2.advance(10.0)
        s = sim2.nodes[0].utilization_samples(0, sim2.now_us() - 1_000_000)
        snapshot.append(float(s.value[-1]) / 100 * 10.0)
    assert abs(sum(snapshot) - truth) > 5 * abs(measured - truth)


def test_time_sliced_processes_carry_their_own_evidence() -> None:
    pods = tuple(
        PodSpec(uid=f"u{k}", namespace=f"ns{k}", name=f"p{k}", holds=(Holding(0, share=0.25, replica=k),),
                procs=(ProcSpec(0, series=k + 1, scale=0.5, floor=0.05),))  # always busy: NVML samples it
        for k in range(3)
    )
    sim = fleet((GpuSpec(H100),), pods)
    msgs = ticks(sim, Sampler(sim.nodes[0], sim.nodes[0], node="node-0"), 6, 10.0)
    m = msgs[-1]
    assert len(m.processes) == 3 and len(m.allocations) == 3
    assert {m.pods[i]["namespace"] for i in m.processes["pod"]} == {"ns0", "ns1", "ns2"}
    assert (m.processes["samples"] > 0).all()
    assert np.isfinite(m.processes["sm_util_sum"]).all()
    assert sorted(m.allocations["replica"].tolist()) == [0, 1, 2]


def test_mig_devices_are_reported_with_their_slice_and_no_fake_utilization() -> None:
    sim = fleet((GpuSpec("NVIDIA A100-SXM4-80GB", mig_profiles=("3g.40gb", "1g.10gb")),),
                (bursty_pod(mig=0),))
    m = ticks(sim, Sampler(sim.nodes[0], sim.nodes[0], node="node-0"), 2, 10.0)[-1]
    dev = m.devices
    assert sorted(dev["mig_index"].tolist()) == [-1, 0, 1]
    parent = dev[dev["mig_index"] == -1][0]
    assert math.isnan(parent["gpu_util"]) and parent["health"] == wire.HEALTH_OK
    slices = dev[dev["mig_index"] >= 0]
    assert sorted(slices["slice_fraction"].tolist()) == pytest.approx([1 / 7, 3 / 7])
    reasons = {(m.strings[e["field"]], m.strings[e["reason"]].split(":")[0]) for e in m.field_errors}
    assert ("gpu_util", "NotSupported") in reasons
    proc = m.processes[0]
    assert proc["mig_index"] == 0 and math.isnan(proc["sm_util_sum"])  # MIG: no per-process utilization


def test_a_gpu_that_falls_off_the_bus_is_reported_lost_and_the_rest_kept() -> None:
    sim = fleet((GpuSpec(H100, lost_at_s=15.0), GpuSpec(H100)), (bursty_pod(0), bursty_pod(1, ns="team-b")))
    msgs = ticks(sim, Sampler(sim.nodes[0], sim.nodes[0], node="node-0"), 3, 10.0)
    last = msgs[-1]
    lost = last.devices[last.devices["gpu_index"] == 0][0]
    ok = last.devices[last.devices["gpu_index"] == 1][0]
    assert lost["health"] == wire.HEALTH_LOST and math.isnan(lost["gpu_util"])
    assert last.strings[lost["uuid"]].startswith("GPU-")  # identity read before the loss is kept
    assert ok["health"] == wire.HEALTH_OK and not math.isnan(ok["gpu_util"])
    assert any(last.strings[e["reason"]] == "GpuLost" for e in last.field_errors)


def test_energy_comes_from_counter_deltas_and_a_reset_is_missing_not_negative() -> None:
    sim = fleet((GpuSpec(H100, energy_reset_at_s=(25.0,)),), (bursty_pod(),))
    msgs = ticks(sim, Sampler(sim.nodes[0], sim.nodes[0], node="node-0"), 5, 10.0)
    deltas = [float(m.devices["energy_delta_mj"][0]) for m in msgs]
    assert math.isnan(deltas[2])  # the tick containing the reset
    assert all(d > 0 for i, d in enumerate(deltas) if i != 2)
    assert any(msgs[2].strings[e["reason"]] == "CounterReset" for e in msgs[2].field_errors)


def test_the_first_tick_only_primes_and_intervals_tile_time() -> None:
    sim = fleet((GpuSpec(H100),), (bursty_pod(),))
    sampler = Sampler(sim.nodes[0], sim.nodes[0], node="node-0")
    assert sampler.tick() is None
    msgs = []
    for _ in range(3):
        sim.advance(10.0)
        msgs.append(sampler.tick())
    assert [m.seq for m in msgs] == [0, 1, 2]
    assert all(a.interval_end_ns == b.interval_start_ns for a, b in zip(msgs, msgs[1:]))
    assert all(m.interval_end_ns - m.interval_start_ns == 10 * 10**9 for m in msgs)


@pytest.mark.slow
def test_a_lost_gpu_is_still_booked_in_full() -> None:
    from gpuledger.analytics.job import run_attribution
    from gpuledger.analytics.ledger import conservation_error
    from gpuledger.store import Store

    sim = fleet((GpuSpec(H100, lost_at_s=15.0), GpuSpec(H100)), (bursty_pod(0), bursty_pod(1, ns="team-b")))
    msgs = ticks(sim, Sampler(sim.nodes[0], sim.nodes[0], node="node-0"), 4, 10.0)
    store = Store()
    store.write_messages(msgs)
    run_attribution(store)
    err = conservation_error(store.query("SELECT * FROM ledger").lazy(),
                             store.query("SELECT * FROM devices").lazy()).collect()
    assert err.height == 8 and err["error"].abs().max() < 1e-9
    lost = store.query("SELECT kind, sum(gpu_seconds) s FROM ledger WHERE gpu_index = 0 AND seq >= 2 GROUP BY kind")
    assert dict(zip(lost["kind"], lost["s"])) == {"unmeasured": pytest.approx(20.0)}
