"""The fleet simulator is a faithful NVML twin and knows the truth."""

from __future__ import annotations

import inspect
import math

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gpuledger.agent.backend import GpuBackend, Owner, WorkloadSource
from gpuledger.errors import GpuLost, NotFound, NotSupported
from gpuledger.sim import traces
from gpuledger.sim.fleetsim import FleetSim, SimNode, demo_fleet
from gpuledger.sim.spec import (
    FleetSpec,
    GpuSpec,
    Holding,
    NodeSpec,
    PodSpec,
    ProcSpec,
    Quirks,
)

H100 = "NVIDIA H100 80GB HBM3"


def const(gpu: int, level: float, start: float = -math.inf, end: float = math.inf, **kw: object) -> ProcSpec:
    """A process with constant demand ``level`` (scale 0 ignores the series)."""
    return ProcSpec(gpu=gpu, start_s=start, end_s=end, floor=level, scale=0.0, **kw)  # type: ignore[arg-type]


def pod(name: str, ns: str, holds: tuple[Holding, ...], procs: tuple[ProcSpec, ...], **kw: object) -> PodSpec:
    return PodSpec(uid=f"uid-{name}", namespace=ns, name=name, labels=(("team", ns),), holds=holds, procs=procs,
                   **kw)  # type: ignore[arg-type]


def one_node(gpus: tuple[GpuSpec, ...], pods: tuple[PodSpec, ...], quirks: Quirks | None = None, **kw: object) -> FleetSim:
    return FleetSim(FleetSpec((NodeSpec("n0", gpus, pods),), quirks or Quirks()), seed=1, **kw)  # type: ignore[arg-type]


def read_all(node: SimNode, i: int, since: int) -> tuple[np.ndarray, ...]:
    u = node.utilization_samples(i, since)
    p = node.process_samples(i, since)
    return u.timestamp_us, u.value, p.pid, p.timestamp_us, p.sm_util, p.mem_util


@pytest.fixture(scope="module")
def clean_day() -> FleetSim:
    """The demo fleet without quirks, polled every 60 s for 2 h (buffer 120 samples)."""
    return demo_fleet(seed=5, quirks=Quirks())


# --- the seam ------------------------------------------------------------------


def test_sim_node_implements_both_protocols_exactly() -> None:
    node = demo_fleet(n_nodes=1, seed=0).nodes[0]
    assert isinstance(node, GpuBackend) and isinstance(node, WorkloadSource)
    for proto in (GpuBackend, WorkloadSource):
        for name, fn in vars(proto).items():
            if callable(fn) and not name.startswith("_"):
                want = inspect.signature(fn)
                got = inspect.signature(getattr(SimNode, name))
                assert list(got.parameters) == list(want.parameters), name
                assert str(got.return_annotation) == str(want.return_annotation), name


def test_data_slice_loads_from_the_package() -> None:
    d = traces.duty_cycles()
    assert d.step_s == 57.0 and d.duty.shape == (143, 1441)
    duty, mem = d.filled()
    assert len(duty) > 80 and np.all((duty >= 0) & (duty <= 1)) and np.all(mem >= 0)
    assert set(traces.openb_pods()["num_gpu"].unique()) >= {1, 2, 4, 8}
    assert traces.gpu_models()[H100].mig_slices == 7


# --- determinism -----------------------------------------------------------------


def test_same_seed_same_samples_and_truth() -> None:
    a, b = demo_fleet(n_nodes=2, seed=3), demo_fleet(n_nodes=2, seed=3)
    for sim in (a, b):
        sim.advance(900)
    for na, nb in zip(a.nodes, b.nodes):
        assert na.uuids == nb.uuids
        for i in range(na.device_count()):
            if na.mig_devices(i):
                continue
            for x, y in zip(read_all(na, i, 0), read_all(nb, i, 0)):
                np.testing.assert_array_equal(x, y)
    assert_frame_equal(a.truth(), b.truth())
    assert not a.truth()["busy_seconds"].equals(demo_fleet(n_nodes=2, seed=4).truth()["busy_seconds"])


def test_samples_do_not_depend_on_when_they_are_read() -> None:
    often, once = demo_fleet(n_nodes=1, seed=2), demo_fleet(n_nodes=1, seed=2)
    for _ in range(400):  # 4000 s, crossing a 3600-tick block boundary
        often.advance(10)
        often.nodes[0].process_samples(4, 0)
    once.advance(4000)
    for x, y in zip(read_all(often.nodes[0], 4, 0), read_all(once.nodes[0], 4, 0)):
        np.testing.assert_array_equal(x, y)
    assert_frame_equal(often.truth(), once.truth())


