"""The busy-by-process split on integer keys: the ledger's hot path at scale.

``attribute`` (ledger.py) is the reference: every kind, every fallback, as
Polars joins on the message key (agent_id, boot_id, seq, gpu_index,
mig_index). At scale (a month of 1,000 GPUs at 10 s is ~1e9
process-intervals) the step whose size is the number of *process* rows
dominates; everything else is per unit (GPU interval), ~4x fewer rows. This
module computes that step without joins or hash group-bys:

1. ``ukey = ((agent/boot code × 2^40 + seq) × 2^12) + gpu_index × 16 + mig_index + 1``
   (int64; < 2,048 agent boots per chunk). The agent/boot code is looked up
   once per *run* of equal strings (rows arrive grouped by message), not per row.
2. Unit index of each process row: ``searchsorted`` of the distinct process
   keys (one per run) into the sorted unit keys, expanded by run length.
3. Per-unit totals by ``bincount`` (Σ evidence, pod processes, sampled and
   unsampled processes), then one weight per row with ``ledger.attribute``'s
   rules: ``w = evidence / Σ evidence`` (``process_samples``), the
   unexplained remainder ``r`` to listed-but-unsampled processes
   (``unsampled_remainder``), else an equal split among pod processes
   (``equal_split_processes``); ``busy_p = busy_u × w``, ``energy_p = E_u × w``.
4. Rows of the same (unit, pod) -- two processes of one pod on one GPU -- are
   summed: keys are already sorted by unit, so a stable sort is near-linear
   and ``reduceat`` sums the runs.

Units: GPU-seconds (util × Δt × slice fraction) and joules. Rows equal
``attribute``'s busy-by-process rows of pods; units whose only processes have
no pod (an MPS server) or with no process at all are left to ``attribute``'s
holder fallbacks, and pod-less processes' own rows are not returned. Checked against
``attribute`` in tests/analytics/test_ledger_fast.py.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from gpuledger.analytics import kinds as K

__all__ = ["RULES", "busy_split"]

#: The rules this kernel applies, as an Enum (codes 0, 1, 2).
RULES = pl.Enum([K.RULE_PROCESS_SAMPLES, K.RULE_UNSAMPLED_REMAINDER, K.RULE_EQUAL_PROCESSES])


def _run_starts(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(run id per row, first row of each run) of equal (agent_id, boot_id): rows arrive grouped by message."""
    a = frame["agent_id"].rle_id().to_numpy()
    b = frame["boot_id"].rle_id().to_numpy()
    change = np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])]
    return np.cumsum(change) - 1, np.flatnonzero(change)


