"""The fleet simulator: NVML's fake twin, with ground truth.

:class:`FleetSim` runs a :class:`~gpuledger.sim.spec.FleetSpec` on a
simulated clock. Each :class:`SimNode` implements both seams of
``gpuledger/agent/backend.py`` -- ``GpuBackend`` (the NVML calls) and ``WorkloadSource``
(PodResources + /proc) -- so the agent runs on it unchanged. Sample physics,
ring buffers and the energy counter live in ``simgpu.py``; the realistic demo
fleet in ``simfleet.py``.

    sim = demo_fleet(seed=7)          # 4 nodes x 8 GPUs
    sim.advance(60)                   # simulated seconds
    node = sim.nodes[0]               # a GpuBackend and a WorkloadSource
    node.process_samples(3, since_us=0)
    sim.truth()                       # what really ran: busy seconds per process

Where real NVML fails, the simulator fails the same way: a GPU in MIG mode has
no device or per-process utilization (``NotSupported``), a MIG call on a GPU
without MIG is ``NotSupported``, a bad index is ``NotFound``, and every call on
a GPU that fell off the bus raises ``GpuLost``.

The truth counts what was generated -- every tick up to now, whether or not
anyone read it: an agent that read every sample and attributed by samples
would reproduce ``truth()`` exactly (with quirks off).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from gpuledger.agent.backend import (
    Allocation,
    ComputeProcess,
    MemoryInfo,
    MigDevice,
    Owner,
    Pod,
    ProcessSamples,
    ValueSamples,
)
from gpuledger.errors import GpuLost, NotFound, NotSupported
from gpuledger.sim import traces
from gpuledger.sim.fleets import demo_spec
from gpuledger.sim.gpu import ResolvedProc, Series, SimGpu, Timing
from gpuledger.sim.spec import FleetSpec, NodeSpec, Quirks

__all__ = ["DEFAULT_START_US", "FleetSim", "SimNode", "demo_fleet"]

DEFAULT_START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
_PCI_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)  # a DGX H100's GPU buses


class _Clock:
    """The simulated wall clock shared by every node, us since the epoch."""

    def __init__(self, now_us: int) -> None:
        self.now_us = now_us


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


@dataclass(frozen=True)
class _PidLife:
    start_s: float
    end_s: float
    owner: Owner


class SimNode:
    """One simulated GPU node: a ``GpuBackend`` and a ``WorkloadSource``.

    Build it through :class:`FleetSim`. GPU index ``i`` is the NVML index.
    """

    def __init__(self, spec: NodeSpec, *, index: int, clock: _Clock, timing: Timing, series: Series,
                 quirks: Quirks, seed: int) -> None:
        self.spec, self.index, self._clock, self._timing = spec, index, clock, timing
        rng = np.random.default_rng([seed, index, 0])
        models = traces.gpu_models()
        self.pods = [Pod(p.uid, p.namespace, p.name, p.labels) for p in spec.pods]
        self.uuids = ["GPU-" + _uuid(rng) for _ in spec.gpus]
        self.mig_uuids = [["MIG-" + _uuid(rng) for _ in g.mig_profiles] for g in spec.gpus]
        per_gpu, self._pids = self._resolve_pids(rng)
        self.mps_pid = {i: int(rng.integers(1000, 3000)) * 2 + i for i, g in enumerate(spec.gpus) if g.mps}
        self.gpus: list[SimGpu] = []
        self._alloc_cache: tuple[int, list[Allocation]] = (-1, [])
        for i, g in enumerate(spec.gpus):
            if g.model not in models:
                raise ValueError(f"node {spec.name} GPU {i}: unknown model {g.model!r}; known: {sorted(models)}")
            self.gpus.append(SimGpu(g, models[g.model], per_gpu[i], timing=timing, series=series, quirks=quirks,
                                    rng_key=(seed, index, i + 1)))

    def _resolve_pids(self, rng: np.random.Generator) -> tuple[list[list[ResolvedProc]], dict[int, list[_PidLife]]]:
        """Give pid-less processes fresh pids in start order; index pid -> lifetimes."""
        flat = [(p.start_s, k, j, x) for k, p in enumerate(self.spec.pods) for j, x in enumerate(p.procs)]
        taken = {x.pid for *_, x in flat if x.pid}
        next_pid = int(rng.integers(20_000, 60_000))
        per_gpu: list[list[ResolvedProc]] = [[] for _ in self.spec.gpus]
        lives: dict[int, list[_PidLife]] = {}
        for _, k, _j, x in sorted(flat, key=lambda r: (r[3].start_s, r[1], r[2])):
            if not 0 <= x.gpu < len(self.spec.gpus):
                raise ValueError(f"node {self.spec.name}: pod {self.spec.pods[k].name} uses GPU {x.gpu}, "
                                 f"the node has {len(self.spec.gpus)}")
            pid = x.pid
            if not pid:
                next_pid += int(rng.integers(1, 40))
                while next_pid in taken:
                    next_pid += 1
                pid = next_pid
            pod = self.spec.pods[k]
            per_gpu[x.gpu].append(ResolvedProc(x, pid, self.pods[k], pod.container))
            lives.setdefault(pid, []).append(_PidLife(x.start_s, x.end_s, Owner(self.pods[k], pod.container)))
        for pid, ls in lives.items():
            ls.sort(key=lambda life: life.start_s)
            for a, b in itertools.pairwise(ls):
                if b.start_s < a.end_s and a.owner != b.owner:
                    raise ValueError(f"node {self.spec.name}: pid {pid} is used by two pods at once")
        return per_gpu, lives

    # --- clock and lookups -------------------------------------------------------

    def now_us(self) -> int:
        """The simulated clock, us since the epoch."""
        return self._clock.now_us

    def _now_s(self) -> float:
        return (self._clock.now_us - self._timing.start_us) / 1e6

    def _gpu(self, i: int, *, advance: bool = True) -> tuple[SimGpu, int]:
        """GPU ``i`` and its latest tick (-1 unless ``advance``), after NVML's checks."""
        if not 0 <= i < len(self.gpus):
            raise NotFound(f"GPU index {i} does not exist on {self.spec.name} ({len(self.gpus)} GPUs)")
        g = self.gpus[i]
        now = self._clock.now_us
        if now >= g.lost_at_us:
            raise GpuLost(f"GPU {i} ({self.uuids[i]}) on {self.spec.name} has fallen off the bus",
                          hint="drain the node and reset or replace the GPU")
        if not advance:
            return g, -1
        k = g.tick_of_us(now)
        g.advance_to(k)
        return g, k

    def _no_mig(self, i: int, what: str) -> SimGpu:
        g, _ = self._gpu(i, advance=False)
        if g.spec.mig_profiles:
            raise NotSupported(f"{what} is not available for GPU {i} in MIG mode (NVML_ERROR_NOT_SUPPORTED)")
        return g

    def _mig(self, i: int, mig: int) -> SimGpu:
        g, _ = self._gpu(i, advance=False)
        if not g.spec.mig_profiles:
            raise NotSupported(f"GPU {i} is not in MIG mode")
        if not 0 <= mig < len(g.spec.mig_profiles):
            raise NotFound(f"GPU {i} has no MIG device {mig}")
        return g

    # --- GpuBackend ----------------------------------------------------------------

    def driver_version(self) -> str:
        return self.spec.driver_version

    def device_count(self) -> int:
        return len(self.gpus)

    def uuid(self, i: int) -> str:
        self._gpu(i, advance=False)
        return self.uuids[i]

    def name(self, i: int) -> str:
        return self._gpu(i, advance=False)[0].model.name

    def pci_bus_id(self, i: int) -> str:
        self._gpu(i, advance=False)
        return f"{i // 8:08X}:{_PCI_BUSES[i % 8]:02X}:00.0"  # domain:bus:device.function

    def memory_info(self, i: int) -> MemoryInfo:
        """Framebuffer bytes: used = the running processes' memory; reserved ~1 % for the driver."""
        g, _ = self._gpu(i, advance=False)
        total = g.model.memory_bytes
        reserved = total // 100
        used = sum(p.used_memory_bytes or 0 for p in g.compute_processes(self._now_s()))
        used = min(used, total - reserved)
        return MemoryInfo(total=total, used=used, free=total - reserved - used, reserved=reserved)

    def utilization_samples(self, i: int, since_us: int) -> ValueSamples:
        """Device utilization samples (percent) stamped after ``since_us``, from the ring buffer."""
        self._no_mig(i, "GPU utilization")
        g, k = self._gpu(i)
        ts, val = g.util_samples(since_us, k)
        return ValueSamples(ts, val)

    def process_samples(self, i: int, since_us: int) -> ProcessSamples:
        """Per-process samples (smUtil/memUtil percent) stamped after ``since_us``."""
        self._no_mig(i, "per-process utilization")
        g, k = self._gpu(i)
        pid, ts, sm, mem = g.process_samples(since_us, k)
        if g.spec.mps_clients_hidden:  # only the MPS server is visible: no per-client samples
            keep = np.zeros(len(pid), dtype=bool)
            pid, ts, sm, mem = pid[keep], ts[keep], sm[keep], mem[keep]
        return ProcessSamples(pid=pid, timestamp_us=ts, sm_util=sm, mem_util=mem)

    def compute_processes(self, i: int) -> list[ComputeProcess]:
        """Processes with a context now (all MIG devices' on a MIG parent); MPS clients have kind=2
        and the MPS control daemon's server process (no pod) is listed too."""
        g, _ = self._gpu(i, advance=False)
        procs = [] if g.spec.mps_clients_hidden else g.compute_processes(self._now_s())
        if i in self.mps_pid:
            procs.insert(0, ComputeProcess(self.mps_pid[i], 30 * 2**20, 0))
        return procs

    def total_energy_mj(self, i: int) -> int:
        """nvmlDeviceGetTotalEnergyConsumption: mJ since driver load (monotonic until a reset)."""
        g, k = self._gpu(i)
        return int(g.at(k)[2])

    def power_mw(self, i: int) -> int:
        """Board power of the latest tick, mW."""
        g, k = self._gpu(i)
        return int(g.at(k)[0] * 1000)

    def temperature_c(self, i: int) -> int:
        g, k = self._gpu(i)
        return round(32 + 45 * g.at(k)[1])  # deg C: ~32 idle, ~77 flat out

    def sm_clock_mhz(self, i: int) -> int:
        g, k = self._gpu(i)
        m = g.model
        return m.sm_clock_max_mhz if g.at(k)[1] > 0.01 else m.sm_clock_idle_mhz

    def mem_clock_mhz(self, i: int) -> int:
        return self._gpu(i, advance=False)[0].model.mem_clock_mhz

    def mig_devices(self, i: int) -> list[MigDevice]:
        """Configured MIG devices; [] when MIG is off or unsupported (like NvmlBackend)."""
        g, _ = self._gpu(i, advance=False)
        out = []
        for m, profile in enumerate(g.spec.mig_profiles):
            out.append(MigDevice(index=m, uuid=self.mig_uuids[i][m], gpu_instance_id=m + 1, compute_instance_id=0,
                                 profile=profile, slice_fraction=float(g.fractions[m])))
        return out

    def mig_compute_processes(self, i: int, mig: int) -> list[ComputeProcess]:
        return self._mig(i, mig).compute_processes(self._now_s(), mig)

    def mig_gr_engine_active(self, i: int, mig: int) -> float:
        """DCGM GR_ENGINE_ACTIVE (0..1) of a MIG device, averaged since the previous read
        (a DCGM watch updated at the reader's cadence; at most the ring buffer back)."""
        g = self._mig(i, mig)
        _, k = self._gpu(i)
        return g.gr_engine_active(mig, k)

    def health_fields(self, i: int) -> dict[str, float | Exception]:
        """The optional ``health_fields`` extension (see NvmlBackend.health_fields): the health
        counters of a healthy simulated GPU. The memory controller and the video engines are not
        simulated: those fields are NotSupported, as on a GPU that lacks them."""
        g, k = self._gpu(i)
        busy = g.at(k)[1] > 0.01
        return {
            "mem_temp_c": float(round(38 + 40 * g.at(k)[1])),
            "pcie_replay_total": 0.0,
            "xid_last": 0.0,  # no XID event in the interval
            "remapped_rows_correctable": 0.0,
            "remapped_rows_uncorrectable": 0.0,
            "throttle_reasons": 0.0 if busy else 1.0,  # nvmlClocksEventReasonGpuIdle
            "mem_copy_util": NotSupported("the simulator does not model the memory controller"),
            "enc_util": NotSupported("the simulator does not model the video encoder"),
            "dec_util": NotSupported("the simulator does not model the video decoder"),
        }

    # --- WorkloadSource ------------------------------------------------------------

    def owner_of(self, pid: int) -> Owner:
        """The pod and container of a running pid (as /proc/<pid>/cgroup says); Owner() otherwise."""
        now = self._now_s()
        for life in self._pids.get(pid, ()):
            if life.start_s <= now < life.end_s:
                return life.owner
        return Owner()

    def allocations(self) -> list[Allocation]:
        """Every device held now (PodResources), processes running or not."""
        if self._alloc_cache[0] != self._clock.now_us:
            now = self._now_s()
            held = [
                Allocation(h.gpu, h.mig, pod, spec.container, h.resource, h.share, h.replica)
                for spec, pod in zip(self.spec.pods, self.pods)
                if spec.start_s <= now < spec.end_s
                for h in spec.holds
            ]
            self._alloc_cache = (self._clock.now_us, held)
        return list(self._alloc_cache[1])