# --- physics -----------------------------------------------------------------------


def test_time_slicing_serialises_oversubscribed_demand() -> None:
    procs = (const(0, 0.5), const(0, 0.5, start=30.0), const(0, 0.5, start=60.0))
    holds = tuple(Holding(0, -1, "nvidia.com/gpu", 1 / 3, r) for r in range(3))
    pods = tuple(pod(f"p{r}", f"t{r}", (holds[r],), (procs[r],)) for r in range(3))
    sim = one_node((GpuSpec(H100),), pods, buffer_samples=200)
    sim.advance(100)
    node = sim.nodes[0]
    u = node.utilization_samples(0, 0)
    p = node.process_samples(0, 0)
    t = (u.timestamp_us - sim.timing.start_us) / 1e6
    np.testing.assert_allclose(u.value[t < 29], 50.0)  # one process: its demand
    np.testing.assert_allclose(u.value[(t > 31) & (t < 59)], 100.0)  # 0.5 + 0.5: just fits
    np.testing.assert_allclose(u.value[t > 61], 100.0)  # 1.5 demanded: serialised
    late = p.timestamp_us > u.timestamp_us[t > 61][0] - 1
    np.testing.assert_allclose(p.sm_util[late], 100.0 / 3)


def test_device_util_is_the_sum_of_actual_and_at_most_100(clean_day: FleetSim) -> None:
    clean_day.advance(600)
    checked = 0
    for node in clean_day.nodes:
        for i in range(node.device_count()):
            if node.mig_devices(i):
                continue
            u = node.utilization_samples(i, 0)
            p = node.process_samples(i, 0)
            assert len(u.value) == 120 and np.all(u.value <= 100.0 + 1e-9) and np.all(u.value >= 0)
            frame = pl.DataFrame({"ts": p.timestamp_us, "sm": p.sm_util}).group_by("ts").agg(pl.col("sm").sum())
            got = dict(zip(frame["ts"].to_list(), frame["sm"].to_list()))
            for ts, v in zip(u.timestamp_us.tolist(), u.value.tolist()):
                assert got.get(ts, 0.0) == pytest.approx(v, abs=1e-9)
            checked += 1
    assert checked >= 28


def test_ring_buffer_keeps_the_last_samples_after_since() -> None:
    sim = one_node((GpuSpec(H100),), (pod("a", "t", (Holding(0),), (const(0, 0.3),)),), buffer_samples=50)
    node = sim.nodes[0]
    assert len(node.utilization_samples(0, 0).value) == 0  # nothing yet
    sim.advance(200)
    u = node.utilization_samples(0, 0)
    assert len(u.value) == 50 and int(u.timestamp_us[-1]) <= node.now_us()
    assert np.all(np.diff(u.timestamp_us.astype(np.int64)) == 1_000_000)
    since = int(u.timestamp_us[-10])
    assert np.array_equal(node.utilization_samples(0, since).timestamp_us, u.timestamp_us[-9:])
    assert len(node.process_samples(0, since).pid) == 9
    sim.advance(10)
    assert len(node.utilization_samples(0, int(u.timestamp_us[-1])).value) == 10
    sim.advance(120)  # the agent was away longer than the buffer: the rest is gone
    assert len(node.utilization_samples(0, int(u.timestamp_us[-1])).value) == 50


