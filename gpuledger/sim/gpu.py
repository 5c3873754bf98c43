"""One simulated physical GPU: driver sample buffers, energy counter, ground truth.

Time is cut into driver *ticks*: tick ``k >= 1`` is stamped
``start_us + offset_us + k * period_us`` (a per-GPU offset below one period, as
real GPUs are not in phase) and covers the ``period_us`` before its stamp. A
process is running during tick ``k`` when the tick's midpoint lies in its
``[start_s, end_s)``.

Physics of sharing, per tick and per *domain* (the whole GPU, or one MIG
device): each running process ``p`` demands ``d_p`` (0..1, from its trace
series); the domain time-slices, so ``actual_p = d_p`` when ``sum(d) <= 1``,
else ``d_p / sum(d)``; the domain's utilization is ``sum(actual)``. Board power
is ``idle_w + (tdp_w - idle_w) * u`` with ``u`` the slice-weighted sum of domain
utilizations; the energy counter (mJ) integrates it tick by tick.

Ticks are computed in blocks of ``block_samples`` (vectorised numpy), strictly
in order and once, so what a tick holds never depends on when or how often it
is read. Only ticks up to "now" are visible (and counted in the truth); the
last ``buffer_samples`` ticks are readable, like the driver's ring buffer.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from gpuledger.agent.backend import ComputeProcess, Pod
from gpuledger.sim.spec import GpuSpec, ProcSpec, Quirks, mig_profile_slices
from gpuledger.sim.traces import GpuModel

__all__ = ["ResolvedProc", "Series", "SimGpu", "Timing"]


@dataclass(frozen=True)
class Timing:
    """Clock parameters shared by every GPU of a fleet."""

    start_us: int  # simulation start, us since the epoch
    period_us: int  # driver sample period, us
    buffer_samples: int  # ticks the driver keeps readable (ring buffer depth)
    block_samples: int  # ticks computed per numpy block (>= buffer_samples)


@dataclass(frozen=True)
class Series:
    """The demand inputs: duty cycle (0..1) and normalised memory (0..1) per series."""

    duty: np.ndarray  # float64 (n_series, n_steps)
    mem_norm: np.ndarray  # float64 (n_series, n_steps): memory used / the series' peak
    step_s: float


@dataclass(frozen=True)
class ResolvedProc:
    """A ProcSpec with its host pid and owner resolved by the node."""

    spec: ProcSpec
    pid: int
    pod: Pod
    container: str


@dataclass
class _Block:
    k0: int  # first tick of the block
    proc: np.ndarray  # int32 (lanes, B): running process index, -1 = none
    actual: np.ndarray  # float64 (lanes, B): fraction of the tick the process ran
    util: np.ndarray  # float64 (domains, B): domain utilization 0..1
    energy_mj: np.ndarray  # float64 (B,): energy of each tick, mJ
    counter_mj: np.ndarray  # float64 (B,): counter value after each tick, mJ
    power_w: np.ndarray  # float64 (B,)
    rows: tuple[np.ndarray, ...] | None = None  # reported process samples, lazily built


@dataclass
class _Lane:
    """Processes of one domain that never overlap in time, sorted by start."""

    domain: int
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    procs: list[int] = field(default_factory=list)


class SimGpu:
    """Ticks, buffers and truth of one GPU. SimNode adds the NVML-shaped surface."""

    def __init__(self, spec: GpuSpec, model: GpuModel, procs: list[ResolvedProc], *, timing: Timing,
                 series: Series, quirks: Quirks, rng_key: tuple[int, ...]) -> None:
        self.spec, self.model, self.procs, self.timing = spec, model, procs, timing
        self.series, self.quirks, self.rng_key = series, quirks, rng_key
        rng = np.random.default_rng([*rng_key, 0])
        self.offset_us = int(rng.integers(0, timing.period_us))
        self.counter0_mj = float(rng.integers(10**9, 10**11))  # energy since driver load, mJ (arbitrary)
        self.counter_mj = self.counter0_mj  # counter after the last computed tick
        # Per-process smUtil of this GPU reads this factor high or low (the driver's per-process and
        # device figures disagree by a few %): log-uniform within ±process_bias, drawn once per GPU.
        b = quirks.process_bias
        self.bias = float(np.exp(rng.uniform(np.log1p(-b), np.log1p(b)))) if b > 0 else 1.0
        self.period_s = timing.period_us / 1e6
        if spec.mig_profiles:
            if model.mig_slices == 0:
                raise ValueError(f"{model.name} does not support MIG (profiles {spec.mig_profiles})")
            self.fractions = np.array([mig_profile_slices(p)[0] / model.mig_slices for p in spec.mig_profiles])
        else:
            self.fractions = np.ones(1)
        self.lost_at_us = (timing.start_us + round(spec.lost_at_s * 1e6) if spec.lost_at_s is not None
                           else np.iinfo(np.int64).max)
        self.k_max = self._tick_at(spec.lost_at_s) if spec.lost_at_s is not None else np.iinfo(np.int64).max
        self.reset_ticks = sorted(self._tick_at(r) + 1 for r in spec.energy_reset_at_s)
        p = [r.spec for r in procs]
        self.pid = np.array([r.pid for r in procs], dtype=np.uint32)
        self.p_series = np.array([x.series for x in p], dtype=np.int64)
        self.p_phase = np.array([x.phase_s for x in p])
        self.p_floor = np.array([x.floor for x in p])
        self.p_scale = np.array([x.scale for x in p])
        self.p_silent = np.array([x.silent for x in p], dtype=bool)
        self.p_memratio = np.array([x.mem_util_ratio for x in p])
        self.lanes = self._pack_lanes(p)
        n_dom = len(self.fractions)
        self.lane_dom = np.array([ln.domain for ln in self.lanes], dtype=np.int64)
        self.dom_matrix = np.zeros((n_dom, len(self.lanes)))
        self.dom_matrix[self.lane_dom, np.arange(len(self.lanes))] = 1.0
        self.blocks: dict[int, _Block] = {}
        self.next_block = 0  # blocks below this are computed and their totals accumulated
        self.busy_s = np.zeros(len(procs))  # per process, seconds of its own domain
        self.ticks = np.zeros(len(procs), dtype=np.int64)  # per process, ticks running
        self.dom_busy_s = np.zeros(n_dom)  # per domain, seconds of the domain
        self.energy_true_mj = 0.0
        self.gr_seen: dict[int, int] = {}  # mig -> last tick read by mig_gr_engine_active
        self._tick_cache = (-1, 0)  # (now_us, tick) of the latest tick_of_us call
        self._ready_k = -1  # ticks up to this are computed and older blocks folded
        self._procs_cache: tuple[tuple[float, int | None], list[ComputeProcess]] = ((-1.0, None), [])
        self._at_cache: tuple[int, tuple[float, float, float]] = (-1, (0.0, 0.0, 0.0))

    # --- ticks -------------------------------------------------------------------

    def _tick_at(self, t_s: float) -> int:
        """The last tick whose stamp is at or before ``t_s`` seconds after start (0 = none)."""
        return max(0, (round(t_s * 1e6) - self.offset_us) // self.timing.period_us)

    def tick_of_us(self, now_us: int) -> int:
        """The last tick stamped at or before ``now_us``, capped where the GPU was lost."""
        if now_us != self._tick_cache[0]:
            k = (now_us - self.timing.start_us - self.offset_us) // self.timing.period_us
            self._tick_cache = (now_us, int(min(max(k, 0), self.k_max)))
        return self._tick_cache[1]

    def stamp_us(self, k: np.ndarray) -> np.ndarray:
        """Driver timestamps of ticks ``k`` (uint64 us)."""
        return (self.timing.start_us + self.offset_us + k * self.timing.period_us).astype(np.uint64)

    def lost(self, now_us: int) -> bool:
        """Whether the GPU has fallen off the bus by ``now_us``."""
        return now_us >= self.lost_at_us

    def _pack_lanes(self, procs: list[ProcSpec]) -> list[_Lane]:
        lanes: list[_Lane] = []
        for i in sorted(range(len(procs)), key=lambda j: (procs[j].start_s, j)):
            x = procs[i]
            dom = max(x.mig, 0)
            if (x.mig >= 0) != bool(self.spec.mig_profiles) or dom >= len(self.fractions):
                raise ValueError(f"process pid {self.procs[i].pid}: mig={x.mig} does not fit GPU {self.spec}")
            if x.end_s <= x.start_s:
                continue
            lane = next((ln for ln in lanes if ln.domain == dom and ln.ends[-1] <= x.start_s), None)
            if lane is None:
                lane = _Lane(dom)
                lanes.append(lane)
            lane.starts.append(x.start_s)
            lane.ends.append(x.end_s)
            lane.procs.append(i)
        return lanes

    # --- blocks ------------------------------------------------------------------

    def advance_to(self, k_now: int) -> None:
        """Compute every block up to tick ``k_now``; fold finished ones into the totals."""
        if k_now <= self._ready_k:
            return
        b_now = max(k_now - 1, 0) // self.timing.block_samples
        while self.next_block < b_now:
            blk = self._block(self.next_block)
            busy, ticks, dom, energy = self._sums(blk, len(blk.power_w))
            self.busy_s += busy
            self.ticks += ticks
            self.dom_busy_s += dom
            self.energy_true_mj += energy
            self.next_block += 1
        self._block(b_now)
        for b in [b for b in self.blocks if b < b_now - 1]:
            del self.blocks[b]
        self._ready_k = (b_now + 1) * self.timing.block_samples

    def totals(self, k_now: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Ground truth over ticks 1..k_now: per-process busy seconds (own domain) and
        ticks running, per-domain busy seconds, true energy (mJ, never reset)."""
        self.advance_to(k_now)
        blk = self.blocks[max(k_now - 1, 0) // self.timing.block_samples]
        busy, ticks, dom, energy = self._sums(blk, max(k_now - blk.k0 + 1, 0))
        return self.busy_s + busy, self.ticks + ticks, self.dom_busy_s + dom, self.energy_true_mj + energy

    def _sums(self, blk: _Block, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        proc, act = blk.proc[:, :n], blk.actual[:, :n]
        on = proc >= 0
        busy = np.bincount(proc[on], weights=act[on], minlength=len(self.procs)) * self.period_s
        ticks = np.bincount(proc[on], minlength=len(self.procs))
        return busy, ticks, blk.util[:, :n].sum(axis=1) * self.period_s, float(blk.energy_mj[:n].sum())

    def _block(self, b: int) -> _Block:
        if b in self.blocks:
            return self.blocks[b]
        n = self.timing.block_samples
        k = np.arange(b * n + 1, (b + 1) * n + 1, dtype=np.int64)
        mid = (self.offset_us + (k - 0.5) * self.timing.period_us) / 1e6  # seconds since start
        alive = k <= self.k_max
        proc = np.full((len(self.lanes), n), -1, dtype=np.int32)
        for li, ln in enumerate(self.lanes):
            pos = np.searchsorted(ln.starts, mid, side="right") - 1
            posc = np.maximum(pos, 0)
            on = (pos >= 0) & (mid < np.asarray(ln.ends)[posc]) & alive
            proc[li] = np.where(on, np.asarray(ln.procs, dtype=np.int32)[posc], -1)
        demand = self._demand(proc, mid)
        total = self.dom_matrix @ demand  # (domains, B)
        factor = 1.0 / np.maximum(total, 1.0)  # serialise: scale down only when oversubscribed
        actual = demand * factor[self.lane_dom]
        util = np.minimum(total, 1.0)
        m = self.model
        power = np.where(alive, m.idle_w + (m.tdp_w - m.idle_w) * (self.fractions @ util), 0.0)
        energy = power * self.period_s * 1000.0  # W * s -> mJ
        counter = self.counter_mj + np.cumsum(energy)
        for kr in self.reset_ticks:  # driver reload: the counter restarts from 0 before tick kr
            j = kr - int(k[0])
            if 0 <= j < n:
                counter[j:] -= counter[j] - energy[j]
        self.counter_mj = float(counter[-1])
        blk = _Block(int(k[0]), proc, actual, util, energy, counter, power)
        self.blocks[b] = blk
        return blk

    def _demand(self, proc: np.ndarray, mid: np.ndarray) -> np.ndarray:
        """Duty-cycle demand (0..1) of the running process of each (lane, tick)."""
        pc = np.maximum(proc, 0)
        s = self.series
        x = (mid[None, :] + self.p_phase[pc]) / s.step_s
        base = np.floor(x)
        f = x - base
        n_steps = s.duty.shape[1]
        i0 = base.astype(np.int64) % n_steps
        row = self.p_series[pc]
        d = s.duty[row, i0] * (1.0 - f) + s.duty[row, (i0 + 1) % n_steps] * f
        demand: np.ndarray = np.clip(self.p_floor[pc] + self.p_scale[pc] * d, 0.0, 1.0) * (proc >= 0)
        return demand

    def _rows(self, blk: _Block) -> tuple[np.ndarray, ...]:
        """Reported process samples of a block, in tick order: (tick, pid, sm %, mem %)."""
        if blk.rows is None:
            rng = np.random.default_rng([*self.rng_key, 1, blk.k0])
            proc, act = blk.proc.T, blk.actual.T  # (B, lanes): row-major = tick order
            # NVML: "one utilization sample structure is returned per process running, that had some
            # non-zero utilization during the last sample period" -- an idle context holder gets none.
            keep = (proc >= 0) & ~self.p_silent[np.maximum(proc, 0)] & (act > 0)
            q = self.quirks
            if q.missing_sample_rate > 0:
                keep &= rng.random(proc.shape) >= q.missing_sample_rate
            sm = act * 100.0 * self.bias
            if q.process_noise > 0:
                z = rng.standard_normal(proc.shape)
                sm = np.clip(sm * np.exp(q.process_noise * z - q.process_noise**2 / 2), 0.0, 100.0)
            tick = np.broadcast_to((blk.k0 + np.arange(proc.shape[0]))[:, None], proc.shape)
            p = proc[keep]
            blk.rows = (tick[keep], self.pid[p], sm[keep], sm[keep] * self.p_memratio[p])
        return blk.rows

    # --- reads (the caller has checked the GPU is not lost) ------------------------

    def _window(self, since_us: int, k_now: int) -> tuple[int, int]:
        """Ticks (lo, hi] readable now and stamped after ``since_us``."""
        k_since = (since_us - self.timing.start_us - self.offset_us) // self.timing.period_us
        return max(k_now - self.timing.buffer_samples, k_since, 0), k_now

    def _blocks_over(self, lo: int, hi: int) -> list[_Block]:
        n = self.timing.block_samples
        if hi <= lo:
            return []
        return [self.blocks[b] for b in range(lo // n, (hi - 1) // n + 1)]

    def util_samples(self, since_us: int, k_now: int) -> tuple[np.ndarray, np.ndarray]:
        """Device utilization samples after ``since_us``: (stamps uint64 us, percent)."""
        lo, hi = self._window(since_us, k_now)
        vals = [blk.util[0, max(lo + 1 - blk.k0, 0):hi + 1 - blk.k0] for blk in self._blocks_over(lo, hi)]
        v = np.concatenate(vals) if vals else np.zeros(0)
        return self.stamp_us(np.arange(lo + 1, lo + 1 + len(v))), v * 100.0

    def process_samples(self, since_us: int, k_now: int) -> tuple[np.ndarray, ...]:
        """Per-process samples after ``since_us``: (pid uint32, stamps uint64, sm %, mem %)."""
        lo, hi = self._window(since_us, k_now)
        parts = []
        for blk in self._blocks_over(lo, hi):
            tick, pid, sm, mem = self._rows(blk)
            a, z = np.searchsorted(tick, [lo + 1, hi + 1])
            parts.append((tick[a:z], pid[a:z], sm[a:z], mem[a:z]))
        if not parts:
            return np.zeros(0, np.uint32), np.zeros(0, np.uint64), np.zeros(0), np.zeros(0)
        if len(parts) == 1:
            tick, pid, sm, mem = parts[0]
        else:
            tick, pid, sm, mem = (np.concatenate(c) for c in zip(*parts))
        return pid, self.stamp_us(tick), sm, mem

    def at(self, k_now: int) -> tuple[float, float, float]:
        """(power W, effective utilization 0..1, energy counter mJ) after tick ``k_now``."""
        if k_now == 0:
            return self.model.idle_w, 0.0, self.counter0_mj
        if self._at_cache[0] != k_now:
            blk = self.blocks[(k_now - 1) // self.timing.block_samples]
            j = k_now - blk.k0
            u = float(self.fractions @ blk.util[:, j])
            self._at_cache = (k_now, (float(blk.power_w[j]), u, float(blk.counter_mj[j])))
        return self._at_cache[1]

    def gr_engine_active(self, mig: int, k_now: int) -> float:
        """Mean utilization (0..1) of MIG device ``mig`` over the ticks since the previous read."""
        lo = max(self.gr_seen.get(mig, 0), k_now - self.timing.buffer_samples, 0)
        self.gr_seen[mig] = k_now
        if k_now == 0:
            return 0.0
        lo = min(lo, k_now - 1)  # read twice within one tick: the latest tick again
        vals = [blk.util[mig, max(lo + 1 - blk.k0, 0):k_now + 1 - blk.k0] for blk in self._blocks_over(lo, k_now)]
        return float(np.concatenate(vals).mean())

    def running(self, now_s: float, mig: int | None = None) -> list[int]:
        """Indices of processes running at ``now_s`` (seconds since start), optionally of one MIG device."""
        out = []
        for ln in self.lanes:
            if mig is not None and ln.domain != mig:
                continue
            pos = bisect.bisect_right(ln.starts, now_s) - 1
            if pos >= 0 and now_s < ln.ends[pos]:
                out.append(ln.procs[pos])
        return sorted(out)

    def memory_used(self, i: int, now_s: float) -> int:
        """Bytes used by process ``i`` at ``now_s``: its peak scaled by its trace's memory shape."""
        x = self.procs[i].spec
        s = self.series
        step = int((now_s + x.phase_s) // s.step_s) % s.mem_norm.shape[1]
        return int(x.memory_bytes * s.mem_norm[x.series, step])

    def compute_processes(self, now_s: float, mig: int | None = None) -> list[ComputeProcess]:
        """Processes with a context at ``now_s`` (cached per instant: memory_info reads it too)."""
        key = (now_s, mig)
        if self._procs_cache[0] != key:
            kind = 2 if self.spec.mps else 0
            procs = [ComputeProcess(int(self.pid[i]), self.memory_used(i, now_s), kind)
                     for i in self.running(now_s, mig)]
            self._procs_cache = (key, procs)
        return list(self._procs_cache[1])
