"""Storage: bytes on disk per GPU-day of raw device samples at a 10 s tick, gpuledger vs Prometheus.

The same device counters -- the 21 DEVICE metric columns of wire schema v1
(utilization, memory, power, energy counter, temperatures, clocks, PCIe
replays, XID, remapped rows, throttle reasons), for ``gpus`` GPUs on 8-GPU
nodes over ``hours`` hours at a 10 s tick -- are stored twice:

- gpuledger: node messages through the ingest batch decoder into a DuckDB
  file (``devices`` + ``messages`` tables, checkpointed), file size on disk,
  and the size of a compacted copy (``Store.compact_into``: full row groups,
  newest storage format);
- Prometheus: the same values as OpenMetrics series with DCGM exporter
  names and labels (``gpu``, ``UUID``, ``Hostname``, ``modelName``), each at
  its 10 s timestamp, backfilled into a TSDB block by the real ``promtool tsdb
  create-blocks-from openmetrics`` of the Debian ``prometheus`` package (one
  block, as a compacted TSDB holds it), block size on disk (chunks + index).

Values follow realistic shapes (utilization and power as bounded random
walks, temperatures that drift, clocks and totals mostly constant, energy a
growing counter), rounded as the driver reports them (integer %, mW, C, MHz,
MiB). Reported: bytes per GPU-day and per stored value for both.
Skipped (with the reason) where promtool is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.result import Target
from gpuledger import wire
from gpuledger.ingest.batch import decode_batch
from gpuledger.store import Store

UNITS = {
    "gpus": "count", "hours": "h", "values": "count", "bytes": "B", "bytes_per_gpu_day": "B",
    "bytes_per_value": "B", "duckdb_x": "x", "duckdb_compacted_x": "x",
}
TARGETS = (
    Target("raw samples, bytes per stored value, live DuckDB file / Prometheus TSDB", "duckdb_x", "<=", 1.0, "x",
           "issue 4", {"store": "ratio_to_prometheus"}),
)
TICK_S = 10
START_S = 1_790_812_800  # 2026-10-01T00:00:00Z
DCGM = {  # wire column -> DCGM exporter metric name
    "gpu_util": "DCGM_FI_DEV_GPU_UTIL", "mem_copy_util": "DCGM_FI_DEV_MEM_COPY_UTIL",
    "enc_util": "DCGM_FI_DEV_ENC_UTIL", "dec_util": "DCGM_FI_DEV_DEC_UTIL",
    "gr_engine_active": "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "fb_total_bytes": "DCGM_FI_DEV_FB_TOTAL",
    "fb_used_bytes": "DCGM_FI_DEV_FB_USED", "fb_free_bytes": "DCGM_FI_DEV_FB_FREE",
    "fb_reserved_bytes": "DCGM_FI_DEV_FB_RESERVED", "power_w": "DCGM_FI_DEV_POWER_USAGE",
    "energy_total_mj": "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "energy_delta_mj": "gpuledger_energy_delta_mj",
    "gpu_temp_c": "DCGM_FI_DEV_GPU_TEMP", "mem_temp_c": "DCGM_FI_DEV_MEMORY_TEMP",
    "sm_clock_mhz": "DCGM_FI_DEV_SM_CLOCK", "mem_clock_mhz": "DCGM_FI_DEV_MEM_CLOCK",
    "pcie_replay_total": "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "xid_last": "DCGM_FI_DEV_XID_ERRORS",
    "remapped_rows_correctable": "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
    "remapped_rows_uncorrectable": "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    "throttle_reasons": "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
}


def series(gpus: int, ticks: int, seed: int = 5) -> dict[str, np.ndarray]:
    """Per metric, a (ticks, gpus) array of driver-shaped values."""
    rng = np.random.default_rng(seed)
    walk = np.clip(np.cumsum(rng.normal(0, 4, (ticks, gpus)), axis=0) % 200, 0, None)
    util = np.clip(np.where(walk > 100, 200 - walk, walk), 0, 100).round()  # integer percent
    power = (80 + util * 6 + rng.normal(0, 5, (ticks, gpus))).round(3)  # W, mW resolution
    delta = (power * TICK_S * 1000).round()  # mJ in the tick
    mib = 2**20
    used = (np.repeat(rng.integers(1_000, 70_000, (ticks // 360 + 1, gpus)), 360, axis=0)[:ticks]) * mib
    out = {
        "gpu_util": util / 100, "mem_copy_util": (util * 0.4).round() / 100,
        "enc_util": np.zeros((ticks, gpus)), "dec_util": np.zeros((ticks, gpus)),
        "gr_engine_active": (util * 0.9).round() / 100, "fb_total_bytes": np.full((ticks, gpus), 81_559.0 * mib),
        "fb_used_bytes": used.astype(float), "fb_free_bytes": 81_559.0 * mib - used - 520 * mib,
        "fb_reserved_bytes": np.full((ticks, gpus), 520.0 * mib), "power_w": power,
        "energy_total_mj": np.cumsum(delta, axis=0) + 1e9, "energy_delta_mj": delta,
        "gpu_temp_c": (35 + util * 0.4 + rng.normal(0, 0.3, (ticks, gpus))).round(),
        "mem_temp_c": (40 + util * 0.3 + rng.normal(0, 0.3, (ticks, gpus))).round(),
        "sm_clock_mhz": np.where(util > 0, 1980.0, 345.0), "mem_clock_mhz": np.full((ticks, gpus), 2619.0),
        "pcie_replay_total": np.zeros((ticks, gpus)), "xid_last": np.zeros((ticks, gpus)),
        "remapped_rows_correctable": np.zeros((ticks, gpus)), "remapped_rows_uncorrectable": np.zeros((ticks, gpus)),
        "throttle_reasons": np.where(util > 90, 4.0, 0.0),
    }
    return out


def node_batches(values: dict[str, np.ndarray], gpus: int, ticks: int, flush_ticks: int = 2000) -> Iterator[Any]:
    """The samples as node messages (8 GPUs each, one per node and tick) through the ingest batch
    decoder: one decoded batch (table name -> Arrow) per ``flush_ticks`` ticks, as a flush stores it."""
    nodes = gpus // 8
    for t0 in range(0, ticks, flush_ticks):
        bufs = []
        for t in range(t0, min(ticks, t0 + flush_ticks)):
            for n in range(nodes):
                st = wire.StringTable()
                dev = wire.empty("devices", 8)
                dev["gpu_index"] = np.arange(8)
                dev["mig_index"] = -1
                dev["uuid"] = [st(f"GPU-{n:04d}-{g}-6f1c2d3e-4a5b-6c7d-8e9f0a1b") for g in range(8)]
                dev["model"] = st("NVIDIA H100 80GB HBM3")
                dev["profile"] = wire.NULL_STR
                dev["slice_fraction"] = 1.0
                dev["util_samples"] = 60
                for col in wire.DEVICE_METRICS:
                    dev[col] = values[col][t, n * 8:(n + 1) * 8]
                start = (START_S + t * TICK_S) * 10**9
                bufs.append(wire.encode(wire.Message(
                    agent_id=f"node-{n:04d}", boot_id="b", seq=t, node=f"node-{n:04d}", interval_start_ns=start,
                    interval_end_ns=start + TICK_S * 10**9, strings=st.items, pods=[], devices=dev,
                    processes=wire.empty("processes"), allocations=wire.empty("allocations"),
                    field_errors=wire.empty("field_errors"), driver_version="550.54.15")))
        yield decode_batch(bufs).tables


def store_gpuledger(values: dict[str, np.ndarray], gpus: int, ticks: int, path: Path,
                    compacted: Path | None = None) -> int:
    """Store through the ingest decoder into a DuckDB file (size of a compacted copy when ``compacted``)."""
    with Store(path) as store:
        for tables in node_batches(values, gpus, ticks):
            store.write_arrow(tables)
        store.execute("CHECKPOINT")
        if compacted is not None:
            return store.compact_into(compacted)
    return path.stat().st_size + (Path(f"{path}.wal").stat().st_size if Path(f"{path}.wal").exists() else 0)


def store_prometheus(values: dict[str, np.ndarray], gpus: int, ticks: int, tmp: Path) -> int:
    src = tmp / "samples.om"
    with src.open("w") as f:
        for col, name in DCGM.items():
            f.write(f"# TYPE {name} gauge\n")
            v = values[col]
            for g in range(gpus):
                labels = (f'{{gpu="{g % 8}",UUID="GPU-{g // 8:04d}-{g % 8}-6f1c2d3e-4a5b-6c7d-8e9f0a1b",'
                          f'Hostname="node-{g // 8:04d}",modelName="NVIDIA H100 80GB HBM3"}}')
                f.writelines(f"{name}{labels} {x:.17g} {START_S + t * TICK_S}\n" for t, x in enumerate(v[:, g]))
        f.write("# EOF\n")
    out = tmp / "tsdb"
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=1000h",
                    str(src), str(out)], check=True, capture_output=True)
    src.unlink()
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def parameters(quick: bool) -> dict[str, Any]:
    gpus, hours = (16, 6) if quick else (16, 24)
    return {"gpus": gpus, "hours": hours, "tick_s": TICK_S, "metrics": len(DCGM)}


def run(quick: bool) -> list[dict[str, Any]]:
    gpus, hours = parameters(quick)["gpus"], parameters(quick)["hours"]
    ticks = hours * 3600 // TICK_S
    values = series(gpus, ticks)
    n_values = gpus * ticks * len(DCGM)
    gpu_days = gpus * hours / 24
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        size = store_gpuledger(values, gpus, ticks, Path(tmp) / "raw.duckdb")
        rows.append({"store": "gpuledger_duckdb", "gpus": gpus, "hours": hours, "values": n_values,
                     "bytes": size, "bytes_per_gpu_day": round(size / gpu_days),
                     "bytes_per_value": round(size / n_values, 3)})
        size = store_gpuledger(values, gpus, ticks, Path(tmp) / "raw2.duckdb", compacted=Path(tmp) / "compact.duckdb")
        rows.append({"store": "gpuledger_duckdb_compacted", "gpus": gpus, "hours": hours, "values": n_values,
                     "bytes": size, "bytes_per_gpu_day": round(size / gpu_days),
                     "bytes_per_value": round(size / n_values, 3)})
        if shutil.which("promtool") is None:
            reason = "promtool not installed (Debian package prometheus; scripts/system-deps.sh installs it)"
            if os.environ.get("CI", "").lower() == "true":
                raise RuntimeError(reason)
            rows.append({"store": "prometheus_tsdb", "skipped": reason})
            return rows
        size = store_prometheus(values, gpus, ticks, Path(tmp))
        rows.append({"store": "prometheus_tsdb", "gpus": gpus, "hours": hours, "values": n_values,
                     "bytes": size, "bytes_per_gpu_day": round(size / gpu_days),
                     "bytes_per_value": round(size / n_values, 3)})
    prom = rows[2]["bytes"]
    rows.append({"store": "ratio_to_prometheus", "duckdb_x": round(rows[0]["bytes"] / prom, 2),
                 "duckdb_compacted_x": round(rows[1]["bytes"] / prom, 2)})
    return rows