def test_truth_equals_the_samples_an_attentive_agent_reads() -> None:
    sim = demo_fleet(n_nodes=2, seed=11, quirks=Quirks(), buffer_samples=120)
    seen: dict[tuple[int, int], int] = {}
    read: dict[tuple[str, int, int], float] = {}
    for _ in range(90):  # 90 min, polled every 60 s
        sim.advance(60)
        for node in sim.nodes:
            for i in range(node.device_count()):
                if node.mig_devices(i):
                    continue
                p = node.process_samples(i, seen.get((node.index, i), 0))
                if len(p.pid):
                    seen[(node.index, i)] = int(p.timestamp_us.max())
                for pid, sm in zip(p.pid.tolist(), p.sm_util.tolist()):
                    key = (node.spec.name, i, pid)
                    read[key] = read.get(key, 0.0) + sm / 100.0 * 1.0  # x sample period (1 s)
    # NVML gives a sample only to a process with non-zero utilization: one that ran nothing has none
    truth = sim.truth().filter(pl.col("mig_index") < 0, pl.col("samples") > 0, pl.col("busy_seconds") > 0)
    assert len(truth) == len(read)
    for row in truth.iter_rows(named=True):
        assert read[(row["node"], row["gpu_index"], row["pid"])] == pytest.approx(row["busy_seconds"], abs=1e-6)
    cap = sim.capacity_truth().filter(pl.col("mig_index") < 0)
    busy = truth.group_by("node", "gpu_index").agg(pl.col("busy_seconds").sum())
    joined = cap.join(busy, on=["node", "gpu_index"])
    np.testing.assert_allclose(joined["busy_seconds"], joined["busy_gpu_seconds"], atol=1e-6)
    assert (cap["busy_gpu_seconds"] <= cap["seconds"] + 1e-9).all()


# --- MIG, loss, energy --------------------------------------------------------------


def mig_sim() -> FleetSim:
    gpu = GpuSpec(H100, mig_profiles=("3g.40gb", "2g.20gb", "1g.10gb"))
    pods = (
        pod("big", "a", (Holding(0, 0, "nvidia.com/mig-3g.40gb"),), (ProcSpec(0, mig=0, floor=0.6, scale=0.0),)),
        pod("mid", "b", (Holding(0, 1, "nvidia.com/mig-2g.20gb"),), (ProcSpec(0, mig=1, floor=0.2, scale=0.0),)),
        pod("idle", "c", (Holding(0, 2, "nvidia.com/mig-1g.10gb"),), ()),
    )
    return one_node((gpu, GpuSpec(H100)), pods)


def test_mig_has_no_utilization_and_slices_split_capacity() -> None:
    sim = mig_sim()
    sim.advance(100)
    node = sim.nodes[0]
    for call in (node.utilization_samples, node.process_samples):
        with pytest.raises(NotSupported):
            call(0, 0)
    with pytest.raises(NotSupported):
        node.mig_devices(1) or node.mig_compute_processes(1, 0)
    with pytest.raises(NotFound):
        node.mig_compute_processes(0, 5)
    migs = node.mig_devices(0)
    assert [m.slice_fraction for m in migs] == pytest.approx([3 / 7, 2 / 7, 1 / 7])
    assert node.mig_gr_engine_active(0, 0) == pytest.approx(0.6)
    assert node.mig_gr_engine_active(0, 2) == 0.0 and node.mig_compute_processes(0, 2) == []
    assert len(node.compute_processes(0)) == 2  # the parent lists every MIG device's processes
    assert {a.mig_index for a in node.allocations()} == {0, 1, 2}  # the idle holder included
    truth = sim.truth().sort("mig_index")
    assert truth["busy_gpu_seconds"].to_list() == pytest.approx([t * f for t, f in
                                                                 zip(truth["busy_seconds"], (3 / 7, 2 / 7))])
    cap = sim.capacity_truth().filter(pl.col("gpu_index") == 0).sort("mig_index")
    secs = cap["seconds"].to_list()
    assert secs[1:] == pytest.approx([secs[0] * 3 / 7, secs[0] * 2 / 7, secs[0] / 7])
    assert cap["busy_gpu_seconds"][0] == pytest.approx(secs[0] * (0.6 * 3 / 7 + 0.2 * 2 / 7))


def test_every_call_on_a_lost_gpu_raises_gpu_lost() -> None:
    sim = one_node((GpuSpec(H100, lost_at_s=30.0), GpuSpec(H100)),
                   (pod("a", "t", (Holding(0),), (const(0, 0.5),)),))
    node = sim.nodes[0]
    sim.advance(20)
    assert node.uuid(0).startswith("GPU-") and len(node.utilization_samples(0, 0).value) > 0
    sim.advance(20)
    calls = [(name, fn) for name, fn in vars(GpuBackend).items()
             if callable(fn) and not name.startswith("_") and "i" in inspect.signature(fn).parameters]
    assert len(calls) >= 14
    for name, _ in calls:
        args = {"i": 0, "since_us": 0, "mig": 0}
        params = [p for p in inspect.signature(getattr(node, name)).parameters]
        with pytest.raises(GpuLost):
            getattr(node, name)(*[args[p] for p in params])
    assert node.device_count() == 2 and node.memory_info(1).total > 0  # the other GPU is fine
    cap = sim.capacity_truth()
    assert cap["seconds"][0] <= 30.0 < cap["seconds"][1]