class FleetSim:
    """A deterministic simulated fleet on one clock.

    ``seed`` fixes every random choice (uuids, pids, tick offsets, quirk noise);
    ``sample_period_s`` is the driver's sample period; ``buffer_samples`` how many
    samples the driver keeps per GPU (older ones are gone, as on real GPUs);
    ``block_samples`` only trades memory for speed.
    """

    def __init__(self, spec: FleetSpec, seed: int = 0, start_us: int = DEFAULT_START_US,
                 sample_period_s: float = 1.0, buffer_samples: int = 120, block_samples: int = 3600) -> None:
        if buffer_samples < 1 or sample_period_s <= 0:
            raise ValueError("buffer_samples must be >= 1 and sample_period_s > 0")
        self.spec, self.seed = spec, seed
        self.timing = Timing(start_us, round(sample_period_s * 1e6), buffer_samples,
                             max(block_samples, buffer_samples))
        duty, mem = traces.duty_cycles().filled()
        peak = mem.max(axis=1, keepdims=True)
        series = Series(duty, np.divide(mem, peak, out=np.zeros_like(mem), where=peak > 0),
                        traces.duty_cycles().step_s)
        for node in spec.nodes:
            for pod in node.pods:
                for x in pod.procs:
                    if not 0 <= x.series < len(duty):
                        raise ValueError(f"pod {pod.name}: series {x.series} out of range 0..{len(duty) - 1}")
        self._clock = _Clock(start_us)
        self.nodes = [SimNode(n, index=k, clock=self._clock, timing=self.timing, series=series,
                              quirks=spec.quirks, seed=seed) for k, n in enumerate(spec.nodes)]

    def now_us(self) -> int:
        """The simulated clock, us since the epoch."""
        return self._clock.now_us

    def advance(self, seconds: float) -> None:
        """Move the clock forward. Samples are generated lazily, on the next read or truth()."""
        if seconds < 0:
            raise ValueError("the simulated clock only moves forward")
        self._clock.now_us += round(seconds * 1e6)

    @property
    def elapsed_s(self) -> float:
        """Seconds simulated so far."""
        return (self._clock.now_us - self.timing.start_us) / 1e6

    def truth(self) -> pl.DataFrame:
        """What really ran, per (node, GPU, MIG device, pod, pid), over all time simulated so far.

        ``busy_seconds`` = sum of actual_p x sample period over every tick
        generated (read or not), in seconds of the device the process ran on
        (a MIG device's own seconds); ``busy_gpu_seconds`` is the same in
        physical-GPU seconds (x slice fraction). ``samples`` = ticks it ran.
        """
        rows: list[dict[str, Any]] = []
        now = self.elapsed_s
        for node in self.nodes:
            for i, g in enumerate(node.gpus):
                busy, ticks, _, _ = g.totals(g.tick_of_us(self._clock.now_us))
                for j, rp in enumerate(g.procs):
                    x = rp.spec
                    if x.start_s >= now or x.end_s <= x.start_s:
                        continue
                    frac = float(g.fractions[x.mig]) if x.mig >= 0 else 1.0
                    rows.append({
                        "node": node.spec.name, "gpu_index": i, "gpu_uuid": node.uuids[i], "mig_index": x.mig,
                        "mig_uuid": node.mig_uuids[i][x.mig] if x.mig >= 0 else None,
                        "pod_uid": rp.pod.uid, "pod_name": rp.pod.name, "namespace": rp.pod.namespace,
                        "container": rp.container, **_tenancy(rp.pod.labels), "pid": rp.pid,
                        "samples": int(ticks[j]), "busy_seconds": float(busy[j]),
                        "busy_gpu_seconds": float(busy[j]) * frac,
                    })
        keys = ["node", "gpu_index", "gpu_uuid", "mig_index", "mig_uuid", "pod_uid", "pod_name", "namespace",
                "container", "tenant_label", "cost_center", "pid"]
        schema = {**dict.fromkeys(keys, pl.String), "gpu_index": pl.Int32, "mig_index": pl.Int32,
                  "pid": pl.Int64, "samples": pl.Int64, "busy_seconds": pl.Float64, "busy_gpu_seconds": pl.Float64}
        frame = pl.DataFrame(rows, schema=schema)
        return frame.group_by(keys, maintain_order=True).agg(pl.col("samples", "busy_seconds", "busy_gpu_seconds").sum())

    def capacity_truth(self) -> pl.DataFrame:
        """Capacity per physical GPU (``mig_index`` -1) and per MIG device, over time simulated so far.

        ``seconds``: GPU-seconds of capacity (ticks generated x period; a MIG
        row x its slice fraction; a lost GPU stops at its loss);
        ``busy_gpu_seconds``: sum of utilization x period; ``energy_j``: energy
        the board really drew (never reset; null on MIG rows).
        """
        rows: list[dict[str, Any]] = []
        for node in self.nodes:
            for i, g in enumerate(node.gpus):
                k = g.tick_of_us(self._clock.now_us)
                _, _, dom, energy_mj = g.totals(k)
                secs = k * g.period_s
                base = {"node": node.spec.name, "gpu_index": i, "gpu_uuid": node.uuids[i], "model": g.model.name,
                        "lost_at_s": g.spec.lost_at_s}
                rows.append({**base, "mig_index": -1, "mig_uuid": None, "profile": None, "slice_fraction": 1.0,
                             "seconds": secs, "busy_gpu_seconds": float(g.fractions @ dom),
                             "energy_j": energy_mj / 1000.0})
                for m, profile in enumerate(g.spec.mig_profiles):
                    f = float(g.fractions[m])
                    rows.append({**base, "mig_index": m, "mig_uuid": node.mig_uuids[i][m], "profile": profile,
                                 "slice_fraction": f, "seconds": secs * f, "busy_gpu_seconds": float(dom[m]) * f,
                                 "energy_j": None})
        return pl.DataFrame(rows, schema={
            "node": pl.String, "gpu_index": pl.Int32, "gpu_uuid": pl.String, "model": pl.String,
            "lost_at_s": pl.Float64, "mig_index": pl.Int32, "mig_uuid": pl.String, "profile": pl.String,
            "slice_fraction": pl.Float64, "seconds": pl.Float64, "busy_gpu_seconds": pl.Float64,
            "energy_j": pl.Float64})

    def holdings_truth(self) -> pl.DataFrame:
        """Seconds each pod held each device (ticks whose midpoint it held it), so far."""
        rows: list[dict[str, Any]] = []
        for node in self.nodes:
            for spec, pod in zip(node.spec.pods, node.pods):
                for h in spec.holds:
                    g = node.gpus[h.gpu]
                    held = _ticks_in(g, spec.start_s, spec.end_s, g.tick_of_us(self._clock.now_us)) * g.period_s
                    rows.append({"node": node.spec.name, "gpu_index": h.gpu, "gpu_uuid": node.uuids[h.gpu],
                                 "mig_index": h.mig, "replica": h.replica, "resource": h.resource, "share": h.share,
                                 "pod_uid": pod.uid, "namespace": pod.namespace, **_tenancy(pod.labels),
                                 "held_seconds": held})
        return pl.DataFrame(rows, schema={
            "node": pl.String, "gpu_index": pl.Int32, "gpu_uuid": pl.String, "mig_index": pl.Int32,
            "replica": pl.Int32, "resource": pl.String, "share": pl.Float64, "pod_uid": pl.String,
            "namespace": pl.String, "tenant_label": pl.String, "cost_center": pl.String,
            "held_seconds": pl.Float64})

    def pods(self) -> pl.DataFrame:
        """Every pod of the spec with its tenancy labels and lifetime (s since start; inf = open)."""
        rows = [{"node": n.name, "pod_uid": p.uid, "pod_name": p.name, "namespace": p.namespace,
                 "container": p.container, **_tenancy(p.labels), "start_s": p.start_s, "end_s": p.end_s}
                for n in self.spec.nodes for p in n.pods]
        return pl.DataFrame(rows, schema={
            "node": pl.String, "pod_uid": pl.String, "pod_name": pl.String, "namespace": pl.String,
            "container": pl.String, "tenant_label": pl.String, "cost_center": pl.String,
            "start_s": pl.Float64, "end_s": pl.Float64})


