"""The whole ledger on integer codes: ``attribute``'s rows at bulk speed.

``ledger.attribute`` is the readable reference (Polars joins on the message
key). This module computes the same rows -- every kind, rule, energy and
memory figure -- for one chunk of messages without joins, hash group-bys or
per-row strings, so that a month of 1,000 GPUs at 10 s (~1e9
process-intervals) streams through in bounded memory:

- A :class:`Chunk` carries integer codes instead of strings: message ordinal
  ``m`` (row of ``messages``), ``owner`` (row of ``owners``: pod uid,
  namespace, pod, tenant; the row whose ``pod_uid`` is null stands for
  "no pod") and ``ident`` (row of ``idents``: node, GPU index, uuid, model,
  profile). ``job.py`` reads chunks in this form straight from DuckDB;
  :func:`code` builds one from store-shaped frames (tests, benchmarks).
- Units (GPU intervals, MIG slices, a MIG parent's unconfigured remainder)
  get the int64 key ``(m × G + gpu) × M + mig + 1``; device rows sorted by it
  are the unit table (numpy, one row per unit). Process and allocation rows
  arrive sorted by (unit key, owner) -- the job's ORDER BY; unsorted input is
  sorted first (stable), never mis-attributed.
- The row-sized work is a handful of compiled passes (Numba, ``_jit``): each
  walks the sorted rows once beside the unit table (a merge, no search),
  sums per unit and per (unit, owner, rule), and writes the output rows into
  arrays made once per chunk -- no temporaries per step. Per-unit quantities
  are one more compiled loop over units. Inputs are cast to int64 / float64 /
  bool and passed read-only, so each function has one compiled signature,
  cached in ``__pycache__`` (a fresh machine compiles once, ~5 s); the passes
  release the GIL, so two chunks attribute in two threads at once.
- Output rows name their unit and owner by index (:class:`Result`);
  ``Result.frame()`` gives LEDGER_COLUMNS with strings as ``pl.Enum``
  (dictionary-encoded per chunk): integer gathers, not string copies.

Duplicate device rows for one unit are the one input this kernel does not
model (``attribute`` multiplies them through its joins): such a chunk goes
through ``attribute`` itself (:func:`ledger` says so in ``Result.fallback``).
NaN in a float column counts as null, as the store writes it. Checked against
``attribute`` in tests/analytics/test_ledger_fast.py (scenarios, hypothesis,
the job end to end).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import polars as pl

from gpuledger.analytics import kinds as K
from gpuledger.analytics.ledger import LEDGER_COLUMNS, MSG, attribute

__all__ = ["Chunk", "Result", "code", "decode", "identify", "ledger"]

_KINDS = list(K.KINDS)  # BUSY, ALLOCATED_IDLE, UNMEASURED, UNALLOCATED = 0..3
_RULES = [K.RULE_PROCESS_SAMPLES, K.RULE_UNSAMPLED_REMAINDER, K.RULE_EQUAL_PROCESSES, K.RULE_ALLOCATION_SHARE,
          K.RULE_SERVER_ONLY, K.RULE_NO_HOLDER, K.RULE_IDLE_SHARE, K.RULE_MIG_UNMEASURED, K.RULE_UNALLOCATED,
          K.RULE_HOLDERS_UNKNOWN, K.RULE_IDLE_PROCESS_HOLDERS]  # the last two: set by job.holders_unknown
_SHARING = ["exclusive", "time_sliced", "fractional", "mig", "unallocated"]
(R_SAMPLES, R_REMAINDER, R_EQUAL, R_ALLOC, R_SERVER, R_NOBODY, R_IDLE, R_MIG, R_UNALLOC) = range(9)
_BUSY, _IDLE, _UNMEASURED, _UNALLOCATED = range(4)
_EPS = 1e-12  # attribute()'s threshold for a zero line (float noise below a picosecond)


@dataclass(frozen=True)
class Chunk:
    """One chunk of messages, integer-coded.

    - ``messages``: row ``m`` = (agent_id, boot_id, seq)
    - ``idents``: row = (node, gpu_index, uuid, model, profile) of a device row
    - ``devices``: m, ident, gpu_index, mig_index, interval_start_ns, interval_end_ns,
      slice_fraction, gpu_util, gr_engine_active, util_samples, energy_delta_mj
    - ``processes``: m, gpu_index, mig_index, owner, samples, sm_util_sum, used_memory_bytes
    - ``allocations``: m, gpu_index, mig_index, owner, replica, shared (resource names a
      shared GPU), share
    - ``owners``: row = (pod_uid, namespace, pod, tenant); ``pod_uid`` null = no pod
    """

    messages: pl.DataFrame
    idents: pl.DataFrame
    devices: pl.DataFrame
    processes: pl.DataFrame
    allocations: pl.DataFrame
    owners: pl.DataFrame


_KIND_T = pl.Series(_KINDS, dtype=pl.Enum(_KINDS))
_RULE_T = pl.Series(_RULES, dtype=pl.Enum(_RULES))


@dataclass(frozen=True)
class Result:
    """Ledger rows of one chunk, normalised: each row names its unit and owner by index.

    ``rows``: unit (row of ``units``), who (row of ``who``), kind, rule (codes of
    kinds.KINDS and ``_RULES``), gpu_seconds, energy_j, memory_gb_seconds.
    ``units``: the unit's context columns; ``who``: tenant, namespace, pod (Enums).
    ``fallback``: the chunk was computed by ``ledger.attribute`` (then ``rows`` is
    empty and ``reference`` holds its frame).
    """

    rows: pl.DataFrame
    units: pl.DataFrame
    who: pl.DataFrame
    reference: pl.DataFrame | None = None

    @property
    def fallback(self) -> bool:
        return self.reference is not None

    def frame(self) -> pl.DataFrame:
        """The rows as LEDGER_COLUMNS (strings as Enum): two multi-column gathers."""
        if self.reference is not None:
            return self.reference
        r = self.rows
        return pl.concat([
            self.units.gather(r["unit"]),
            self.who.gather(r["who"]),
            pl.DataFrame({"kind": _KIND_T.gather(r["kind"].cast(pl.UInt32)),
                          "rule": _RULE_T.gather(r["rule"].cast(pl.UInt32))}),
            r.select("gpu_seconds", "energy_j", "memory_gb_seconds"),
        ], how="horizontal").select(LEDGER_COLUMNS)


# --- coding store-shaped frames ------------------------------------------------


def _runs(frame: pl.DataFrame, cols: list[str]) -> np.ndarray:
    """First row of each run of equal ``cols`` (rows arrive grouped by message)."""
    if frame.height == 0:
        return np.zeros(0, np.int64)
    change = frame.select(pl.any_horizontal([pl.col(c).ne_missing(pl.col(c).shift(1)) for c in cols]))
    starts = change.to_series().to_numpy()
    starts[0] = True
    return np.flatnonzero(starts)


def code(devices: pl.DataFrame, processes: pl.DataFrame, allocations: pl.DataFrame,
         tenants: pl.DataFrame) -> Chunk:
    """Store-shaped frames (the columns ``attribute`` reads) + tenants(pod_uid, tenant) -> a Chunk.

    Message keys are coded per run of equal keys, not per row; owners take
    namespace and pod from the first row naming the pod uid (processes first),
    as ``attribute`` does.
    """
    frames = (devices, processes, allocations)
    starts = [_runs(f, MSG) for f in frames]
    firsts = [f[s].select(MSG) for f, s in zip(frames, starts)]
    messages = pl.concat(firsts).unique(maintain_order=True)
    lookup = messages.with_row_index("m")
    ms = []
    for f, s, first in zip(frames, starts, firsts):
        m_run = first.join(lookup, on=MSG, how="left", maintain_order="left")["m"].to_numpy().astype(np.int64)
        ms.append(np.repeat(m_run, np.diff(np.r_[s, f.height]).astype(np.int64)))
    who = ["pod_uid", "namespace", "pod"]
    owners = (
        pl.concat([processes.select(who), allocations.select(who)])
        .unique(subset="pod_uid", keep="first", maintain_order=True)
        .join(tenants.select("pod_uid", "tenant").unique(subset="pod_uid", keep="first"), on="pod_uid",
              how="left", maintain_order="left")
        .with_columns(tenant=pl.col("tenant").fill_null(K.UNATTRIBUTED_TENANT))
    )
    uids = owners["pod_uid"]
    enum = pl.Enum(uids.drop_nulls().to_list())
    null_owner = int(uids.is_null().arg_max() or 0) if uids.null_count() else -1

    def owner(f: pl.DataFrame) -> pl.Series:
        # Codes of the non-null uids are their rank among them; shift past the null row's slot.
        c = f["pod_uid"].cast(enum).to_physical().cast(pl.Int64)
        if null_owner >= 0:
            c = pl.select(pl.when(c >= null_owner).then(c + 1).otherwise(c)).to_series()
        return c.fill_null(null_owner)

    dev, idents = identify(devices.select(
        *_IDENT, "mig_index", "interval_start_ns", "interval_end_ns", "slice_fraction", "gpu_util",
        "gr_engine_active", "util_samples", "energy_delta_mj").with_columns(m=pl.Series(ms[0])))
    return Chunk(
        messages=messages,
        idents=idents,
        devices=dev,
        processes=processes.select("gpu_index", "mig_index", "samples", "sm_util_sum", "used_memory_bytes")
        .with_columns(m=pl.Series(ms[1]), owner=owner(processes)),
        allocations=allocations.select("gpu_index", "mig_index", "replica", "share")
        .with_columns(m=pl.Series(ms[2]), owner=owner(allocations),
                      shared=allocations["resource"].str.contains("shared", literal=True).fill_null(False)),
        owners=owners.select(*who, "tenant"),
    )


_IDENT = ["node", "gpu_index", "uuid", "model", "profile"]


def identify(devices: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Device rows with strings -> (rows with ``ident`` instead of node/uuid/model/profile, idents)."""
    idents = devices.select(_IDENT).unique(maintain_order=True)
    ident = devices.select(_IDENT).join(idents.with_row_index("ident"), on=_IDENT, how="left", nulls_equal=True,
                                        maintain_order="left")["ident"]
    return devices.drop("node", "uuid", "model", "profile").with_columns(ident=ident), idents