def test_energy_counter_is_monotonic_except_at_an_injected_reset() -> None:
    procs = (ProcSpec(0, series=3, scale=3.0), ProcSpec(1, series=3, scale=3.0))
    sim = one_node((GpuSpec(H100), GpuSpec(H100, energy_reset_at_s=(500.0,))),
                   (pod("a", "t", (Holding(0), Holding(1)), procs),))
    node = sim.nodes[0]
    first = [node.total_energy_mj(i) for i in (0, 1)]
    counts: list[list[int]] = [[], []]
    for _ in range(100):
        sim.advance(10)
        for i in (0, 1):
            counts[i].append(node.total_energy_mj(i))
            assert 0 < node.power_mw(i) <= 700_000
    d0, d1 = np.diff(counts[0]), np.diff(counts[1])
    assert np.all(d0 > 0)
    assert np.sum(d1 < 0) == 1 and int(np.argmax(d1 < 0)) == 49  # the read at 500 s sees the reset
    energy_j = sim.capacity_truth()["energy_j"].to_list()
    assert (counts[0][-1] - first[0]) / 1000 == pytest.approx(energy_j[0], abs=0.01)
    assert energy_j[0] == pytest.approx(energy_j[1])  # same workload: a reset loses nothing real


# --- workloads ----------------------------------------------------------------------


def test_owner_allocations_and_pid_reuse() -> None:
    sim = demo_fleet(n_nodes=1, seed=0, quirks=Quirks.mild())
    node = sim.nodes[0]
    assert sim.truth()["busy_seconds"].sum() == 0  # at t=0 nothing has run yet
    for _ in range(24):  # a day in 1 h steps
        sim.advance(3600)
        holders = node.allocations()
        assert holders and all(0 < a.share <= 1 for a in holders)
        for i in range(node.device_count()):
            for p in node.compute_processes(i):
                o = node.owner_of(p.pid)
                assert o == Owner() if p.pid in node.mps_pid.values() else (o.pod is not None and o.container)
    assert node.owner_of(999_999) == Owner()
    # pid 31337 belonged to two pods, one after the other: owner_of follows the live one
    again = demo_fleet(n_nodes=1, seed=0, quirks=Quirks.mild())
    lives = sorted((x.start_s, x.end_s, p.uid) for p in again.spec.nodes[0].pods for x in p.procs if x.pid == 31_337)
    assert len(lives) == 2 and lives[0][2] != lives[1][2] and lives[0][1] <= lives[1][0]
    for start, end, uid in lives:
        again.advance((max(start, 0) + min(end, max(start, 0) + 60)) / 2 - again.elapsed_s)
        assert again.nodes[0].owner_of(31_337).pod.uid == uid  # type: ignore[union-attr]
    again.advance(86_400)
    assert again.truth().filter(pl.col("pid") == 31_337)["pod_uid"].n_unique() == 2


def test_demo_fleet_is_a_realistic_mix() -> None:
    sim = demo_fleet(seed=0)
    pods = sim.pods()
    assert pods["namespace"].n_unique() == 5 and pods["tenant_label"].null_count() > 0
    held = sim.holdings_truth()
    models = {g.model for n in sim.spec.nodes for g in n.gpus}
    assert {"NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA L4"} <= models
    assert any(g.mig_profiles for n in sim.spec.nodes for g in n.gpus)
    assert any(g.mps for n in sim.spec.nodes for g in n.gpus)
    for node in sim.nodes:  # at least one GPU no one ever holds
        assert node.spec.name
    never = [(n.spec.name, i) for n in sim.nodes for i in range(n.device_count())
             if not any(h.gpu == i for p in n.spec.pods for h in p.holds)]
    assert never
    ts = held.filter(pl.col("replica") >= 0, pl.col("resource") == "nvidia.com/gpu")
    assert set(ts["share"].round(6).unique().to_list()) <= {0.5, round(1 / 3, 6), 0.25}
    sim.advance(3600)
    for node in sim.nodes:
        by_gpu: dict[int, list[str]] = {}
        for a in node.allocations():
            if a.replica >= 0:
                by_gpu.setdefault(a.gpu_index, []).append(a.pod.namespace)
        for namespaces in by_gpu.values():
            assert len(namespaces) == len(set(namespaces))  # replicas shared across tenants
        frac = sum(a.share for a in node.allocations() if a.resource == "nvidia.com/gpu.shared")
        assert frac <= 1.0
        for i in range(node.device_count()):
            mem = node.memory_info(i)
            assert mem.total == mem.used + mem.free + (mem.reserved or 0)
            kinds = {p.kind for p in node.compute_processes(i)}
            assert kinds <= ({0, 2} if i in node.mps_pid else {0})


