"""Attribution speed and peak memory: process-interval rows per second, streamed in chunks.

The target workload is one month of 1,000 GPUs at a 10 s tick: 1,000 x
259,200 GPU-intervals x ~3.9 processes (time-slicing/MPS mix) ~ 1e9
process-intervals. This box cannot hold that, so each variant attributes a
representative slice -- ``chunks`` chunks of ``gpus`` GPUs x ``ticks`` ticks,
~4 processes per GPU-interval (1-8, a time-sliced mix), store-shaped columns
(string message keys, pod uids) -- and the month is extrapolated from the
measured rate (rows / rate), stating the slice. Every variant runs in its own
spawned process, so its peak RSS (``ru_maxrss``) is its own (plus the
runner's ~60 MB at spawn: Linux keeps ``ru_maxrss`` across exec, which is
also why ``python -m benchmarks`` runs each benchmark in a fresh runner), and first
attributes one untimed chunk of the same size (thread pools, caches and the
allocator settle alike for all, as after a streamed month's first chunk; for
the fast variants this also loads the compiled kernel from Numba's cache, or
compiles it once on a fresh machine, ~5 s, outside the timing). Wall time and CPU time (``process_time``, all threads)
are both reported: on a shared, loaded machine rows per CPU-second is the
steadier figure. A streamed month holds one chunk (two for the ``_2t`` variants)
at a time, so peak memory does not grow with the month.

Variants (the baselines compute only the busy split, grouped per interval x
tenant; the ledger variants compute every kind, rule, energy and memory line):

- ``polars_naive``: the straightforward Polars busy split: window
  normalisation over the string unit key + join to units + join to tenants +
  group-by (baseline);
- ``duckdb_sql``: the same in DuckDB SQL on the same Arrow data (baseline);
- ``fast_kernel``: ``analytics.ledger.attribute_chunk`` on integer-coded chunks
  (``Chunk``, as the job's read path delivers them; coding is outside the
  timing): the whole ledger as normalised rows (unit, owner, kind, rule, GPU-s,
  J, GB-s) plus the chunk's unit and owner tables -- compiled (Numba) passes
  over rows sorted by unit, no joins;
- ``fast_kernel_2t``: ``fast_kernel`` with two chunks at a time in two threads
  (the compiled passes run without the GIL);
- ``fast_ledger``: ``fast_kernel`` plus ``Result.frame()``: LEDGER_COLUMNS with
  dictionary-encoded (Enum) strings, what the job appends;
- ``fast_ledger_2t``: ``fast_ledger`` with two chunks at a time in two threads;
- ``fast_from_strings``: ``ledger.chunk_from_frames`` (store-shaped string frames ->
  codes, in Polars) + ``fast_ledger``: the cost when the input is not coded;
- ``attribute``: the reference ledger (``analytics.ledger.attribute``);
- ``job_read``: the slice written to a real DuckDB file first (untimed), then
  streamed through the job's read path (``job.read_chunk``: SQL join on the
  message keys, owner dictionary, ORDER BY) in the job's 5,000-message
  chunks + ``fast_ledger``: reading included, the ledger not written back;
- ``job``: ``run_attribution`` on that file: read, attribute, append to
  ``ledger``/``attributed`` and the chunk's hourly sums to ``ledger_hourly``
  in one transaction per chunk, then merge the hours' partial rollups;
- ``job_rollups``: the same with a ledger window of 0 (the product is the
  rollups: interval rows are kept for the newest hour only);
- ``job_rollups_2p``: ``job_rollups`` with the kernel in a pool of 2 spawned
  processes (``--workers 2``), this process reading and booking.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from typing import Any

import numpy as np
import polars as pl

from benchmarks.result import Target

UNITS = {
    "process_rows": "rows", "ledger_rows": "rows", "seconds": "s", "rows_per_s_M": "M rows/s",
    "cpu_s": "CPU-s", "rows_per_cpu_s_M": "M rows/CPU-s", "peak_rss_mb": "MiB", "month_1e9_rows_min": "min",
    "worker_peak_rss_mb": "MiB",
}
TARGETS = (
    Target("compiled ledger kernel, process-interval rows per second (wall)", "rows_per_s_M", ">=", 30.0,
           "M rows/s", "issue 5", {"variant": "fast_kernel"}),
    Target("attribution job end to end (read, attribute, write rollups), rows per second (wall)", "rows_per_s_M",
           ">=", 5.0, "M rows/s", "issue 14", {"variant": "job_rollups_2p"}),
    Target("attribution job peak memory (4 GB)", "peak_rss_mb", "<", 3815.0, "MiB", "issue 5", {"variant": "job"}),
)
MONTH_ROWS = 1_000 * 259_200 * 3.9  # process-intervals in a month of 1,000 GPUs at 10 s
VARIANTS = ("polars_naive", "duckdb_sql", "fast_kernel", "fast_kernel_2t", "fast_ledger", "fast_ledger_2t",
            "fast_from_strings",
            "attribute", "job_read", "job", "job_rollups", "job_rollups_2p")


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


def _write_store(path: str, gpus: int, ticks: int, chunks: int) -> int:
    """The slice as a gpuledger DuckDB file (store tables, full schema); returns process rows."""
    from gpuledger.store import Store

    rows = 0
    with Store(path) as store:
        for i in range(chunks):
            c = make_chunk(gpus, ticks, seed=i)
            d = c["devices"].with_columns(health=pl.lit(0, pl.UInt8))
            store.append("messages", d.select("agent_id", "boot_id", "seq", "node", "interval_start_ns",
                                              "interval_end_ns", schema_version=pl.lit(3, pl.UInt16)).unique(
                subset=["agent_id", "boot_id", "seq"], maintain_order=True))
            store.append("devices", d)
            p = c["processes"].with_columns(node=pl.col("agent_id"), kind=pl.lit(0, pl.UInt8),
                                            interval_start_ns=pl.col("seq") * 10**10,
                                            interval_end_ns=(pl.col("seq") + 1) * 10**10)
            store.append("processes", p)
            store.append("allocations", c["allocations"].with_columns(
                node=pl.col("agent_id"), interval_start_ns=pl.col("seq") * 10**10,
                interval_end_ns=(pl.col("seq") + 1) * 10**10))
            if i == 0:
                t = c["tenants"]
                store.append("pods", t.select("pod_uid", namespace=pl.lit("ns"), name="pod_uid",
                                              labels=pl.format('{{"team": "{}"}}', "tenant"),
                                              last_seen_ns=pl.lit(0, pl.Int64)))
            rows += p.height
        store.execute("CHECKPOINT")
    return rows


def _job_variant(variant: str, gpus: int, ticks: int, chunks: int) -> dict[str, Any]:
    import tempfile
    from pathlib import Path

    from gpuledger.analytics import ledger as L
    from gpuledger.analytics.job import _PENDING, read_chunk, run_attribution
    from gpuledger.analytics.tenancy import TenancyRules
    from gpuledger.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "slice.duckdb")
        rows = _write_store(path, gpus, ticks, chunks)
        with Store(path) as store:
            store.execute("SET enable_progress_bar = false")
            out_rows = 0
            t0, c0 = time.perf_counter(), time.process_time()
            if variant.startswith("job_rollups") or variant == "job":
                res = run_attribution(store, TenancyRules(), workers=2 if variant.endswith("_2p") else 1,
                                      ledger_window_s=0.0 if variant.startswith("job_rollups") else None)
                out_rows = res.ledger_rows
            else:
                pending = store.query(_PENDING)
                tenants = TenancyRules().tenant_table(store.query("SELECT pod_uid, namespace, labels, name FROM pods"))
                for start in range(0, pending.height, 5000):
                    keys = pending.slice(start, 5000)
                    out_rows += L.attribute_chunk(read_chunk(store, keys, tenants.lazy())).frame().height
            secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"rows": rows, "seconds": secs, "cpu_seconds": cpu, "out_rows": out_rows}


def _warm_up(variant: str, store: Any, gpus: int, ticks: int) -> None:
    """One untimed full-size chunk first: thread pools, caches and the allocator's thresholds settle for
    every variant alike, as they have in a streamed month after its first chunk."""
    from gpuledger.analytics import ledger as L

    c = make_chunk(gpus, ticks, seed=99)
    if variant == "polars_naive":
        _polars_naive(c)
    elif variant == "duckdb_sql" and store is not None:
        with store.registered(**{name: c[name] for name in ("devices", "processes", "tenants")}):
            store.query(_SQL)
    elif variant == "attribute":
        L.attribute(*(c[k].lazy() for k in ("devices", "processes", "allocations", "tenants"))).collect()
    else:
        L.attribute_chunk(L.chunk_from_frames(c["devices"], c["processes"], c["allocations"], c["tenants"])).frame()


def _one(variant: str, gpus: int, ticks: int, chunks: int, q: Any) -> None:
    """Child process: build chunks, time only the attribution of each, report rows, seconds, peak RSS."""
    from concurrent.futures import ThreadPoolExecutor

    from gpuledger.analytics import ledger as L
    from gpuledger.store import Store

    if variant in ("job_read", "job", "job_rollups", "job_rollups_2p"):
        got = _job_variant(variant, gpus, ticks, chunks)
        got["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        got["worker_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 or None
        q.put(got)
        return
    store = Store() if variant == "duckdb_sql" else None
    if store is not None:
        store.execute("SET enable_progress_bar = false")
    rows, secs, cpu, out_rows = 0, 0.0, 0.0, 0
    _warm_up(variant, store, gpus, ticks)
    two = variant in ("fast_kernel_2t", "fast_ledger_2t")
    if two:  # two chunks in flight, one per thread
        def attribute_one(ch: L.Chunk) -> int:
            r = L.attribute_chunk(ch)
            return r.rows.height if variant == "fast_kernel_2t" else r.frame().height

        with ThreadPoolExecutor(2) as pool:
            for i in range(0, chunks, 2):
                cs = [make_chunk(gpus, ticks, seed=j) for j in range(i, min(i + 2, chunks))]
                coded = [L.chunk_from_frames(c["devices"], c["processes"], c["allocations"], c["tenants"]) for c in cs]
                rows += sum(c["processes"].height for c in cs)
                del cs
                t0, c0 = time.perf_counter(), time.process_time()
                out_rows += sum(pool.map(attribute_one, coded))
                secs += time.perf_counter() - t0
                cpu += time.process_time() - c0
                del coded
    for i in range(chunks if not two else 0):
        c = make_chunk(gpus, ticks, seed=i)
        coded = L.chunk_from_frames(c["devices"], c["processes"], c["allocations"], c["tenants"]) \
            if variant in ("fast_kernel", "fast_ledger") else None
        t0, c0 = time.perf_counter(), time.process_time()
        if variant == "attribute":
            n_out = L.attribute(c["devices"].lazy(), c["processes"].lazy(), c["allocations"].lazy(),
                              c["tenants"].lazy()).collect().height
        elif variant == "polars_naive":
            n_out = _polars_naive(c).height
        elif variant == "duckdb_sql":
            assert store is not None
            with store.registered(**{name: c[name] for name in ("devices", "processes", "tenants")}):
                n_out = store.query(_SQL).height
        elif variant == "fast_kernel":
            assert coded is not None
            n_out = L.attribute_chunk(coded).rows.height
        elif variant == "fast_ledger":
            assert coded is not None
            n_out = L.attribute_chunk(coded).frame().height
        else:  # fast_from_strings
            n_out = L.attribute_chunk(L.chunk_from_frames(c["devices"], c["processes"], c["allocations"],
                                                      c["tenants"])).frame().height
        secs += time.perf_counter() - t0
        cpu += time.process_time() - c0
        rows += c["processes"].height
        out_rows += n_out
        del c, coded
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


def parameters(quick: bool) -> dict[str, Any]:
    gpus, ticks, chunks = (200, 60, 2) if quick else (1000, 360, 4)  # full: 1,000 GPUs x 1 h per chunk
    return {"gpus": gpus, "ticks": ticks, "tick_s": 10, "chunks": chunks, "month_rows": MONTH_ROWS,
            "variants": list(VARIANTS)}


def run(quick: bool = False) -> list[dict[str, Any]]:
    params = parameters(quick)
    gpus, ticks, chunks = params["gpus"], params["ticks"], params["chunks"]
    rows = []
    for variant in VARIANTS:
        r = measure(variant, gpus, ticks, chunks)
        rate = r["rows"] / r["seconds"]
        rows.append({
            "variant": variant, "slice": f"{chunks} chunks x {gpus} GPUs x {ticks} ticks",
            "process_rows": r["rows"], "ledger_rows": r["out_rows"], "seconds": round(r["seconds"], 2),
            "rows_per_s_M": round(rate / 1e6, 2),
            "cpu_s": round(r["cpu_seconds"], 2), "rows_per_cpu_s_M": round(r["rows"] / r["cpu_seconds"] / 1e6, 2),
            "peak_rss_mb": round(r["peak_rss_mb"]), "month_1e9_rows_min": round(MONTH_ROWS / rate / 60, 1),
            **({"worker_peak_rss_mb": round(r["worker_peak_rss_mb"])} if r.get("worker_peak_rss_mb") else {}),
        })
    return rows
