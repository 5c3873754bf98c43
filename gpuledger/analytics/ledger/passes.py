"""The kernel's compiled passes: ``gpuledger.split``'s rule as loops over rows sorted by (unit, owner).

Each pass is one loop over rows sorted by (unit key, owner), or over units,
writing into arrays made once per call. Inputs are cast to fixed dtypes first
(int64 codes, float64 values, bool flags) and passed read-only, so one
compilation (cached in ``__pycache__``) serves every call; ``nogil`` lets two
chunks run in two threads at once. ``error_model="numpy"``: x / 0 gives inf
or NaN as in numpy, never raises. The Numba cache is keyed on this file
alone, so everything a pass uses is defined here (codes as literals below),
not imported: an edit elsewhere could not reach a cached pass.

Output rows are (unit, who, kind, rule, GPU-s, J, GB-s); ``who`` indexes the
chunk's owners, then ``n_own`` = nobody (``unattributed``) and ``n_own + 1``
= ``platform``. Kind and rule codes index ``columns.KINDS`` / ``columns.RULES``.
"""

from __future__ import annotations

import numba
import numpy as np

# Rule codes: indices into columns.RULES (the first six are gpuledger.split's busy rules).
(R_SAMPLES, R_REMAINDER, R_EQUAL, R_ALLOC, R_SERVER, R_NOBODY, R_IDLE, R_MIG, R_UNALLOC, R_HOLDERS_UNKNOWN,
 R_PROCESS_HOLDERS) = range(11)
# Kind codes: indices into columns.KINDS.
BUSY, IDLE, UNMEASURED, UNALLOCATED = range(4)
EPS = 1e-12  # the reference's threshold for a zero line (float noise below a picosecond)
_DBL_MAX = float(np.finfo(np.float64).max)

__all__ = ["BUSY", "EPS", "IDLE", "UNALLOCATED", "UNMEASURED", "busy_by_process", "by_share", "evidence", "holders",
           "per_unit", "ro", "unit_key", "unit_rules", "unknown_holders"]

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


@_jit
def unit_key(m: np.ndarray, gpu: np.ndarray, mig: np.ndarray, owner: np.ndarray, g_max: int,
              mi_max: int) -> tuple[np.ndarray, bool]:
    """Per row the unit key, and whether the rows are already sorted by (unit key, owner)."""
    key = np.empty(len(m), np.int64)
    ordered = True
    prev, prev_owner = np.int64(-1), np.int64(-1)
    for i in range(len(m)):
        k = (m[i] * g_max + gpu[i]) * mi_max + mig[i] + 1
        key[i] = k
        if k < prev or (k == prev and owner[i] < prev_owner):
            ordered = False
        prev, prev_owner = k, owner[i]
    return key, ordered


