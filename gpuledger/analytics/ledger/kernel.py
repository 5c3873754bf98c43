"""The whole ledger on integer codes: ``reference.attribute``'s rows at bulk speed.

``reference.attribute`` is the readable reference (Polars joins on the
message key). :func:`attribute_chunk` computes the same rows -- every kind,
rule, energy and memory figure, the unknown-holders rule included -- for one
integer-coded chunk of messages (``coding.Chunk``) without joins, hash
group-bys or per-row strings, so that a month of 1,000 GPUs at 10 s (~1e9
process-intervals) streams through in bounded memory:

- Units (GPU intervals, MIG slices, a MIG parent's unconfigured remainder)
  get the int64 key ``(m × G + gpu) × M + mig + 1``; device rows sorted by it
  are the unit table (numpy, one row per unit). Process and allocation rows
  arrive sorted by (unit key, owner) -- the job's ORDER BY; unsorted input is
  sorted first (stable), never mis-attributed.
- The row-sized work is a handful of compiled passes (``passes``, Numba),
  named after the reference's steps: each walks the sorted rows once beside
  the unit table (a merge, no search), sums per unit and per (unit, owner,
  rule), and writes the output rows into arrays made once per chunk -- no
  temporaries per step. Per-unit quantities are one more compiled loop over
  units. Inputs are cast to int64 / float64 / bool and passed read-only, so
  each pass has one compiled signature, cached in ``__pycache__`` (a fresh
  machine compiles once, ~5 s); the passes release the GIL, so two chunks
  attribute in two threads at once.
- Output rows name their unit and owner by index (:class:`Result`);
  ``Result.frame()`` gives LEDGER_COLUMNS with strings as ``pl.Enum``
  (dictionary-encoded per chunk): integer gathers, not string copies.

Duplicate device rows for one unit are the one input this kernel does not
model (``attribute`` multiplies them through its joins): such a chunk goes
through ``attribute`` itself (``Result.fallback`` says so). NaN in a float
column counts as null, as the store writes it. Checked against ``attribute``
in tests/analytics/test_ledger_fast.py (scenarios, hypothesis, the job end
to end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import polars as pl

from gpuledger.analytics import kinds as K
from gpuledger.analytics.ledger import passes as P
from gpuledger.analytics.ledger.coding import Chunk, frames_of_chunk
from gpuledger.analytics.ledger.columns import KINDS, LEDGER_COLUMNS, RULES, SHARING
from gpuledger.analytics.ledger.reference import attribute

__all__ = ["Result", "attribute_chunk"]

_KIND_T = pl.Series(list(KINDS), dtype=pl.Enum(list(KINDS)))
_RULE_T = pl.Series(list(RULES), dtype=pl.Enum(list(RULES)))
_SHARING_T = pl.Series(list(SHARING), dtype=pl.Enum(list(SHARING)))


@dataclass(frozen=True)
class Result:
    """Ledger rows of one chunk, normalised: each row names its unit and owner by index.

    ``rows``: unit (row of ``units``), who (row of ``who``), kind, rule (codes:
    indices of ``columns.KINDS`` and ``columns.RULES``), gpu_seconds, energy_j,
    memory_gb_seconds.
    ``units``: the unit's context columns; ``who``: tenant, namespace, pod (Enums).
    ``fallback``: the chunk was computed by ``reference.attribute`` (then ``rows`` is
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


def _coded(frame: pl.DataFrame, g_max: int, mi_max: int, n_own1: int, *cols: str) -> tuple[np.ndarray, ...]:
    """(unit key, owner, cols...) as int64/float64/bool arrays, sorted by (unit key, owner) (stable) when they
    are not (the job's ORDER BY delivers them sorted)."""
    own = _i64(frame, "owner")
    key, ordered = P.unit_key(P.ro(_i64(frame, "m")), P.ro(_i64(frame, "gpu_index")), P.ro(_i64(frame, "mig_index")),
                               P.ro(own), g_max, mi_max)
    arrays = [frame[c].fill_null(False).to_numpy() if frame.schema[c] == pl.Boolean else
              _f64(frame, c) if frame.schema[c].is_float() else _i64(frame, c) for c in cols]
    if not ordered:
        order = np.argsort(key * n_own1 + own, kind="stable")
        key, own, arrays = key[order], own[order], [a[order] for a in arrays]
    return (P.ro(key), P.ro(own), *(P.ro(a) for a in arrays))


class _Units(NamedTuple):
    """The unit table (the reference's ``units``): one row per unit, sorted by ``key``."""

    key: np.ndarray  # int64 unit key (m × G + gpu) × M + mig + 1
    m: np.ndarray  # message ordinal
    ident: np.ndarray  # row of idents (node, model, ...); uuid_ident: the physical GPU's; profile_ident: -1 none
    uuid_ident: np.ndarray
    profile_ident: np.ndarray
    start: np.ndarray  # interval bounds, ns
    end: np.ndarray
    dt: np.ndarray  # interval, s
    capacity: np.ndarray  # GPU-seconds: dt × slice (MIG), dt × unconfigured rest (a MIG-mode GPU's remainder)
    util: np.ndarray  # 0..1, NaN: not measured
    energy: np.ndarray  # J, NaN: missing
    util_samples: np.ndarray
    is_mig: np.ndarray


def _units(dev: pl.DataFrame, dkey: np.ndarray, drow: np.ndarray) -> _Units:
    """Device rows -> the unit table; ``dkey``: the rows' unit keys sorted (unique), ``drow``: their rows."""
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
    ident = take(_i64(dev, "ident"))
    units = _Units(
        key=dkey, m=take(_i64(dev, "m")), ident=ident, uuid_ident=ident[par],
        profile_ident=np.where(remainder_unit, -1, ident), start=start, end=end, dt=dt,
        capacity=np.where(phys, np.where(remainder_unit, dt * rest, dt), dt * sf),
        util=np.where(phys, np.where(remainder_unit, 0.0, take(_f64(dev, "gpu_util"))),
                      take(_f64(dev, "gr_engine_active"))).clip(0.0, 1.0),
        energy=np.where(phys, np.where(remainder_unit, energy0 * rest, energy0), energy0[par] * sf),
        util_samples=np.where(whole, take(_f64(dev, "util_samples")), 0.0),
        is_mig=~whole,
    )
    if not keep.all():  # MIG rows whose parent GPU row is missing: attribute's inner join drops them
        units = _Units(*(a[keep] for a in units))
    return units


def attribute_chunk(chunk: Chunk) -> Result:
    """Ledger rows (LEDGER_COLUMNS) of one chunk: the same rows as ``attribute`` on ``frames_of_chunk(chunk)``."""
    dev, proc, alloc = chunk.devices, chunk.processes, chunk.allocations

    def largest(col: str) -> int:
        return max([int(f.select(pl.max(col)).item() or 0) for f in (dev, proc, alloc) if f.height] + [0])

    g_max, mi_max = largest("gpu_index") + 1, largest("mig_index") + 2

    # --- units: device rows sorted by key (MIG parent's remainder keeps the parent's key) ---
    dkey = _i64(dev, "m") * g_max  # in place from here: fresh arrays cost page faults
    dkey += dev["gpu_index"].to_numpy()
    dkey *= mi_max
    dkey += dev["mig_index"].to_numpy()
    dkey += 1
    dkey, drow = _sorted_by(dkey, np.arange(len(dkey)))
    if len(dkey) > 1 and not bool(np.all(dkey[1:] > dkey[:-1])):
        ref = attribute(*(f.lazy() for f in frames_of_chunk(chunk))).collect()
        return Result(pl.DataFrame(), pl.DataFrame(), pl.DataFrame(), reference=ref)
    u = _units(dev, dkey, drow)
    n = len(u.key)

    # --- holders: allocation rows -> one per (unit, owner), per-unit totals ---
    n_own = chunk.owners.height
    n_own1 = n_own + 1
    pod_owner = np.r_[chunk.owners["pod_uid"].is_not_null().to_numpy(), False]
    ack, a_owner, a_share, a_rep, a_shared = _coded(alloc, g_max, mi_max, n_own1, "share", "replica", "shared")
    h_unit, h_owner, h_share, share_sum, n_holders, time_sliced, fractional = P.holders(
        ack, u.key, a_owner, a_share, a_rep, a_shared, n)

    # --- evidence: unit per process row, clean evidence, per-unit evidence totals ---
    pck, p_owner, p_samples, p_ev, p_mem = _coded(proc, g_max, mi_max, n_own1, "samples", "sm_util_sum",
                                                  "used_memory_bytes")
    p_unit, p_ev, n_procs, n_pod, n_smp, n_uns, ev_sum = P.evidence(
        pck, u.key, p_owner, p_samples, p_ev, pod_owner, n)

    # --- unit rules: per-unit quantities (the reference's unit table) ---
    floats, flags, sharing = np.empty((8, n)), np.zeros((6, n + 1), np.bool_), np.empty(n, np.int64)
    P.unit_rules(share_sum, np.round(share_sum, 12).clip(0.0, 1.0), n_holders, time_sliced, fractional, u.is_mig,
                 u.util, u.capacity, u.energy, u.util_samples, n_procs, n_pod, n_smp, n_uns, ev_sum, floats, flags,
                 sharing)
    busy, busy_energy, r, ev_scale, idle_s, idle_e, un_s, un_e = floats
    measured, split, special, rem, by_share, nobody = flags

    # --- every ledger row, written by the compiled passes into arrays made once ---
    flagged = chunk.messages["holders_unknown"].to_numpy()[u.m] if n else np.zeros(0, np.bool_)
    any_flagged = bool(flagged.any())
    cap = len(pck) + 2 * len(h_unit) + 2 * n
    if any_flagged:  # room for the unallocated idle of each unit split among its busy owners
        cap += len(pck) + len(h_unit)
    o_unit, o_who = np.empty(cap, np.uint32), np.empty(cap, np.uint32)
    o_kind, o_rule = np.empty(cap, np.uint8), np.empty(cap, np.uint8)
    o_gpu, o_en, o_mem = np.empty(cap), np.empty(cap), np.empty(cap)
    out = (o_unit, o_who, o_kind, o_rule, o_gpu, o_en, o_mem)
    at = P.busy_by_process(p_unit, p_owner, p_ev, p_mem, pod_owner, split, special, ev_scale, r, rem,
                           ev_sum, n_pod, n_procs, busy, busy_energy, u.dt, *out, 0)
    at = P.by_share(h_unit, h_owner, h_share, share_sum, by_share, n_procs, busy, busy_energy, idle_s, idle_e,
                    measured, *out, at)
    if any_flagged:  # the owners that ran there: pods (a name known) with a busy row, as the reference
        is_pod = np.r_[chunk.owners["pod"].is_not_null().to_numpy(), False, False]
        first, count, ran = P.unknown_holders(o_unit, o_who, o_kind, at, P.ro(flagged), P.ro(is_pod))
    else:
        first = count = ran = np.zeros(0, np.int64)
    at = P.per_unit(busy, busy_energy, nobody, rem, r, un_s, un_e, n_own, P.ro(flagged), first, count, ran, *out, at)
    rows = pl.DataFrame({
        "unit": o_unit[:at], "who": o_who[:at], "kind": o_kind[:at], "rule": o_rule[:at],
        "gpu_seconds": o_gpu[:at], "energy_j": pl.Series(o_en[:at], nan_to_null=True),
        "memory_gb_seconds": pl.Series(o_mem[:at], nan_to_null=True),
    })
    return Result(rows=rows, units=_unit_context(chunk, u, mi_max, sharing), who=_who(chunk))


def _unit_context(chunk: Chunk, u: _Units, mi_max: int, sharing: np.ndarray) -> pl.DataFrame:
    """The units' context columns; strings live in per-chunk dictionaries (Enums)."""
    msgs, ids = chunk.messages, chunk.idents
    return pl.DataFrame({
        "agent_id": _gather(_enum_of(msgs["agent_id"]), u.m),
        "boot_id": _gather(_enum_of(msgs["boot_id"]), u.m),
        "seq": msgs["seq"].gather(pl.Series(u.m.astype(np.uint32))),
        "node": _gather(_enum_of(ids["node"]), u.ident),
        "interval_start_ns": u.start,
        "interval_end_ns": u.end,
        "gpu_uuid": _gather(_enum_of(_filled_uuid(ids)), u.uuid_ident),
        "gpu_index": ids["gpu_index"].gather(pl.Series(u.ident.astype(np.uint32))),
        "mig_index": pl.Series((u.key % mi_max) - 1).cast(chunk.devices["mig_index"].dtype),
        "model": _gather(_enum_of(ids["model"].fill_null("unknown")), u.ident),
        "profile": _gather(_enum_of(ids["profile"]), np.where(u.profile_ident < 0, ids.height, u.profile_ident)),
        "sharing": _gather(_SHARING_T, sharing),
    })


def _who(chunk: Chunk) -> pl.DataFrame:
    """Tenant, namespace, pod of each owner, then of nobody (``unattributed``) and ``platform``."""
    own = chunk.owners
    tenants = pl.concat([own["tenant"].cast(pl.String), pl.Series([K.UNATTRIBUTED_TENANT, K.PLATFORM_TENANT])])
    pad = pl.Series([None, None], dtype=pl.String)
    return pl.DataFrame({
        "tenant": _enum_of(tenants)[:-1],
        "namespace": _enum_of(pl.concat([own["namespace"].cast(pl.String), pad]))[:-1],
        "pod": _enum_of(pl.concat([own["pod"].cast(pl.String), pad]))[:-1],
    })


def _filled_uuid(idents: pl.DataFrame) -> pl.Series:
    """A GPU lost before the agent read its identity still has capacity to book (as in ``units``)."""
    return idents.select(pl.col("uuid").fill_null(pl.format("unknown:{}:{}", "node", "gpu_index"))).to_series()