def decode(chunk: Chunk) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """A Chunk back to store-shaped (devices, processes, allocations, tenants) for ``attribute``."""
    msgs = chunk.messages.with_row_index("m")
    own = chunk.owners.with_row_index("owner")
    ids = chunk.idents.drop("gpu_index").with_row_index("ident")

    def keyed(f: pl.DataFrame) -> pl.DataFrame:
        out = f.with_columns(pl.col("m").cast(pl.UInt32)).join(msgs, on="m", how="left", maintain_order="left")
        return out.drop("m")

    devices = keyed(chunk.devices.with_columns(pl.col("ident").cast(pl.UInt32))).join(
        ids, on="ident", how="left", maintain_order="left").drop("ident")
    owned = [keyed(f.with_columns(pl.col("owner").cast(pl.UInt32))).join(own.drop("tenant"), on="owner", how="left",
                                                                        maintain_order="left").drop("owner")
             for f in (chunk.processes, chunk.allocations)]
    allocations = owned[1].with_columns(
        resource=pl.when(pl.col("shared")).then(pl.lit("nvidia.com/gpu.shared")).otherwise(pl.lit("nvidia.com/gpu")))
    tenants = chunk.owners.filter(pl.col("pod_uid").is_not_null()).select("pod_uid", "tenant")
    return devices, owned[0], allocations, tenants