def test_quirks_noise_gaps_and_silent_processes() -> None:
    sim = demo_fleet(n_nodes=1, seed=0, quirks=Quirks(missing_sample_rate=0.05, process_noise=0.2,
                                                      silent_process=True))
    node = sim.nodes[0]
    # the silent process is an idle context holder: NVML lists it and gives it no sample (it ran nothing)
    silent = [(rp.pid, rp.spec) for g in node.gpus for rp in g.procs if rp.spec.scale == 0 and rp.spec.floor == 0]
    assert len(silent) == 1
    pid, spec = silent[0]
    sim.advance(max(spec.start_s, 0) + 3600)
    assert pid in [p.pid for p in node.compute_processes(spec.gpu)]  # it holds a context...
    off = 0
    for i in range(node.device_count()):
        if node.mig_devices(i):
            continue
        u, p = node.utilization_samples(i, 0), node.process_samples(i, 0)
        assert pid not in p.pid.tolist()  # ...but never gets a sample
        s = pl.DataFrame({"ts": p.timestamp_us, "sm": p.sm_util}).group_by("ts").agg(pl.col("sm").sum())
        dev = dict(zip(u.timestamp_us.tolist(), u.value.tolist()))
        off += sum(abs(v - dev[t]) > 1e-6 for t, v in zip(s["ts"].to_list(), s["sm"].to_list()))
    assert off > 100  # per-process values no longer sum to the device value
    truth = sim.truth()
    assert truth.filter(pl.col("pid") == pid)["busy_seconds"].sum() == 0  # it really ran nothing


def test_mps_lists_clients_with_kind_2_or_hides_them_behind_the_server() -> None:
    holds = (Holding(0, share=0.5, replica=0),), (Holding(0, share=0.5, replica=1),)
    pods = (pod("a", "a", holds[0], (const(0, 0.3),)), pod("b", "b", holds[1], (const(0, 0.2),)))
    listed = one_node((GpuSpec(H100, mps=True),), pods)
    hidden = one_node((GpuSpec(H100, mps=True, mps_clients_hidden=True),), pods)
    for sim in (listed, hidden):
        sim.advance(30)
    node = listed.nodes[0]
    kinds = sorted(p.kind for p in node.compute_processes(0))
    assert kinds == [0, 2, 2]  # the MPS server, then the clients
    assert len(set(node.process_samples(0, 0).pid)) == 2
    server_only = hidden.nodes[0].compute_processes(0)
    assert len(server_only) == 1 and hidden.nodes[0].owner_of(server_only[0].pid) == Owner()
    assert len(hidden.nodes[0].process_samples(0, 0).pid) == 0
    # what ran is the same either way
    assert hidden.truth()["busy_seconds"].sum() == pytest.approx(listed.truth()["busy_seconds"].sum())


def test_accuracy_scenarios_build_from_the_real_traces() -> None:
    from gpuledger.sim import scenarios as simscenarios

    for name, build in simscenarios.SCENARIOS.items():
        spec = build(seed=1, horizon_s=1800.0)
        pods = [p for n in spec.nodes for p in n.pods]
        assert pods, name
        assert len({dict(p.labels)["team"] for p in pods}) >= 2, name
    ts = simscenarios.timeslice(seed=1, horizon_s=1800.0)
    replicas = [len({p.holds[0].replica for p in ts.nodes[0].pods if p.holds[0].gpu == g}) for g in range(7)]
    assert replicas == list(range(2, 9))  # GPUs 0..6 are time-sliced into 2..8 replicas
    starts = [x.start_s for p in ts.nodes[0].pods for x in p.procs if 0 < x.start_s < 1800]
    assert len(starts) > 20 and any(s % 10 != 0 for s in starts)  # processes start mid-interval
