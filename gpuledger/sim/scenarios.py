"""Hand-built accuracy scenarios for the fleet simulator (one sharing mode each).

Each builder returns a :class:`~gpuledger.sim.spec.FleetSpec` whose
workloads are real: every process's demand follows one of the GenAI trace's
per-pod duty-cycle series (``traces.duty_cycles``) at a random phase, pod
lifetimes and ``gpu_milli`` fractions come from the openb allocation trace
(``traces.openb_pods``). Duty cycles are deliberately skewed (scale drawn
log-uniformly over ~30x) so a request-based split is visibly wrong, and pods
and processes start and stop at random, non-tick-aligned instants inside the
horizon. Tenants are ``t0``..``t7`` (pod label ``team``), with cost centres.

Used by ``benchmarks/bench_accuracy.py`` and ``tests/analytics/test_accuracy*.py``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from gpuledger.sim import traces
from gpuledger.sim.spec import FleetSpec, GpuSpec, Holding, NodeSpec, PodSpec, ProcSpec, Quirks

__all__ = ["IDLE_QUIRKS", "SCENARIOS", "fractional", "idle_holders", "mig_mix", "mps", "timeslice"]

H100 = "NVIDIA H100 80GB HBM3"
_MIG_LAYOUTS = (("3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"), ("4g.40gb", "3g.40gb"),
                ("1g.10gb",) * 7, ("2g.20gb", "2g.20gb", "3g.40gb"), ("7g.80gb",))


class _Draw:
    """Random draws from the real traces, one generator per scenario."""

    def __init__(self, seed: int, horizon_s: float) -> None:
        self.rng = np.random.default_rng([seed, 0xACC])
        self.horizon = horizon_s
        duty = traces.duty_cycles()
        self.n_series = len(duty.filled()[0])
        self.span_s = duty.duty.shape[1] * duty.step_s
        pods = traces.openb_pods()
        shared = pods.filter((pods["num_gpu"] == 1) & (pods["gpu_milli"] < 1000))
        self.lives = shared["lifetime_s"].to_numpy().astype(float)
        self.milli = shared["gpu_milli"].to_numpy()

    def uid(self) -> str:
        return str(uuid.UUID(bytes=self.rng.bytes(16), version=4))

    def proc(self, gpu: int, start: float, end: float, mig: int = -1, budget: float = 8 * 2**30) -> ProcSpec:
        """A serving/training process with a skewed intensity: scale log-uniform in [0.3, 9]."""
        r = self.rng
        return ProcSpec(gpu=gpu, mig=mig, start_s=start, end_s=end, series=int(r.integers(self.n_series)),
                        phase_s=float(r.uniform(0, self.span_s)), floor=float(r.uniform(0, 0.1)),
                        scale=float(math.exp(r.uniform(math.log(0.3), math.log(9.0)))),
                        memory_bytes=int(budget * r.uniform(0.5, 0.9)))

    def pod(self, tenant: int, holds: list[Holding], procs: list[ProcSpec], start: float, end: float) -> PodSpec:
        labels = (("team", f"t{tenant}"), ("cost-center", f"cc-{100 + tenant % 3}"))
        return PodSpec(self.uid(), f"ns-{tenant}", f"pod-{tenant}-{self.uid()[:6]}", labels, "main",
                       tuple(holds), tuple(procs), start, end)

    def chain(self, tenant: int, holding: Holding, budget: float, churn: bool = True) -> list[PodSpec]:
        """Pods back to back on one slot. Lifetimes: openb's, divided by 20 so pods churn within
        the horizon (at least 2 min); processes start 1-40 s after the pod and stop 0-5 s
        before it, and some pods run two processes one after the other (a restart)."""
        out: list[PodSpec] = []
        t = -float(self.rng.uniform(0, 600)) if churn else -math.inf
        while t < self.horizon:
            life = max(float(self.rng.choice(self.lives)) / 20.0, 120.0) if churn else math.inf
            end = t + life if t + life < self.horizon else math.inf
            p0 = (t if t > -math.inf else 0.0) + float(self.rng.uniform(1, 40))
            p1 = end - float(self.rng.uniform(0, 5)) if end < math.inf else math.inf
            if churn and self.rng.random() < 0.3 and p1 - p0 > 120:
                mid = p0 + (min(p1, self.horizon) - p0) * float(self.rng.uniform(0.3, 0.7))
                procs = [self.proc(holding.gpu, p0, mid, budget=budget),
                         self.proc(holding.gpu, mid + float(self.rng.uniform(0.2, 3)), p1, budget=budget)]
            else:
                procs = [self.proc(holding.gpu, p0, p1, budget=budget)]
            out.append(self.pod(tenant, [holding], procs, t, end))
            if end == math.inf:
                break
            t = end + float(self.rng.exponential(60.0))
        return out


def timeslice(seed: int = 0, horizon_s: float = 3600.0, quirks: Quirks | None = None) -> FleetSpec:
    """7 H100s time-sliced by 2, 3, ..., 8 replicas (``GPU-uuid::N``, share 1/N), each replica a
    chain of pods of a different tenant."""
    d = _Draw(seed, horizon_s)
    gpus, pods = [], []
    for i, n in enumerate(range(2, 9)):
        gpus.append(GpuSpec(H100))
        for r in range(n):
            pods += d.chain((i + r) % 8, Holding(i, -1, "nvidia.com/gpu", 1.0 / n, r), 80 * 2**30 / n)
    return FleetSpec((NodeSpec("ts-node", tuple(gpus), tuple(pods)),), quirks or Quirks())


def fractional(seed: int = 0, horizon_s: float = 3600.0, quirks: Quirks | None = None) -> FleetSpec:
    """8 H100s shared HAMi-style: 2-4 ``nvidia.com/gpu.shared`` pods each, gpu_milli from openb
    (summing to at most 1000 per GPU)."""
    d = _Draw(seed, horizon_s)
    gpus, pods = [], []
    for i in range(8):
        gpus.append(GpuSpec(H100))
        want, millis = int(d.rng.integers(2, 5)), list[int]()
        for _ in range(100):
            m = int(d.rng.choice(d.milli))
            if sum(millis) + m <= 1000:
                millis.append(m)
                if len(millis) == want:
                    break
        for r, m in enumerate(millis):
            pods += d.chain((i + r) % 8, Holding(i, -1, "nvidia.com/gpu.shared", m / 1000.0), 80 * 2**30 * m / 1000)
    return FleetSpec((NodeSpec("frac-node", tuple(gpus), tuple(pods)),), quirks or Quirks())


def mps(seed: int = 0, horizon_s: float = 3600.0, quirks: Quirks | None = None,
        clients_hidden: bool = False) -> FleetSpec:
    """6 H100s each served by an MPS daemon with 2-4 long-lived client pods (clients listed with
    kind=2). ``clients_hidden``: NVML lists only the MPS server (no clients, no samples)."""
    d = _Draw(seed, horizon_s)
    gpus, pods = [], []
    for i in range(6):
        gpus.append(GpuSpec(H100, mps=True, mps_clients_hidden=clients_hidden))
        n = int(d.rng.integers(2, 5))
        for r in range(n):
            pods += d.chain((i + r) % 8, Holding(i, -1, "nvidia.com/gpu", 1.0 / n, r), 80 * 2**30 / n, churn=False)
    return FleetSpec((NodeSpec("mps-node", tuple(gpus), tuple(pods)),), quirks or Quirks())


def mig_mix(seed: int = 0, horizon_s: float = 3600.0, quirks: Quirks | None = None) -> FleetSpec:
    """5 H100s in MIG mode with different layouts (3g+2g+1g+1g, 4g+3g, 7x1g, 2g+2g+3g, 7g); each
    MIG device held by one pod; about one in five holders runs nothing."""
    d = _Draw(seed, horizon_s)
    gpus, pods = [], []
    for i, layout in enumerate(_MIG_LAYOUTS):
        gpus.append(GpuSpec(H100, mig_profiles=layout))
        for m, profile in enumerate(layout):
            gib = int(profile.split(".")[1].rstrip("gb"))
            idle = d.rng.random() < 0.2
            procs = [] if idle else [d.proc(i, float(d.rng.uniform(0, 300)), math.inf, mig=m, budget=gib * 2**30)]
            pods.append(d.pod((i + m) % 8, [Holding(i, m, f"nvidia.com/mig-{profile}", 1.0)], procs,
                              -math.inf, math.inf))
    return FleetSpec((NodeSpec("mig-node", tuple(gpus), tuple(pods)),), quirks or Quirks())


#: What the probe of issue 15 saw beside idle context holders: a few lost samples, per-process figures
#: that are noisy and read a few % above or below the device's on each GPU.
IDLE_QUIRKS = Quirks(missing_sample_rate=0.02, process_noise=0.05, process_bias=0.04)


def idle_holders(seed: int = 0, horizon_s: float = 3600.0, quirks: Quirks | None = None) -> FleetSpec:
    """6 H100s time-sliced by 3-5 replicas: on each, 1-2 replicas run busy pods (chains of tenants
    ``t0``..``t7``) and 1-2 are held by idle context holders -- a notebook or an inference server
    between requests: a long-lived process that holds a context and GPU memory and runs nothing, so
    NVML lists it and gives it no sample -- of tenants ``idle0``..``idle11``; some replicas are free.
    Default quirks: IDLE_QUIRKS (lost samples, noise, per-GPU per-process bias of up to 4 %)."""
    d = _Draw(seed, horizon_s)
    gpus, pods = [], []
    n_idle = 0
    for i in range(6):
        gpus.append(GpuSpec(H100))
        n = int(d.rng.integers(3, 6))
        busy, idle = int(d.rng.integers(1, 3)), int(d.rng.integers(1, 3))
        for r in range(busy):
            pods += d.chain((i + r) % 8, Holding(i, -1, "nvidia.com/gpu", 1.0 / n, r), 80 * 2**30 / n)
        for r in range(busy, busy + idle):
            proc = replace(d.proc(i, float(d.rng.uniform(0, 60)), math.inf, budget=80 * 2**30 / n),
                           floor=0.0, scale=0.0)  # demand 0: a context, memory, no work
            pod = d.pod(0, [Holding(i, -1, "nvidia.com/gpu", 1.0 / n, r)], [proc], -math.inf, math.inf)
            pods.append(replace(pod, namespace=f"ns-idle{n_idle}", name=f"nb-{n_idle}-{pod.uid[:6]}",
                                labels=(("team", f"idle{n_idle}"), ("cost-center", "cc-idle"))))
            n_idle += 1
    return FleetSpec((NodeSpec("idle-node", tuple(gpus), tuple(pods)),), quirks or IDLE_QUIRKS)


#: name -> builder(seed, horizon_s, quirks)
SCENARIOS: dict[str, Callable[..., FleetSpec]] = {
    "timeslice": timeslice, "fractional": fractional, "mps": mps, "mig": mig_mix, "idle_holders": idle_holders,
}
