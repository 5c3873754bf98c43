"""Monthly chargeback of a 1,000-GPU fleet: export, close, re-export, reconciliation, from the hourly rollups.

The bill is made from ``ledger_hourly`` (issue 14: rollups are the billing
product). A fast generator writes a month of rollups straight into a DuckDB
file -- ``gpus`` H100/A100 GPUs (8 per node) x every hour of October 2026 x
``pods`` time-slicing tenants per GPU (a busy and an idle row each) plus the
unallocated remainder; each GPU-hour's rows sum to 3,600 GPU-seconds
(conservation, as attribution writes them), ``intervals`` = 360 (a 10 s
tick). Then, each timed once in a spawned process with the default DuckDB
``memory_limit`` (1GB; its own peak RSS, plus the runner's ~60 MB at spawn:
Linux keeps ``ru_maxrss`` across exec):

- ``preview``: ``closing.export`` of the open month (rollups summed in DuckDB,
  pricing, allocation, CSV and Parquet built);
- ``close``: the same with ``final=True`` (stores both files and the billed rows);
- ``closed``: re-export of the closed month (stored bytes);
- ``reconcile``: the reconciliation report of the closed month;
- ``low_memory``: the preview again under ``memory_limit=64MB`` -- must give the identical file;
- ``showback_cold`` / ``showback_warm``: ``gpuledger serve`` on the file (the
  month older than the interval ledger's window, so only rollups exist), the
  first and second monthly showback by tenant over real HTTP; peak RSS is
  the server's (``VmHWM``); ``ok``: its total equals the closed file's.

``ledger_rows`` is the interval-grain rows the rollups stand for (rows x 360).
``scale_1d`` / ``scale_7d``: the preview of a file holding only the first 1 or
7 days of the same fleet (the month's own run is the 31-day point), to state
how time and memory grow with the days in the month.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from benchmarks.result import Target

UNITS = {
    "gpus": "count", "hours": "count", "rollup_rows": "rows", "ledger_rows": "rows", "rows_per_s": "rows/s",
    "seconds": "s", "peak_rss_mib": "MiB", "file_bytes": "B", "tenants": "count", "ok": "bool",
}
TARGETS = (
    Target("1,000-GPU cold monthly showback (API, from rollups)", "seconds", "<", 1.0, "s", "issue 14",
           {"step": "showback_cold", "gpus": 1000}),
    Target("1,000-GPU month close (from rollups), wall", "seconds", "<=", 60.0, "s", "issue 14", {"step": "close", "gpus": 1000}),
    Target("1,000-GPU month close, peak memory (2 GB)", "peak_rss_mib", "<=", 1907.0, "MiB", "issue 14",
           {"step": "close", "gpus": 1000}),
)
OCT = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp()) * 10**9
HOUR_NS = 3_600 * 10**9
HOURS = 31 * 24
TENANTS = 40


def make_rollups(gpus: int, hours: int, pods: int, seed: int = 7) -> pl.DataFrame:
    """``gpus`` x ``hours`` GPU-hours of rollup rows (see the module docstring)."""
    from gpuledger.analytics.exact import exact

    rng = np.random.default_rng(seed)
    g = np.tile(np.arange(gpus), hours)
    h = np.repeat(np.arange(hours), gpus)
    n = len(g)
    held = rng.uniform(0, 1, (n, pods + 1))
    held[:, :pods] *= rng.uniform(0, 1, (n, pods)) < 0.85  # some pods absent this hour
    share = held / held.sum(axis=1, keepdims=True) * 3600.0  # per pod held seconds + unallocated; sums to 3600
    busy_frac = rng.uniform(0, 1, (n, pods))
    node = np.array([f"node-{x // 8:04d}" for x in range(gpus)])[g]
    base = {
        "hour_start_ns": OCT + h.astype(np.int64) * HOUR_NS, "node": node,
        "gpu_uuid": np.array([f"GPU-{x:05d}" for x in range(gpus)])[g], "gpu_index": (g % 8).astype(np.uint16),
        "mig_index": np.full(n, -1, np.int16),
        "model": np.where(g % 3 == 0, "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"), "profile": None,
        "sharing": "time-slicing",
    }
    parts = []
    for p in range(pods):
        tenant = np.array([f"team-{i:02d}" for i in range(TENANTS)])[(g * 3 + p + h // 24) % TENANTS]
        pod = np.char.add(tenant, f"-pod-{p}")
        for kind, secs, rule in (("busy", share[:, p] * busy_frac[:, p], "process_samples"),
                                 ("allocated_idle", share[:, p] * (1 - busy_frac[:, p]), "idle_allocation_share")):
            parts.append(pl.DataFrame({**base, "kind": kind, "tenant": tenant, "namespace": tenant, "pod": pod,
                                       "rule": rule, "gpu_seconds": secs}))
    parts.append(pl.DataFrame({**base, "kind": "unallocated", "tenant": "platform", "namespace": None, "pod": None,
                               "rule": "unallocated", "gpu_seconds": share[:, pods]}))
    frame = pl.concat(parts, how="diagonal_relaxed").filter(pl.col("gpu_seconds") > 0)
    # The exact columns (analytics/exact.py): each GPU-hour's capacity, 3,600 s in ns, on one row (its
    # unallocated one: always there, its share is never 0); the bill sums it per GPU-hour.
    return (frame.with_columns(energy_j=pl.col("gpu_seconds") * 400.0, energy_intervals=pl.lit(360, pl.UInt32),
                               memory_gb_seconds=pl.lit(None, pl.Float64), intervals=pl.lit(360, pl.UInt32),
                               capacity_ns=pl.when(pl.col("kind") == "unallocated").then(pl.lit(3600 * 10**9, pl.Int64))
                               .otherwise(pl.lit(0, pl.Int64)), cluster=pl.lit("default"))
            .with_columns(exact("gpu_seconds"), exact("energy_j"), exact("memory_gb_seconds")))


def _write(db: str, gpus: int, pods: int, queue: Any, days: int = 31) -> None:
    from gpuledger.analytics.hourly import HOURLY_COLUMNS
    from gpuledger.store import Store

    rows = 0
    with Store(db) as store:
        for day in range(days):  # a day at a time: the generator's memory stays a day's
            frame = make_rollups(gpus, 24, pods, seed=day).with_columns(
                hour_start_ns=pl.col("hour_start_ns") + day * 24 * HOUR_NS).select(HOURLY_COLUMNS)
            store.append("ledger_hourly", frame)
            rows += frame.height
    queue.put(rows)


def _step(db: str, step: str, queue: Any) -> None:
    from gpuledger.analytics import closing
    from gpuledger.analytics.prices import default_price_book
    from gpuledger.analytics.reconcile import reconcile
    from gpuledger.store import Store, configure

    configure(memory_limit="64MB" if step == "low_memory" else "1GB")
    book, now = default_price_book(), datetime(2026, 11, 2, tzinfo=UTC)
    t0 = time.perf_counter()
    with Store(db, read_only=step != "close") as store:
        if step == "reconcile":
            report = reconcile(store, "2026-10", book, now=now)
            size, ok = len(report.tenants), report.ok
            out: dict[str, Any] = {"tenants": size}
        else:
            result = closing.export(store, "2026-10", book, final=step == "close", now=now)
            size, ok = len(result.content), True
            out = {"file_bytes": size, "sha256": hashlib.sha256(result.content).hexdigest()}
    queue.put({"seconds": round(time.perf_counter() - t0, 3), "peak_rss_mib":
               round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), **out, "ok": ok})


def _spawned(target: Any, *args: Any) -> Any:
    """Run ``target(*args, queue)`` in a fresh process (the parent stays small: ru_maxrss survives exec)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def parameters(quick: bool) -> dict[str, Any]:
    return {"gpus": 64 if quick else 1000, "pods_per_gpu": 3, "hours": HOURS, "month": "2026-10",
            "tenants": TENANTS, "tick_s": 10, "memory_limit": "1GB (low_memory: 64MB)"}


