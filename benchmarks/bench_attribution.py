"""Attribution speed and peak memory: process-interval rows per second, streamed in chunks.

The target workload is one month of 1,000 GPUs at a 10 s tick: 1,000 x
259,200 GPU-intervals x ~3.9 processes (time-slicing/MPS mix) ~ 1e9
process-intervals. This box cannot hold that, so each variant attributes a
representative slice -- ``chunks`` chunks of ``gpus`` GPUs x ``ticks`` ticks,
~4 processes per GPU-interval (1-8, a time-sliced mix), store-shaped columns
(string message keys, pod uids) -- and the month is extrapolated from the
measured rate (rows / rate), stating the slice. Every variant runs in its own
spawned process, so its peak RSS (``ru_maxrss``) is its own. Wall time and
CPU time (``process_time``, all threads) are both reported: on a shared,
loaded machine rows per CPU-second is the steadier figure.

Variants, one computation (busy = util x dt split by per-process sample share,
grouped per interval x tenant; energy likewise):

- ``attribute``: the real ledger (``analytics.ledger.attribute``: all kinds,
  fallbacks, idle, unallocated, energy, memory), from frames in memory;
- ``polars_naive``: the straightforward Polars version: window normalisation
  over the string unit key + join to units + join to tenants + group-by;
- ``duckdb_sql``: the same in DuckDB SQL on the same Arrow data;
- ``fast_split``: ``analytics.fastsplit.busy_split``: int64 unit keys built
  from per-run codes, unit index by searchsorted, normalisation by bincount,
  per-(unit, pod) sums by reduceat over near-sorted keys, dictionary-encoded
  output (numpy + Polars, no joins on the row-sized side).
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from typing import Any

import numpy as np
import polars as pl

MONTH_ROWS = 1_000 * 259_200 * 3.9  # process-intervals in a month of 1,000 GPUs at 10 s


def make_chunk(gpus: int, ticks: int, seed: int, n_pods: int = 4000, n_tenants: int = 40) -> dict[str, pl.DataFrame]:
    """Store-shaped frames: devices (one row per GPU interval), processes, allocations, tenants."""
    rng = np.random.default_rng(seed)
    n_units = gpus * ticks
    node = np.arange(gpus) // 8
    unit_gpu = np.tile(np.arange(gpus), ticks)
    unit_tick = np.repeat(np.arange(ticks), gpus)
    agent = np.array([f"gpu-node-{n:04d}" for n in range(gpus // 8 + 1)])
    devices = pl.DataFrame({
        "agent_id": agent[node[unit_gpu]], "boot_id": "b0", "seq": (seed * ticks + unit_tick).astype(np.int64),
        "gpu_index": (unit_gpu % 8).astype(np.int32), "mig_index": np.full(n_units, -1, np.int32),
        "node": agent[node[unit_gpu]],
        "interval_start_ns": (seed * ticks + unit_tick).astype(np.int64) * 10**10,
        "interval_end_ns": (seed * ticks + unit_tick + 1).astype(np.int64) * 10**10,
        "uuid": "GPU-x", "model": "NVIDIA H100 80GB HBM3", "profile": None, "slice_fraction": 1.0,
        "gpu_util": rng.uniform(0, 1, n_units), "gr_engine_active": None, "util_samples": 10,
        "energy_delta_mj": rng.uniform(1e5, 7e6, n_units),
    })
    per_gpu = rng.choice([1, 1, 2, 4, 6, 8], gpus)  # processes sharing each GPU (exclusive .. 8 replicas)
    k = per_gpu[unit_gpu]
    unit_of_row = np.repeat(np.arange(n_units), k)
    slot = np.arange(len(unit_of_row)) - np.repeat(np.cumsum(k) - k, k)
    pod = (unit_gpu[unit_of_row] * 8 + slot) % n_pods
    uids = np.array([f"pod-{p:06d}" for p in range(n_pods)])
    processes = pl.DataFrame({
        "agent_id": devices["agent_id"].to_numpy()[unit_of_row], "boot_id": "b0",
        "seq": devices["seq"].to_numpy()[unit_of_row], "gpu_index": (unit_gpu[unit_of_row] % 8).astype(np.int32),
        "mig_index": np.full(len(unit_of_row), -1, np.int32), "pid": (1000 + pod).astype(np.int64),
        "pod_uid": uids[pod], "namespace": "ns", "pod": uids[pod], "samples": np.full(len(unit_of_row), 10, np.int64),
        "sm_util_sum": rng.uniform(0, 10, len(unit_of_row)) * (rng.random(len(unit_of_row)) > 0.02),
        "used_memory_bytes": rng.uniform(1e9, 2e10, len(unit_of_row)),
    })
    allocations = processes.select("agent_id", "boot_id", "seq", "gpu_index", "mig_index", "pod_uid", "namespace",
                                   "pod", replica=pl.lit(0, pl.Int32), resource=pl.lit("nvidia.com/gpu"),
                                   share=1.0 / pl.lit(k[unit_of_row]))
    tenants = pl.DataFrame({"pod_uid": uids, "tenant": [f"team-{p % n_tenants}" for p in range(n_pods)]})
    return {"devices": devices, "processes": processes, "allocations": allocations, "tenants": tenants}


def _polars_naive(c: dict[str, pl.DataFrame]) -> pl.DataFrame:
    key = ["agent_id", "boot_id", "seq", "gpu_index", "mig_index"]
    units = c["devices"].lazy().select(*key, "interval_start_ns", busy=pl.col("gpu_util") * 10.0,
                                       energy=pl.col("energy_delta_mj") / 1e3 * pl.col("gpu_util"))
    return (
        c["processes"].lazy()
        .with_columns(w=pl.col("sm_util_sum") / pl.col("sm_util_sum").sum().over(key))
        .join(units, on=key).join(c["tenants"].lazy(), on="pod_uid", how="left")
        .group_by([*key, "interval_start_ns", "tenant"])
        .agg(gpu_seconds=(pl.col("busy") * pl.col("w")).sum(), energy_j=(pl.col("energy") * pl.col("w")).sum())
        .collect()
    )


_SQL = """
SELECT p.agent_id, p.boot_id, p.seq, p.gpu_index, p.mig_index, d.interval_start_ns, t.tenant,
       sum(d.gpu_util * 10.0 * p.w) AS gpu_seconds,
       sum(d.energy_delta_mj / 1e3 * d.gpu_util * p.w) AS energy_j