def _keys(devices: pl.DataFrame, processes: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """int64 unit keys of both frames, agent/boot coded by one dictionary built from run starts only."""
    runs = [_run_starts(f) for f in (devices, processes)]
    firsts = [f.select("agent_id", "boot_id")[st].select(ab=pl.col("agent_id") + "\x00" + pl.col("boot_id"))["ab"]
              for f, (_, st) in zip((devices, processes), runs)]
    names = pl.concat(firsts).unique(maintain_order=True)
    enum = pl.Enum(names.to_list())
    out = []
    for f, (run, _), first in zip((devices, processes), runs, firsts):
        ab = first.cast(enum).to_physical().to_numpy().astype(np.int64)[run]
        out.append((ab * 2**40 + f["seq"].to_numpy().astype(np.int64)) * 2**12
                   + f["gpu_index"].to_numpy().astype(np.int64) * 16 + f["mig_index"].to_numpy().astype(np.int64) + 1)
    return out[0], out[1]


def busy_split(devices: pl.DataFrame, processes: pl.DataFrame, tenants: pl.DataFrame) -> pl.DataFrame:
    """Store-shaped devices/processes + tenants(pod_uid, tenant) -> busy rows per (unit, pod).

    Columns: ``unit`` (row index into ``devices``), ``pod_uid``, ``tenant``
    (``unattributed`` when the pod has no tenant row), ``rule`` (Enum ``RULES``;
    pod and tenant are Enums too: dictionary-encoded, no per-row strings),
    ``gpu_seconds``, ``energy_j`` (null where the unit's energy is unknown).
    Agent and boot ids of both frames must be the same strings, as the store writes them.
    """
    if processes.height == 0 or devices.height == 0:
        return _empty()
    uk, pk = _keys(devices, processes)

    # 2. unit index per process row, via its runs
    p_start = np.flatnonzero(np.r_[True, pk[1:] != pk[:-1]])
    order = np.argsort(uk, kind="stable")
    pos = np.searchsorted(uk[order], pk[p_start]).clip(0, max(len(uk) - 1, 0))
    found = uk[order][pos] == pk[p_start]
    run_len = np.diff(np.r_[p_start, len(pk)])
    unit = np.repeat(np.where(found, order[pos], -1), run_len)

    # 3. per-unit totals and scale factors
    dt = (devices["interval_end_ns"] - devices["interval_start_ns"]).to_numpy() / 1e9
    util = devices.select(pl.coalesce(pl.col("gpu_util").fill_nan(None), pl.col("gr_engine_active").fill_nan(None))
                          .clip(0.0, 1.0))[:, 0].to_numpy().astype(np.float64)
    busy_u = util * dt * devices["slice_fraction"].to_numpy()
    energy_u = devices["energy_delta_mj"].fill_nan(None).to_numpy().astype(np.float64) / 1e3 * util
    cap = dt * devices["slice_fraction"].to_numpy()
    util_samples = devices["util_samples"].to_numpy().astype(np.float64)
    pod = processes["pod_uid"]
    has_pod = pod.is_not_null().to_numpy()
    valid = unit >= 0
    valid &= np.isfinite(busy_u[np.maximum(unit, 0)])  # unmeasured units have no busy to split
    samples = processes["samples"].to_numpy()
    ev = processes["sm_util_sum"].fill_nan(None).fill_null(0.0).clip(0.0, None).to_numpy()
    n_u = len(uk)
    uv = unit[valid]
    ev_sum = np.bincount(uv, ev[valid], minlength=n_u)
    n_pod = np.bincount(uv, has_pod[valid], minlength=n_u)
    unsampled = has_pod & (samples == 0)
    n_uns = np.bincount(uv, unsampled[valid], minlength=n_u)
    n_smp = np.bincount(uv, (samples > 0)[valid], minlength=n_u)
    rem_u = (n_uns > 0) & (n_smp > 0) & (util_samples > 0) & (busy_u > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r_u = np.where(rem_u, np.clip(1.0 - ev_sum * cap / util_samples / busy_u, 0.0, 1.0), 0.0)
    rows = np.flatnonzero(valid & has_pod)
    u = unit[rows]
    rem, uns, es = rem_u[u], unsampled[rows], ev_sum[u]
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.select(
            [rem & uns, es > 0, rem],
            [r_u[u] / n_uns[u], (1.0 - r_u[u]) * ev[rows] / es, 0.0],
            1.0 / n_pod[u],
        )
    rule = np.select([rem & uns, (es > 0) | rem], [1, 0], 2).astype(np.int64)
    gpu_s = busy_u[u] * w
    energy = energy_u[u] * w

    # 4. one row per (unit, pod)
    pods = pod.cast(pl.Categorical)  # one string-hash pass; the rest works on codes
    phys = pods.to_physical().fill_null(0).to_numpy().astype(np.int64)[rows]
    distinct = pods.unique().drop_nulls()
    names = distinct.cast(pl.String)
    local = np.zeros(int(phys.max(initial=0)) + 1, np.int64)
    local[distinct.to_physical().to_numpy().astype(np.int64)] = np.arange(len(distinct))
    pod_code = local[phys]
    lookup = pl.DataFrame({"pod_uid": names}).join(tenants.select("pod_uid", "tenant"), on="pod_uid", how="left",
                                                  maintain_order="left")["tenant"].fill_null(K.UNATTRIBUTED_TENANT)
    key = (u.astype(np.int64) * (int(pod_code.max(initial=0)) + 1) + pod_code) * 3 + rule
    srt = np.argsort(key, kind="stable")
    key, u, rule, gpu_s, energy, pod_code = key[srt], u[srt], rule[srt], gpu_s[srt], energy[srt], pod_code[srt]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
    code = pod_code[first].astype(np.uint32)
    # Strings stay dictionary-encoded (Enum): no per-row string is built.
    pod_names = names.cast(pl.Enum(names.to_list()))
    tenant_names = lookup.cast(pl.Enum(lookup.unique(maintain_order=True).to_list()))
    rule_names = pl.Series(RULES.categories).cast(RULES)
    return pl.DataFrame({
        "unit": u[first],
        "pod_uid": pod_names.gather(code),
        "tenant": tenant_names.gather(code),
        "rule": rule_names.gather(rule[first].astype(np.uint32)),
        "gpu_seconds": np.add.reduceat(gpu_s, first) if len(first) else np.zeros(0),
        "energy_j": np.add.reduceat(energy, first) if len(first) else np.zeros(0),
    }).with_columns(pl.col("energy_j").fill_nan(None))


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema={"unit": pl.Int64, "pod_uid": pl.String, "tenant": pl.String, "rule": RULES,
                                "gpu_seconds": pl.Float64, "energy_j": pl.Float64})