def _tenancy(labels: tuple[tuple[str, str], ...]) -> dict[str, str | None]:
    d = dict(labels)
    return {"tenant_label": d.get("team"), "cost_center": d.get("cost-center")}


def _ticks_in(g: SimGpu, start_s: float, end_s: float, k_now: int) -> int:
    """Ticks 1..k_now whose midpoint lies in [start_s, end_s)."""
    p = g.timing.period_us

    def first_at_or_after(t_s: float) -> int:  # smallest k with midpoint >= t_s
        return math.ceil((t_s * 1e6 - g.offset_us) / p + 0.5)

    lo = 1 if start_s == -math.inf else max(1, first_at_or_after(start_s))
    hi = k_now if end_s == math.inf else min(k_now, first_at_or_after(end_s) - 1)
    return max(0, hi - lo + 1)


def demo_fleet(n_nodes: int = 4, gpus_per_node: int = 8, seed: int = 0, quirks: Quirks | None = None,
               horizon_s: float = 86_400.0, cluster: str | None = None, **sim_kwargs: Any) -> FleetSim:
    """The demo fleet (see ``simfleet.demo_spec``) as a ready :class:`FleetSim`.

    ``quirks`` defaults to :meth:`Quirks.mild`; pass ``Quirks()`` for none. ``cluster`` names the fleet's
    cluster (``FleetSpec.cluster``): two fleets of one seed in two clusters have the same namespaces and pods.
    ``sim_kwargs`` go to :class:`FleetSim` (start_us, sample_period_s, buffer_samples).
    """
    spec = demo_spec(n_nodes, gpus_per_node, seed=seed, quirks=Quirks.mild() if quirks is None else quirks,
                     horizon_s=horizon_s)
    if cluster is not None:
        spec = dataclasses.replace(spec, cluster=cluster)
    return FleetSim(spec, seed=seed, **sim_kwargs)