@_jit
def holders(key: np.ndarray, dkey: np.ndarray, owner: np.ndarray, share: np.ndarray,
             rep: np.ndarray, shared: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """Allocation rows (sorted by unit key, owner) -> one holder per (unit, owner) + per-unit totals.

    A holder's share is its rows' sum, replica their max, shared their or; rows of
    unknown units are dropped. Per unit: Σ share, holders, time-sliced (a replica
    ≥ 0), fractional (a shared resource or a holder's share below 1).
    """
    rows = len(key)
    h_unit, h_owner, h_share = np.empty(rows, np.int64), np.empty(rows, np.int64), np.empty(rows)
    share_sum, n_holders = np.zeros(n), np.zeros(n, np.int64)
    time_sliced, fractional = np.zeros(n, np.bool_), np.zeros(n, np.bool_)
    nh = 0
    j = 0
    i = 0
    while i < rows:
        k = key[i]
        while j < n and dkey[j] < k:
            j += 1
        s, r, sh = share[i], rep[i], shared[i]
        e = i + 1
        while e < rows and key[e] == k and owner[e] == owner[i]:
            s += share[e]
            r = max(r, rep[e])
            sh = sh or shared[e]
            e += 1
        if j < n and dkey[j] == k:
            h_unit[nh], h_owner[nh], h_share[nh] = j, owner[i], s
            nh += 1
            share_sum[j] += s
            n_holders[j] += 1
            if r >= 0:
                time_sliced[j] = True
            if sh or s < 1.0:
                fractional[j] = True
        i = e
    return h_unit[:nh], h_owner[:nh], h_share[:nh], share_sum, n_holders, time_sliced, fractional


@_jit
def evidence(key: np.ndarray, dkey: np.ndarray, owner: np.ndarray, samples: np.ndarray,
              ev_in: np.ndarray, pod_owner: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """Process rows (sorted by unit key, owner) -> unit per row (n: unknown), clean evidence, per-unit totals.

    Evidence is ``sm_util_sum`` with NaN -> 0, +inf -> float max, below 0 -> 0 (numpy's
    nan_to_num then clip). Per unit: processes, those of a pod, sampled ones, unsampled
    ones of a pod, Σ evidence.
    """
    rows = len(key)
    unit, ev = np.empty(rows, np.int64), np.empty(rows)
    n_procs, n_pod = np.zeros(n + 1, np.int64), np.zeros(n + 1, np.int64)
    n_smp, n_uns, ev_sum = np.zeros(n + 1, np.int64), np.zeros(n + 1, np.int64), np.zeros(n + 1)
    j = 0
    for i in range(rows):
        k = key[i]
        while j < n and dkey[j] < k:
            j += 1
        u = j if j < n and dkey[j] == k else n
        unit[i] = u
        x = ev_in[i]
        if np.isnan(x):
            x = 0.0
        elif x > _DBL_MAX:
            x = _DBL_MAX
        x = max(x, 0.0)  # x is not NaN here
        ev[i] = x
        hp = pod_owner[owner[i]]
        n_procs[u] += 1
        if hp:
            n_pod[u] += 1
        if samples[i] > 0:
            n_smp[u] += 1
        elif hp:
            n_uns[u] += 1
        ev_sum[u] += x
    return unit, ev, n_procs[:n], n_pod[:n], n_smp[:n], n_uns[:n], ev_sum[:n]


@_jit
def unit_rules(share_sum: np.ndarray, held: np.ndarray, n_holders: np.ndarray, time_sliced: np.ndarray,
               fractional: np.ndarray, is_mig: np.ndarray, util: np.ndarray, capacity: np.ndarray,
               energy: np.ndarray, util_samples: np.ndarray, n_procs: np.ndarray, n_pod: np.ndarray,
               n_smp: np.ndarray, n_uns: np.ndarray, ev_sum: np.ndarray, floats: np.ndarray, flags: np.ndarray,
               sharing: np.ndarray) -> None:
    """Per-unit quantities (``gpuledger.split.split_units``) in one loop: busy GPU-seconds and energy,
    the unplaced remainder r (``split.SAMPLE_TOLERANCE``, ``LOST_SAMPLES`` as literals: module doc),
    idle per unit of share, unallocated idle, and which rules apply.

    Written into ``floats`` (8 × n), ``flags`` (6 × (n + 1), zeroed) and ``sharing``: blocks numpy
    allocates (large ones on huge pages), not 14 small arrays each faulting in page by page.
    """
    n = len(util)
    busy, busy_energy, r, ev_scale = floats[0], floats[1], floats[2], floats[3]
    idle_s, idle_e, un_s, un_e = floats[4], floats[5], floats[6], floats[7]
    measured, split, special = flags[0], flags[1], flags[2]  # split[n]: rows of unknown units
    rem, by_share, nobody = flags[3], flags[4], flags[5]
    for u in range(n):
        ss, ut, cap, en = share_sum[u], util[u], capacity[u], energy[u]
        sharing[u] = 3 if is_mig[u] else 4 if n_holders[u] == 0 else 1 if time_sliced[u] else \
            2 if fractional[u] else 0
        norm = ss if not ss < 1.0 else 1.0  # np.maximum(Σ share, 1): NaN stays NaN
        meas = not np.isnan(ut)
        measured[u] = meas
        b = ut * cap if meas else 0.0
        busy[u] = b
        busy_energy[u] = en * ut
        idle_en = en * (1.0 - ut) if meas else en
        rm = n_uns[u] > 0 and n_smp[u] > 0 and util_samples[u] > 0 and b > 0
        rem[u] = rm
        rr = 0.0
        if rm:  # what the samples cannot place, to nobody: split.SAMPLE_TOLERANCE 0.1, LOST_SAMPLES 2.0
            tol = min(max(0.1, 2.0 / util_samples[u]), 0.5)
            rr = 1.0 - ev_sum[u] * cap / util_samples[u] / b / (1.0 - tol)
            rr = 0.0 if rr < 0.0 else 1.0 if rr > 1.0 else rr  # noqa: FURB136 -- np.clip: NaN stays NaN
        r[u] = rr
        # w = (1 - r) × evidence / Σ evidence as one division per row (a reciprocal of a
        # denormal Σ would overflow); r = 1 -> inf -> w = 0; Σ = 0 units take a fallback weight.
        ev_scale[u] = ev_sum[u] / (1.0 - rr)
        idle_s[u] = ((cap - b) if meas else cap) / norm
        idle_e[u] = idle_en / norm
        server_only = n_pod[u] == 0 and ss > 0
        split[u] = meas and n_procs[u] > 0 and (ev_sum[u] > 0 or not server_only)
        special[u] = rm or ev_sum[u] <= 0
        no_proc = meas and b > 0 and (n_procs[u] == 0 or (ev_sum[u] <= 0 and server_only))
        by_share[u] = no_proc and ss > 0
        nobody[u] = no_proc and ss <= 0 and abs(b) > EPS
        un_s[u] = (cap - b) * (1.0 - held[u])
        un_e[u] = idle_en * (1.0 - held[u])


@_jit
def busy_by_process(unit: np.ndarray, owner: np.ndarray, ev: np.ndarray, mem_bytes: np.ndarray,
               pod_owner: np.ndarray, split: np.ndarray, special: np.ndarray, ev_scale: np.ndarray, r: np.ndarray,
               rem: np.ndarray, ev_sum: np.ndarray, n_pod: np.ndarray, n_procs: np.ndarray, busy: np.ndarray,
               busy_energy: np.ndarray, dt: np.ndarray,
               o_unit: np.ndarray, o_who: np.ndarray, o_kind: np.ndarray, o_rule: np.ndarray, o_gpu: np.ndarray,
               o_en: np.ndarray, o_mem: np.ndarray, at: int) -> int:
    """Busy by process: each row's weight and rule, summed per (unit, owner, rule); returns the next free row.

    Weight: evidence / Σ evidence × (1 - r) on the common path (an unsampled process: 0;
    the unplaced r is ``per_unit``'s); on units needing a fallback, 0 where the remainder
    applies (nothing sampled explains busy: r = 1), else an equal split among pod processes
    (or all processes). Memory: GB-seconds, null when no row of the group reports it.
    """
    rows = len(unit)
    g, e, mm = np.zeros(3), np.zeros(3), np.zeros(3)
    cnt, mn = np.zeros(3, np.int64), np.zeros(3, np.int64)
    i = 0
    while i < rows:
        u = unit[i]
        if not split[u]:
            i += 1
            continue
        end = i
        if not special[u]:  # the common path: every row by its evidence, one rule
            gs, en, ms, ns = 0.0, 0.0, 0.0, 0
            while end < rows and unit[end] == u and owner[end] == owner[i]:  # one owner on one unit
                w = ev[end] / ev_scale[u]
                gs += busy[u] * w
                en += busy_energy[u] * w
                mb = mem_bytes[end]
                if not np.isnan(mb):
                    ms += mb / 1e9 * dt[u]
                    ns += 1
                end += 1
            mv = ms if ns > 0 else np.nan
            if abs(gs) > EPS or not np.isnan(mv):
                o_unit[at], o_who[at], o_kind[at], o_rule[at] = u, owner[i], BUSY, R_SAMPLES
                o_gpu[at], o_en[at], o_mem[at] = gs, en, mv
                at += 1
            i = end
            continue
        for q in range(3):
            cnt[q], mn[q], g[q], e[q], mm[q] = 0, 0, 0.0, 0.0, 0.0
        while end < rows and unit[end] == u and owner[end] == owner[i]:
            x = ev[end]
            rule = R_SAMPLES
            if ev_sum[u] > 0:
                w = (1.0 - r[u]) * x / ev_sum[u]
            elif rem[u]:
                w = 0.0
            elif n_pod[u] > 0:
                w, rule = (1.0 if pod_owner[owner[end]] else 0.0) / n_pod[u], R_EQUAL
            else:
                w, rule = 1.0 / n_procs[u], R_EQUAL
            cnt[rule] += 1
            g[rule] += busy[u] * w
            e[rule] += busy_energy[u] * w
            mb = mem_bytes[end]
            if not np.isnan(mb):
                mm[rule] += mb / 1e9 * dt[u]
                mn[rule] += 1
            end += 1
        for rule in range(3):
            mv = mm[rule] if mn[rule] > 0 else np.nan
            if cnt[rule] and (abs(g[rule]) > EPS or not np.isnan(mv)):
                o_unit[at], o_who[at], o_kind[at], o_rule[at] = u, owner[i], BUSY, rule
                o_gpu[at], o_en[at], o_mem[at] = g[rule], e[rule], mv
                at += 1
        i = end
    return at



@_jit
def by_share(h_unit: np.ndarray, h_owner: np.ndarray, h_share: np.ndarray, share_sum: np.ndarray,
                by_share: np.ndarray, n_procs: np.ndarray, busy: np.ndarray, busy_energy: np.ndarray,
                idle_s: np.ndarray, idle_e: np.ndarray, measured: np.ndarray,
                o_unit: np.ndarray, o_who: np.ndarray, o_kind: np.ndarray, o_rule: np.ndarray, o_gpu: np.ndarray,
                o_en: np.ndarray, o_mem: np.ndarray, at: int) -> int:
    """Rows by allocation share, per holder: busy without pod evidence (by share / Σ share), idle or
    unmeasured (idle per unit of share × share). Returns the next free row."""
    for h in range(len(h_unit)):
        u = h_unit[h]
        if by_share[u]:
            frac = h_share[h] / share_sum[u]
            gs = busy[u] * frac
            if abs(gs) > EPS:
                o_unit[at], o_who[at], o_kind[at] = u, h_owner[h], BUSY
                o_rule[at] = R_ALLOC if n_procs[u] == 0 else R_SERVER
                o_gpu[at], o_en[at], o_mem[at] = gs, busy_energy[u] * frac, np.nan
                at += 1
        gs = idle_s[u] * h_share[h]
        if abs(gs) > EPS:
            o_unit[at], o_who[at] = u, h_owner[h]
            if measured[u]:
                o_kind[at], o_rule[at] = IDLE, R_IDLE
            else:
                o_kind[at], o_rule[at] = UNMEASURED, R_MIG
            o_gpu[at], o_en[at], o_mem[at] = gs, idle_e[u] * h_share[h], np.nan
            at += 1
    return at


@_jit
def unknown_holders(o_unit: np.ndarray, o_who: np.ndarray, o_kind: np.ndarray, at: int, flagged: np.ndarray,
                     is_pod: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pods that ran on each unit whose holders are unknown (``flagged``): owners with a pod
    (``is_pod``, by who) and a busy row among rows [0, at). As lists per unit: ``who[first[u]:
    first[u] + count[u]]``, each owner once (an owner may have a busy row under several rules)."""
    n = len(flagged)
    bound = np.zeros(n + 1, np.int64)  # busy rows per flagged unit: room for its list
    for i in range(at):
        u = o_unit[i]
        if o_kind[i] == BUSY and flagged[u] and is_pod[o_who[i]]:
            bound[u + 1] += 1
    first = np.cumsum(bound)[:n]
    count = np.zeros(n, np.int64)
    who = np.empty(bound.sum(), np.int64)
    for i in range(at):
        u = o_unit[i]
        w = o_who[i]
        if o_kind[i] == BUSY and flagged[u] and is_pod[w]:
            seen = False
            for k in range(first[u], first[u] + count[u]):  # a handful of pods per GPU: a scan is enough
                if who[k] == w:
                    seen = True
                    break
            if not seen:
                who[first[u] + count[u]] = w
                count[u] += 1
    return first, count, who


@_jit
def per_unit(busy: np.ndarray, busy_energy: np.ndarray, nobody: np.ndarray, rem: np.ndarray, r: np.ndarray,
               un_s: np.ndarray, un_e: np.ndarray, n_own: int, flagged: np.ndarray, first: np.ndarray,
               count: np.ndarray, who: np.ndarray,
               o_unit: np.ndarray, o_who: np.ndarray, o_kind: np.ndarray, o_rule: np.ndarray, o_gpu: np.ndarray,
               o_en: np.ndarray, o_mem: np.ndarray, at: int) -> int:
    """Per unit: busy nobody holds, or the busy the samples cannot place (``rem``: r of busy, to nobody,
    rule unplaced remainder), then its unallocated idle -- on a ``flagged`` unit (holders
    unknown) split equally among the pods that ran there (``unknown_holders``) as allocated idle,
    else kept on the platform under the rule ``allocations_unavailable``. Returns the next free row."""
    for u in range(len(busy)):
        if nobody[u]:
            o_unit[at], o_who[at], o_kind[at], o_rule[at] = u, n_own, BUSY, R_NOBODY
            o_gpu[at], o_en[at], o_mem[at] = busy[u], busy_energy[u], np.nan
            at += 1
        elif rem[u] and abs(busy[u] * r[u]) > EPS:
            o_unit[at], o_who[at], o_kind[at], o_rule[at] = u, n_own, BUSY, R_REMAINDER
            o_gpu[at], o_en[at], o_mem[at] = busy[u] * r[u], busy_energy[u] * r[u], np.nan
            at += 1
        if abs(un_s[u]) > EPS:
            if flagged[u] and count[u] > 0:
                k = count[u]
                for j in range(first[u], first[u] + k):
                    o_unit[at], o_who[at], o_kind[at], o_rule[at] = u, who[j], IDLE, R_PROCESS_HOLDERS
                    o_gpu[at], o_en[at], o_mem[at] = un_s[u] / k, un_e[u] / k, np.nan
                    at += 1
            else:
                o_unit[at], o_who[at], o_kind[at] = u, n_own + 1, UNALLOCATED
                o_rule[at] = R_HOLDERS_UNKNOWN if flagged[u] else R_UNALLOC
                o_gpu[at], o_en[at], o_mem[at] = un_s[u], un_e[u], np.nan
                at += 1
    return at


def ro(a: np.ndarray) -> np.ndarray:
    """A read-only view: Polars' zero-copy buffers are read-only, copies are not, and Numba types the two
    differently -- one flavour for every input keeps one compiled signature per function."""
    v = a.view()
    v.flags.writeable = False
    return v