# --- the kernel ----------------------------------------------------------------


def _f64(frame: pl.DataFrame, col: str) -> np.ndarray:
    """Float column as float64, null (and NaN) -> NaN."""
    return frame[col].cast(pl.Float64).to_numpy()


def _i64(frame: pl.DataFrame, col: str) -> np.ndarray:
    return frame[col].to_numpy().astype(np.int64, copy=False)


def _enum_of(values: pl.Series) -> pl.Series:
    """A String series as an Enum series of the same length, plus one trailing null (index -1 / len)."""
    s = values.cast(pl.String)
    enum = pl.Enum(s.drop_nulls().unique(maintain_order=True).to_list())
    return pl.concat([s.cast(enum), pl.Series([None], dtype=enum)], rechunk=True)  # one chunk: faster gathers


def _gather(table: pl.Series, idx: np.ndarray) -> pl.Series:
    return table.gather(pl.Series(idx.astype(np.uint32, copy=False)))


def _sorted_by(key: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """(key, arrays...) sorted by key (stable); untouched when already non-decreasing."""
    if len(key) < 2 or bool(np.all(key[1:] >= key[:-1])):
        return (key, *arrays)
    order = np.argsort(key, kind="stable")
    return (key[order], *(a[order] for a in arrays))


# --- compiled passes over rows -------------------------------------------------
# Each is one loop over rows sorted by (unit key, owner), writing into arrays
# made once per call. Inputs are cast to fixed dtypes first (int64 codes,
# float64 values, bool flags), so one compilation (cached in __pycache__)
# serves every call; nogil lets two chunks run in two threads at once.
# error_model="numpy": x / 0 gives inf or NaN as in numpy, never raises.

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
_DBL_MAX = float(np.finfo(np.float64).max)


@_jit
def _unit_key(m: np.ndarray, gpu: np.ndarray, mig: np.ndarray, owner: np.ndarray, g_max: int,
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
def _holders(key: np.ndarray, dkey: np.ndarray, owner: np.ndarray, share: np.ndarray,
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
def _evidence(key: np.ndarray, dkey: np.ndarray, owner: np.ndarray, samples: np.ndarray,
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
def _unit_pass(share_sum: np.ndarray, held: np.ndarray, n_holders: np.ndarray, time_sliced: np.ndarray,
               fractional: np.ndarray, is_mig: np.ndarray, util: np.ndarray, capacity: np.ndarray,
               energy: np.ndarray, util_samples: np.ndarray, n_procs: np.ndarray, n_pod: np.ndarray,
               n_smp: np.ndarray, n_uns: np.ndarray, ev_sum: np.ndarray, floats: np.ndarray, flags: np.ndarray,
               sharing: np.ndarray) -> None:
    """Per-unit quantities (``ledger.attribute``'s u frame) in one loop: busy GPU-seconds and energy,
    the unsampled remainder r, idle per unit of share, unallocated idle, and which rules apply.

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
        if rm:
            rr = 1.0 - ev_sum[u] * cap / util_samples[u] / b
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
        nobody[u] = no_proc and ss <= 0 and abs(b) > _EPS
        un_s[u] = (cap - b) * (1.0 - held[u])
        un_e[u] = idle_en * (1.0 - held[u])


@_jit
def _busy_rows(unit: np.ndarray, owner: np.ndarray, ev: np.ndarray, mem_bytes: np.ndarray,
               pod_owner: np.ndarray, samples: np.ndarray, split: np.ndarray, special: np.ndarray,
               ev_scale: np.ndarray, r: np.ndarray, rem: np.ndarray, ev_sum: np.ndarray, n_uns: np.ndarray,
               n_pod: np.ndarray, n_procs: np.ndarray, busy: np.ndarray, busy_energy: np.ndarray, dt: np.ndarray,
               o_unit: np.ndarray, o_who: np.ndarray, o_kind: np.ndarray, o_rule: np.ndarray, o_gpu: np.ndarray,
               o_en: np.ndarray, o_mem: np.ndarray, at: int) -> int:
    """Busy by process: each row's weight and rule, summed per (unit, owner, rule); returns the next free row.

    Weight: evidence / Σ evidence × (1 - r) on the common path; on units needing a
    fallback, the unsampled remainder r split equally among unsampled pod processes,
    else an equal split among pod processes (or all processes). Memory: GB-seconds,
    null when no row of the group reports it.
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
            if abs(gs) > _EPS or not np.isnan(mv):
                o_unit[at], o_who[at], o_kind[at], o_rule[at] = u, owner[i], _BUSY, R_SAMPLES
                o_gpu[at], o_en[at], o_mem[at] = gs, en, mv
                at += 1
            i = end
            continue
        for q in range(3):
            cnt[q], mn[q], g[q], e[q], mm[q] = 0, 0, 0.0, 0.0, 0.0
        while end < rows and unit[end] == u and owner[end] == owner[i]:
            x = ev[end]
            rule = R_SAMPLES
            if rem[u] and pod_owner[owner[end]] and samples[end] <= 0:
                w, rule = r[u] / n_uns[u], R_REMAINDER
            elif ev_sum[u] > 0:
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
            if cnt[rule] and (abs(g[rule]) > _EPS or not np.isnan(mv)):
                o_unit[at], o_who[at], o_kind[at], o_rule[at] = u, owner[i], _BUSY, rule
                o_gpu[at], o_en[at], o_mem[at] = g[rule], e[rule], mv
                at += 1
        i = end
    return at


@_jit
def _share_rows(h_unit: np.ndarray, h_owner: np.ndarray, h_share: np.ndarray, share_sum: np.ndarray,
                by_share: np.ndarray, n_procs: np.ndarray, busy: np.ndarray, busy_energy: np.ndarray,
                nobody: np.ndarray, idle_s: np.ndarray, idle_e: np.ndarray, measured: np.ndarray,
                un_s: np.ndarray, un_e: np.ndarray, n_own: int,
                o_unit: np.ndarray, o_who: np.ndarray, o_kind: np.ndarray, o_rule: np.ndarray, o_gpu: np.ndarray,
                o_en: np.ndarray, o_mem: np.ndarray, at: int) -> int:
    """Rows by allocation share (busy without pod evidence; idle or unmeasured), then per unit:
    busy nobody holds and unallocated idle. Returns the next free row."""
    for h in range(len(h_unit)):
        u = h_unit[h]
        if by_share[u]:
            frac = h_share[h] / share_sum[u]
            gs = busy[u] * frac
            if abs(gs) > _EPS:
                o_unit[at], o_who[at], o_kind[at] = u, h_owner[h], _BUSY
                o_rule[at] = R_ALLOC if n_procs[u] == 0 else R_SERVER
                o_gpu[at], o_en[at], o_mem[at] = gs, busy_energy[u] * frac, np.nan
                at += 1
        gs = idle_s[u] * h_share[h]
        if abs(gs) > _EPS:
            o_unit[at], o_who[at] = u, h_owner[h]
            if measured[u]:
                o_kind[at], o_rule[at] = _IDLE, R_IDLE
            else:
                o_kind[at], o_rule[at] = _UNMEASURED, R_MIG
            o_gpu[at], o_en[at], o_mem[at] = gs, idle_e[u] * h_share[h], np.nan
            at += 1
    for u in range(len(busy)):
        if nobody[u]:
            o_unit[at], o_who[at], o_kind[at], o_rule[at] = u, n_own, _BUSY, R_NOBODY
            o_gpu[at], o_en[at], o_mem[at] = busy[u], busy_energy[u], np.nan
            at += 1
        if abs(un_s[u]) > _EPS:
            o_unit[at], o_who[at], o_kind[at], o_rule[at] = u, n_own + 1, _UNALLOCATED, R_UNALLOC
            o_gpu[at], o_en[at], o_mem[at] = un_s[u], un_e[u], np.nan
            at += 1
    return at


def _ro(a: np.ndarray) -> np.ndarray:
    """A read-only view: Polars' zero-copy buffers are read-only, copies are not, and Numba types the two
    differently -- one flavour for every input keeps one compiled signature per function."""
    v = a.view()
    v.flags.writeable = False
    return v


def _coded(frame: pl.DataFrame, g_max: int, mi_max: int, n_own1: int, *cols: str) -> tuple[np.ndarray, ...]:
    """(unit key, owner, cols...) as int64/float64/bool arrays, sorted by (unit key, owner) (stable) when they
    are not (the job's ORDER BY delivers them sorted)."""
    own = _i64(frame, "owner")
    key, ordered = _unit_key(_ro(_i64(frame, "m")), _ro(_i64(frame, "gpu_index")), _ro(_i64(frame, "mig_index")),
                             _ro(own), g_max, mi_max)
    arrays = [frame[c].fill_null(False).to_numpy() if frame.schema[c] == pl.Boolean else
              _f64(frame, c) if frame.schema[c].is_float() else _i64(frame, c) for c in cols]
    if not ordered:
        order = np.argsort(key * n_own1 + own, kind="stable")
        key, own, arrays = key[order], own[order], [a[order] for a in arrays]
    return (_ro(key), _ro(own), *(_ro(a) for a in arrays))


def ledger(chunk: Chunk) -> Result:
    """Ledger rows (LEDGER_COLUMNS) of one chunk: the same rows as ``attribute`` on its decoded frames."""
    dev, proc, alloc = chunk.devices, chunk.processes, chunk.allocations
    g_max = max([int(f["gpu_index"].max() or 0) for f in (dev, proc, alloc) if f.height] + [0]) + 1
    mi_max = max([int(f["mig_index"].max() or 0) for f in (dev, proc, alloc) if f.height] + [0]) + 2

    def key(f: pl.DataFrame) -> np.ndarray:
        k = _i64(f, "m") * g_max  # in place from here: fresh arrays cost page faults
        k += f["gpu_index"].to_numpy()
        k *= mi_max
        k += f["mig_index"].to_numpy()
        k += 1
        return k

    # --- units: device rows sorted by key (MIG parent's remainder keeps the parent's key) ---
    dkey = key(dev)
    drow = np.arange(len(dkey))
    dkey, drow = _sorted_by(dkey, drow)
    if len(dkey) > 1 and not bool(np.all(dkey[1:] > dkey[:-1])):
        frames = decode(chunk)
        ref = attribute(*(f.lazy() for f in frames)).collect()
        return Result(pl.DataFrame(), pl.DataFrame(), pl.DataFrame(), reference=ref)
    ordered = bool(np.array_equal(drow, np.arange(len(drow))))

    def take(a: np.ndarray) -> np.ndarray:
        return a if ordered else a[drow]

    mig_i = take(_i64(dev, "mig_index"))
    phys = mig_i == -1
    parent = np.arange(len(dkey))
    migs = np.flatnonzero(~phys)
    if len(migs):
        pk = dkey[migs] - (mig_i[migs] + 1)
        pos = np.searchsorted(dkey, pk).clip(0, len(dkey) - 1)
        parent[migs] = np.where(dkey[pos] == pk, pos, -1)
    keep = parent >= 0
    sf = take(_f64(dev, "slice_fraction"))
    with_parent = migs[parent[migs] >= 0]
    n_child = np.bincount(parent[with_parent], minlength=len(dkey))
    frac_sum = np.bincount(parent[with_parent], sf[with_parent], minlength=len(dkey))
    start = take(_i64(dev, "interval_start_ns"))
    end = take(_i64(dev, "interval_end_ns"))
    dt = (end - start) / 1e9
    energy0 = take(_f64(dev, "energy_delta_mj")) / 1000.0
    rest = np.clip(1.0 - frac_sum, 0.0, 1.0)
    remainder_unit = phys & (n_child > 0)
    whole = phys & ~remainder_unit
    par = np.maximum(parent, 0)
    capacity = np.where(phys, np.where(remainder_unit, dt * rest, dt), dt * sf)
    util = np.where(phys, np.where(remainder_unit, 0.0, take(_f64(dev, "gpu_util"))),
                    take(_f64(dev, "gr_engine_active"))).clip(0.0, 1.0)
    energy = np.where(phys, np.where(remainder_unit, energy0 * rest, energy0), energy0[par] * sf)
    util_samples = np.where(whole, take(_f64(dev, "util_samples")), 0.0)
    is_mig = ~whole
    ident = take(_i64(dev, "ident"))
    uuid_ident = ident[par]
    profile_ident = np.where(remainder_unit, -1, ident)
    m_unit = take(_i64(dev, "m"))
    if not keep.all():  # MIG rows whose parent GPU row is missing: attribute's inner join drops them
        (dkey, drow, capacity, util, energy, util_samples, is_mig, ident, uuid_ident, profile_ident, m_unit, start,
         end, dt) = (a[keep] for a in (dkey, drow, capacity, util, energy, util_samples, is_mig, ident, uuid_ident,
                                        profile_ident, m_unit, start, end, dt))
    n = len(dkey)

    # --- holders: allocation rows -> one per (unit, owner), per-unit totals ---
    n_own = chunk.owners.height
    n_own1 = n_own + 1
    pod_owner = np.r_[chunk.owners["pod_uid"].is_not_null().to_numpy(), False]
    ack, a_owner, a_share, a_rep, a_shared = _coded(alloc, g_max, mi_max, n_own1, "share", "replica", "shared")
    h_unit, h_owner, h_share, share_sum, n_holders, time_sliced, fractional = _holders(
        ack, dkey, a_owner, a_share, a_rep, a_shared, n)

    # --- processes: unit per row, clean evidence, per-unit evidence totals ---
    pck, p_owner, p_samples, p_ev, p_mem = _coded(proc, g_max, mi_max, n_own1, "samples", "sm_util_sum",
                                                  "used_memory_bytes")
    p_unit, p_ev, n_procs, n_pod, n_smp, n_uns, ev_sum = _evidence(
        pck, dkey, p_owner, p_samples, p_ev, pod_owner, n)

    # --- per-unit quantities (ledger.attribute's u frame) ---
    floats, flags, sharing = np.empty((8, n)), np.zeros((6, n + 1), np.bool_), np.empty(n, np.int64)
    _unit_pass(share_sum, np.round(share_sum, 12).clip(0.0, 1.0), n_holders, time_sliced, fractional, is_mig, util,
               capacity, energy, util_samples, n_procs, n_pod, n_smp, n_uns, ev_sum, floats, flags, sharing)
    busy, busy_energy, r, ev_scale, idle_s, idle_e, un_s, un_e = floats
    measured, split, special, rem, by_share, nobody = flags

    # --- every ledger row, written by the compiled passes into arrays made once ---
    cap = len(pck) + 2 * len(h_unit) + 2 * n
    o_unit, o_who = np.empty(cap, np.uint32), np.empty(cap, np.uint32)
    o_kind, o_rule = np.empty(cap, np.uint8), np.empty(cap, np.uint8)
    o_gpu, o_en, o_mem = np.empty(cap), np.empty(cap), np.empty(cap)
    out = (o_unit, o_who, o_kind, o_rule, o_gpu, o_en, o_mem)
    at = _busy_rows(p_unit, p_owner, p_ev, p_mem, pod_owner, p_samples, split, special, ev_scale, r, rem,
                    ev_sum, n_uns, n_pod, n_procs, busy, busy_energy, dt, *out, 0)
    at = _share_rows(h_unit, h_owner, h_share, share_sum, by_share, n_procs, busy, busy_energy, nobody, idle_s,
                     idle_e, measured, un_s, un_e, n_own, *out, at)
    rows = pl.DataFrame({
        "unit": o_unit[:at], "who": o_who[:at], "kind": o_kind[:at], "rule": o_rule[:at],
        "gpu_seconds": o_gpu[:at], "energy_j": pl.Series(o_en[:at], nan_to_null=True),
        "memory_gb_seconds": pl.Series(o_mem[:at], nan_to_null=True),
    })

    # --- assemble: rows refer to units and owners by index; strings live in per-chunk dictionaries ---
    msgs, ids, own = chunk.messages, chunk.idents, chunk.owners
    tenants = pl.concat([own["tenant"].cast(pl.String), pl.Series([K.UNATTRIBUTED_TENANT, K.PLATFORM_TENANT])])
    units = pl.DataFrame({
        "agent_id": _gather(_enum_of(msgs["agent_id"]), m_unit),
        "boot_id": _gather(_enum_of(msgs["boot_id"]), m_unit),
        "seq": msgs["seq"].gather(pl.Series(m_unit.astype(np.uint32))),
        "node": _gather(_enum_of(ids["node"]), ident),
        "interval_start_ns": start,
        "interval_end_ns": end,
        "gpu_uuid": _gather(_enum_of(_filled_uuid(ids)), uuid_ident),
        "gpu_index": ids["gpu_index"].gather(pl.Series(ident.astype(np.uint32))),
        "mig_index": pl.Series((dkey % mi_max) - 1).cast(chunk.devices["mig_index"].dtype),
        "model": _gather(_enum_of(ids["model"].fill_null("unknown")), ident),
        "profile": _gather(_enum_of(ids["profile"]), np.where(profile_ident < 0, ids.height, profile_ident)),
        "sharing": _gather(pl.Series(_SHARING, dtype=pl.Enum(_SHARING)), sharing),
    })
    pad = pl.Series([None, None], dtype=pl.String)
    who = pl.DataFrame({
        "tenant": _enum_of(tenants)[:-1],
        "namespace": _enum_of(pl.concat([own["namespace"].cast(pl.String), pad]))[:-1],
        "pod": _enum_of(pl.concat([own["pod"].cast(pl.String), pad]))[:-1],
    })
    return Result(rows=rows, units=units, who=who)


def _filled_uuid(idents: pl.DataFrame) -> pl.Series:
    """A GPU lost before the agent read its identity still has capacity to book (as in ``units``)."""
    return idents.select(pl.col("uuid").fill_null(pl.format("unknown:{}:{}", "node", "gpu_index"))).to_series()