FROM (SELECT *, sm_util_sum / sum(sm_util_sum) OVER (PARTITION BY agent_id, boot_id, seq, gpu_index, mig_index) AS w
      FROM processes) p
JOIN devices d USING (agent_id, boot_id, seq, gpu_index, mig_index)
LEFT JOIN tenants t USING (pod_uid)
GROUP BY ALL
"""


def _one(variant: str, gpus: int, ticks: int, chunks: int, q: Any) -> None:
    """Child process: build chunks, time only the attribution of each, report rows, seconds, peak RSS."""
    from gpuledger.analytics.fastsplit import busy_split
    from gpuledger.analytics.ledger import attribute
    from gpuledger.store import Store

    store = Store() if variant == "duckdb_sql" else None
    if store is not None:
        store.execute("SET enable_progress_bar = false")
    rows, secs, cpu, out_rows = 0, 0.0, 0.0, 0
    for i in range(chunks):
        c = make_chunk(gpus, ticks, seed=i)
        t0, c0 = time.perf_counter(), time.process_time()
        if variant == "attribute":
            res = attribute(c["devices"].lazy(), c["processes"].lazy(), c["allocations"].lazy(),
                            c["tenants"].lazy()).collect()
        elif variant == "polars_naive":
            res = _polars_naive(c)
        elif variant == "duckdb_sql":
            assert store is not None
            for name in ("devices", "processes", "tenants"):
                store.con.register(name, c[name].to_arrow())
            res = store.query(_SQL)
            for name in ("devices", "processes", "tenants"):
                store.con.unregister(name)
        else:
            res = busy_split(c["devices"], c["processes"], c["tenants"])
        secs += time.perf_counter() - t0
        cpu += time.process_time() - c0
        rows += c["processes"].height
        out_rows += res.height
        del c, res
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put({"rows": rows, "seconds": secs, "cpu_seconds": cpu, "out_rows": out_rows, "peak_rss_mb": peak_mb})


def measure(variant: str, gpus: int, ticks: int, chunks: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_one, args=(variant, gpus, ticks, chunks, q))
    p.start()
    try:
        got: dict[str, Any] = q.get(timeout=1800)
    except Exception:  # the child died (e.g. out of memory): say so instead of hanging
        p.join(5)
        raise RuntimeError(f"benchmark variant {variant} failed (exit code {p.exitcode})") from None
    p.join()
    return got


def run(quick: bool = False) -> list[dict[str, Any]]:
    gpus, ticks, chunks = (200, 60, 2) if quick else (1000, 360, 4)  # full: 1,000 GPUs x 1 h per chunk
    rows = []
    for variant in ("polars_naive", "duckdb_sql", "fast_split", "attribute"):
        r = measure(variant, gpus, ticks, chunks)
        rate = r["rows"] / r["seconds"]
        rows.append({
            "variant": variant, "slice": f"{chunks} chunks x {gpus} GPUs x {ticks} ticks",
            "process_rows": r["rows"], "seconds": round(r["seconds"], 2), "rows_per_s_M": round(rate / 1e6, 2),
            "cpu_s": round(r["cpu_seconds"], 2), "rows_per_cpu_s_M": round(r["rows"] / r["cpu_seconds"] / 1e6, 2),
            "peak_rss_mb": round(r["peak_rss_mb"]), "month_1e9_rows_min": round(MONTH_ROWS / rate / 60, 1),
        })
    return rows