def run(quick: bool) -> list[dict[str, Any]]:
    params = parameters(quick)
    gpus, pods = params["gpus"], params["pods_per_gpu"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.duckdb")
        n = _spawned(_write, db, gpus, pods)
        digests = set()
        for step in ("preview", "low_memory", "close", "closed", "reconcile"):
            out = _spawned(_step, db, step)
            if "sha256" in out:
                digests.add(out.pop("sha256"))
            rows.append({"step": step, "gpus": gpus, "hours": HOURS, "rollup_rows": n, "ledger_rows": n * 360,
                         "rows_per_s": int(n / out["seconds"]) if step != "closed" else None, **out})
        for r in rows:  # the same file whatever the memory limit, and the closed file is the preview's
            r["ok"] = r["ok"] and len(digests) == 1
        rows += _showback(db, gpus, n)
        for days in (1, 7):
            small = str(Path(tmp) / f"days-{days}.duckdb")
            m = _spawned(_write_days, small, gpus, pods, days)
            out = _spawned(_step, small, "preview")
            out.pop("sha256", None)
            rows.append({"step": f"scale_{days}d", "gpus": gpus, "hours": days * 24, "rollup_rows": m,
                         "ledger_rows": m * 360, "rows_per_s": int(m / out["seconds"]), **out})
    return rows


def _write_days(db: str, gpus: int, pods: int, days: int, queue: Any) -> None:
    _write(db, gpus, pods, queue, days)


def _showback(db: str, gpus: int, n: int) -> list[dict[str, Any]]:
    import subprocess
    import sys
    from decimal import Decimal

    from benchmarks.bench_api import _free_port, _get, _wait
    from gpuledger.api.tokens import create_token
    from gpuledger.store import Store

    with Store(db) as store:
        _, token = create_token(store, "admin")
        billed = Decimal(store.scalar("SELECT billed_total FROM chargeback_closes WHERE month = '2026-10'"))
        # The month is older than the interval ledger's window: its hours exist only as rollups.
        store.execute("INSERT INTO ledger_window (id, kept_from_ns) VALUES (0, ?)", [OCT + HOURS * HOUR_NS])
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "gpuledger.cli", "serve", "--db", db, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v1/showback?start=2026-10-01&end=2026-11-01&group_by=tenant"
    out = []
    try:
        _wait(base)
        for step in ("showback_cold", "showback_warm"):
            t0 = time.perf_counter()
            answer = _get(url, token)
            secs = time.perf_counter() - t0
            hwm = next(int(line.split()[1]) for line in Path(f"/proc/{server.pid}/status").read_text().splitlines()
                       if line.startswith("VmHWM"))
            total = sum((Decimal(r["cost"]) for r in answer["rows"]), Decimal(0))
            out.append({"step": step, "gpus": gpus, "hours": HOURS, "rollup_rows": n, "ledger_rows": n * 360,
                        "rows_per_s": int(n / secs), "seconds": round(secs, 3), "peak_rss_mib": round(hwm / 1024, 1),
                        "ok": total == billed})
    finally:
        server.terminate()
        server.wait(10)
    return out
