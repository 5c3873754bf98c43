"""A realistic mixed demo fleet for the simulator, drawn from the real traces.

``demo_spec(n_nodes, gpus_per_node, seed)`` lays out, per node of 8 GPUs:

====  ============  ============================================================
GPU   role          holders
====  ============  ============================================================
0-1   multi         one training pod holding both GPUs exclusively, one process
                    per GPU (DDP), busy most of the time
2     exclusive     a chain of batch jobs (lifetimes from the openb trace) with
                    gaps in between: the GPU is sometimes held by nobody
3     dev           a notebook pod holding the GPU all day whose kernel runs only
                    in windows: allocated but idle in between
4     timeslice     2-4 replicas ``GPU-uuid::N`` (share 1/replicas), each a chain
                    of serving pods of a different tenant
5     fractional    2-3 ``nvidia.com/gpu.shared`` pods, gpu_milli from openb
6     mig / mps     MIG (3g.40gb + 2g.20gb + 1g.10gb, 1 slice unconfigured; the
                    1g.10gb holder runs nothing) on MIG-capable models of even
                    nodes; otherwise 2-3 MPS clients of different tenants
7     free          held by nobody (odd nodes: another time-sliced GPU)
====  ============  ============================================================

Nodes cycle through H100 / A100 / L4 / H100. Fewer GPUs truncate the table,
more repeat exclusive/timeslice/fractional/dev. Demand of every process is a
real GenAI duty-cycle series (random series and phase); pod lifetimes and
gpu_milli come from the openb allocation trace (lifetimes raised to at least
5 min). Tenants: five namespaces with ``team`` and ``cost-center`` labels;
about one pod in seven lacks the ``team`` label.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import replace

import numpy as np

from gpuledger.sim import traces
from gpuledger.sim.spec import (
    FleetSpec,
    GpuSpec,
    Holding,
    NodeSpec,
    PodSpec,
    ProcSpec,
    Quirks,
)

__all__ = ["NODE_MODELS", "TENANTS", "demo_spec"]

# namespace, team label, cost-center label, app names by workload kind
TENANTS: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    ("team-vision", "vision", "cc-1001", {"train": "vit-train", "serve": "sd-serving", "dev": "jupyter"}),
    ("team-nlp", "nlp", "cc-1002", {"train": "llm-finetune", "serve": "llm-serving", "dev": "jupyter"}),
    ("search", "search", "cc-2001", {"train": "ranker-train", "serve": "embed-serving", "dev": "jupyter"}),
    ("ads-ranking", "ads", "cc-2002", {"train": "dlrm-train", "serve": "ctr-serving", "dev": "jupyter"}),
    ("research", "research", "cc-3001", {"train": "rl-train", "serve": "demo-serving", "dev": "jupyter"}),
)
NODE_MODELS = ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA L4", "NVIDIA H100 80GB HBM3")
MIG_LAYOUT = ("3g.40gb", "2g.20gb", "1g.10gb")
_CONTAINER = {"train": "trainer", "serve": "server", "dev": "notebook"}
_MIN_LIFETIME_S = 300.0


class _Builder:
    def __init__(self, seed: int, quirks: Quirks, horizon_s: float) -> None:
        self.rng = np.random.default_rng([seed, 0x5EED])
        self.quirks, self.horizon = quirks, horizon_s
        duty = traces.duty_cycles()
        self.n_series = len(duty.filled()[0])
        self.series_span_s = duty.duty.shape[1] * duty.step_s
        pods = traces.openb_pods()
        one = pods.filter(pods["num_gpu"] == 1)
        shared = one.filter(one["gpu_milli"] < 1000)
        self.shared_lives = shared["lifetime_s"].to_numpy().astype(float)
        self.shared_milli = shared["gpu_milli"].to_numpy()
        self.excl_lives = one.filter(one["gpu_milli"] == 1000)["lifetime_s"].to_numpy().astype(float)
        self.pods: list[PodSpec] = []

    def _uid(self) -> str:
        return str(uuid.UUID(bytes=self.rng.bytes(16), version=4))

    def pod(self, tenant: int, kind: str, holds: list[Holding], procs: list[ProcSpec],
            start: float = -math.inf, end: float = math.inf) -> PodSpec:
        ns, team, cc, apps = TENANTS[tenant % len(TENANTS)]
        suffix = "".join(self.rng.choice(list("bcdfghjklmnpqrstvwxz2456789"), 5))
        labels = [("app", apps[kind])]
        if self.rng.random() >= 0.15:
            labels.append(("team", team))
        labels.append(("cost-center", cc))
        spec = PodSpec(self._uid(), ns, f"{apps[kind]}-{suffix}", tuple(labels), _CONTAINER[kind],
                       tuple(holds), tuple(procs), start, end)
        self.pods.append(spec)
        return spec

    def proc(self, kind: str, gpu: int, budget_bytes: float, start: float = -math.inf, end: float = math.inf,
             mig: int = -1) -> ProcSpec:
        """A process of ``kind``: train (busy, floor 0.55-0.8), serve (the trace's bursts x1-4), dev (x2-6)."""
        r = self.rng
        floor, scale = {"train": (r.uniform(0.55, 0.8), r.uniform(1.0, 2.0)), "serve": (0.0, r.uniform(1.0, 4.0)),
                        "dev": (0.0, r.uniform(2.0, 6.0))}[kind]
        return ProcSpec(gpu=gpu, mig=mig, start_s=start, end_s=end, series=int(r.integers(self.n_series)),
                        phase_s=float(r.uniform(0, self.series_span_s)), floor=floor, scale=scale,
                        memory_bytes=int(budget_bytes * r.uniform(0.6, 0.9)), mem_util_ratio=float(r.uniform(0.2, 0.7)))

    def chain(self, lives: np.ndarray, tenant: int, kind: str, holding: Holding, budget: float) -> list[PodSpec]:
        """Back-to-back pods on one holding slot, lifetimes drawn from ``lives``, gaps ~exp(10 min)."""
        out = []
        t = -float(self.rng.uniform(0, 3600))
        while t < self.horizon:
            life = max(float(self.rng.choice(lives)), _MIN_LIFETIME_S)
            end = t + life if t + life < self.horizon else math.inf
            p_start = t + float(self.rng.uniform(5, 60))  # image pull / start-up: held, no process yet
            p_end = end - float(self.rng.uniform(0, 3)) if end < math.inf else math.inf
            out.append(self.pod(tenant, kind, [holding], [self.proc(kind, holding.gpu, budget, p_start, p_end)],
                                t, end))
            t = end + float(self.rng.exponential(600.0))
        return out

    def node(self, n: int, gpus_per_node: int) -> NodeSpec:
        self.pods = []
        model = NODE_MODELS[n % len(NODE_MODELS)]
        mem = traces.gpu_models()[model].memory_bytes
        mig_ok = traces.gpu_models()[model].mig_slices > 0
        roles = ["multi", "multi", "exclusive", "dev", "timeslice", "fractional",
                 "mig" if mig_ok and n % 2 == 0 else "mps", "free" if n % 2 == 0 else "timeslice"]
        roles += ["exclusive", "timeslice", "fractional", "dev"] * max(0, (gpus_per_node - 8 + 3) // 4)
        roles = roles[:gpus_per_node]
        if roles.count("multi") == 1:
            roles[0] = "exclusive"
        gpus = [GpuSpec(model) for _ in roles]
        t0 = int(self.rng.integers(len(TENANTS)))  # this node's first tenant; others follow round-robin
        for i, role in enumerate(roles):
            tenant = t0 + i
            if role == "multi" and (i == 0 or roles[i - 1] != "multi"):
                ddp = self.proc("train", i, mem)
                procs = [ddp, replace(ddp, gpu=i + 1)]  # same step, same shape
                self.pod(tenant, "train", [Holding(i), Holding(i + 1)], procs)
            elif role == "exclusive":
                self.chain(self.excl_lives, tenant, "train", Holding(i), mem)
            elif role == "dev":
                self.pod(tenant, "dev", [Holding(i)], self._windows(i, mem))
            elif role in ("timeslice", "mps"):
                replicas = int(self.rng.integers(2, 5 if role == "timeslice" else 4))
                gpus[i] = GpuSpec(model, mps=role == "mps")
                for r in range(replicas):
                    h = Holding(i, -1, "nvidia.com/gpu", 1.0 / replicas, r)
                    if role == "mps":
                        self.pod(tenant + r, "serve", [h], [self.proc("serve", i, mem / replicas)])
                    else:
                        self.chain(self.shared_lives, tenant + r, "serve", h, mem / replicas)
            elif role == "fractional":
                for r, milli in enumerate(self._millis()):
                    h = Holding(i, -1, "nvidia.com/gpu.shared", milli / 1000.0)
                    self.chain(self.shared_lives, tenant + r, "serve", h, mem * milli / 1000.0)
            elif role == "mig":
                gpus[i] = GpuSpec(model, mig_profiles=MIG_LAYOUT)
                for m, (profile, kind) in enumerate(zip(MIG_LAYOUT, ("train", "serve", None))):
                    h = Holding(i, m, f"nvidia.com/mig-{profile}", 1.0)
                    gib = int(profile.split(".")[1].rstrip("gb"))
                    procs = [] if kind is None else [self.proc(kind, i, gib * 2**30, mig=m)]
                    self.pod(tenant + m, kind or "dev", [h], procs)
        return NodeSpec(f"gpu-node-{n}", tuple(gpus), tuple(self.pods))

    def _windows(self, gpu: int, budget: float) -> list[ProcSpec]:
        """A notebook kernel: runs ~exp(90 min), then nothing ~exp(40 min); the last run never ends."""
        out, t = [], -float(self.rng.uniform(0, 3600))
        while True:
            end = t + float(self.rng.exponential(5400.0))
            if end >= self.horizon:
                out.append(self.proc("dev", gpu, budget, t, math.inf))
                return out
            out.append(self.proc("dev", gpu, budget, t, end))
            t = end + float(self.rng.exponential(2400.0))

    def _millis(self) -> list[int]:
        """2-3 gpu_milli draws from openb whose sum fits one GPU."""
        want = int(self.rng.integers(2, 4))
        out: list[int] = []
        for _ in range(50):
            m = int(self.rng.choice(self.shared_milli))
            if sum(out) + m <= 1000:
                out.append(m)
                if len(out) == want:
                    break
        return out


def demo_spec(n_nodes: int = 4, gpus_per_node: int = 8, seed: int = 0, quirks: Quirks | None = None,
              horizon_s: float = 86_400.0) -> FleetSpec:
    """The demo fleet as data. ``horizon_s`` is how far pod churn is planned
    (seconds); the last pod of each slot runs on past it. ``quirks`` (default
    none) also places the structural quirks (see :class:`Quirks`)."""
    quirks = quirks or Quirks()
    b = _Builder(seed, quirks, horizon_s)
    nodes = [b.node(n, gpus_per_node) for n in range(n_nodes)]
    if quirks.silent_process:
        nodes[0] = _silence_one(nodes[0])
    if quirks.pid_reuse:
        nodes[0] = _reuse_one_pid(nodes[0], horizon_s)
    if quirks.energy_reset and nodes[min(1, n_nodes - 1)].gpus:
        k = min(1, n_nodes - 1)
        g = min(2, len(nodes[k].gpus) - 1)
        nodes[k] = _set_gpu(nodes[k], g, energy_reset_at_s=(0.4 * horizon_s,))
    if quirks.gpu_lost and nodes[-1].gpus:
        g = min(2, len(nodes[-1].gpus) - 1)
        nodes[-1] = _set_gpu(nodes[-1], g, lost_at_s=0.75 * horizon_s)
    return FleetSpec(tuple(nodes), quirks)


def _set_gpu(node: NodeSpec, i: int, **changes: object) -> NodeSpec:
    gpus = list(node.gpus)
    gpus[i] = replace(gpus[i], **changes)  # type: ignore[arg-type]
    return replace(node, gpus=tuple(gpus))


def _replace_proc(node: NodeSpec, pod_i: int, proc_i: int, **changes: object) -> NodeSpec:
    pods = list(node.pods)
    procs = list(pods[pod_i].procs)
    procs[proc_i] = replace(procs[proc_i], **changes)  # type: ignore[arg-type]
    pods[pod_i] = replace(pods[pod_i], procs=tuple(procs))
    return replace(node, pods=tuple(pods))


def _silence_one(node: NodeSpec) -> NodeSpec:
    """The longest-running process on a shared (non-MIG) GPU holds a context and runs nothing (an idle
    notebook): NVML lists it and gives it no sample, as for any process with zero utilization."""
    cands = [(min(x.end_s, 1e12) - x.start_s, k, j) for k, p in enumerate(node.pods) for j, x in enumerate(p.procs)
             if x.mig < 0 and any(h.share < 1.0 for h in p.holds)]
    if not cands:
        return node
    _, k, j = max(cands)
    return _replace_proc(node, k, j, scale=0.0, floor=0.0)


def _reuse_one_pid(node: NodeSpec, horizon_s: float) -> NodeSpec:
    """A process that exits in the first half of the horizon gives its pid to a later one of another pod."""
    procs = [(x.end_s, x.start_s, k, j) for k, p in enumerate(node.pods) for j, x in enumerate(p.procs)]
    ended = sorted(r for r in procs if 0 < r[0] < horizon_s / 2)
    for end, _, k, j in ended:
        later = sorted((r for r in procs if r[1] >= end + 1.0 and r[2] != k), key=lambda r: r[1])
        if later:
            _, _, k2, j2 = later[0]
            pid = 31_337
            node = _replace_proc(node, k, j, pid=pid)
            return _replace_proc(node, k2, j2, pid=pid)
    return node
