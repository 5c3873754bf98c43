"""Sizing: bytes on disk per GPU-day of every table, measured on a simulated fleet, and what one machine holds.

A simulated node (``gpus`` GPUs, the demo fleet's mix of exclusive,
time-sliced and fractional pods with their processes) runs the agent path at
a 10 s tick for ``hours`` hours into a store, which is attributed
(``run_attribution``: ledger and hourly rollups). Rows per GPU-day are
counted there. Bytes per row: DuckDB allocates 256 KiB blocks, too coarse
for a few hours of one node, so each table is tiled -- its rows repeated
with times shifted by the horizon (and message sequence numbers offset)
until it has at least 200,000 rows -- copied alone into a fresh DuckDB file
(``CREATE TABLE AS``, checkpointed), and the file size minus an empty
file's is divided by its rows. Repetition is a whole table apart, wider than
DuckDB's compression segments, so it does not compress better than a longer
run would. A table's size grows with GPU-days (the pods table with pods, not time).

The ``tiers`` row puts the default retention together -- raw samples 2
months (61 days), the interval ledger's window 7 days, hourly rollups 36
months -- as bytes per GPU, and ``one_machine`` says how many GPUs at a 10 s
tick fit that retention in 1 TB of disk (DuckDB file; Parquet segments and
compaction are smaller, see the storage benchmark).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

UNITS = {
    "gpus": "count", "hours": "count", "rows": "rows", "bytes_per_gpu_day": "B/GPU-day",
    "bytes_per_row": "B/row", "days_kept": "days", "bytes_per_gpu": "B/GPU", "gpus_per_tb": "GPUs",
}
TARGETS = ()
TABLES = ("messages", "devices", "processes", "allocations", "pods", "attributed", "ledger", "ledger_hourly")
#: Default retention of each tier, days (docs/storage.md).
KEPT_DAYS = {"raw": 61, "ledger": 7, "ledger_hourly": 36 * 30.44}


def parameters(quick: bool) -> dict[str, Any]:
    return {"gpus": 8, "hours": 1 if quick else 6, "tick_s": 10.0, "fleet": "demo_fleet(1 node, seed 3)",
            "tile_rows": TILE_ROWS}


TILE_ROWS = 200_000


def _tiled(frame: Any, horizon_ns: int) -> Any:
    """``frame`` repeated with times shifted by the horizon until it has TILE_ROWS rows."""
    import polars as pl

    if frame.is_empty():
        return frame
    times = [c for c in frame.columns if c.endswith("_ns") and frame[c].dtype == pl.Int64]
    copies = []
    for k in range(-(-TILE_ROWS // frame.height)):
        shifted = frame.with_columns(*(pl.col(c) + k * horizon_ns for c in times))
        if "seq" in frame.columns:
            shifted = shifted.with_columns(pl.col("seq") + k * 10**6)
        copies.append(shifted)
    return pl.concat(copies)


def _bytes_per_row(frame: Any, table: str, tmp: Path) -> float:
    import duckdb

    path = tmp / f"{table}.duckdb"
    empty = tmp / f"{table}-empty.duckdb"
    for target, data in ((empty, frame.head(0)), (path, frame)):
        con = duckdb.connect(str(target))
        con.register("src", data.to_arrow())
        con.execute("CREATE TABLE t AS SELECT * FROM src")
        con.execute("CHECKPOINT")
        con.close()
    return (path.stat().st_size - empty.stat().st_size) / frame.height


def run(quick: bool) -> list[dict[str, Any]]:
    from gpuledger.sim.accuracy import simulate
    from gpuledger.sim.fleetsim import demo_fleet

    p = parameters(quick)
    horizon = p["hours"] * 3600.0
    store = simulate(demo_fleet(1, p["gpus"], seed=3, horizon_s=horizon), tick_s=p["tick_s"], horizon_s=horizon)
    gpu_days = p["gpus"] * p["hours"] / 24
    rows: list[dict[str, Any]] = []
    per: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for table in TABLES:
            frame = store.query(f"SELECT * FROM {table}")
            per_row = _bytes_per_row(_tiled(frame, int(horizon * 1e9)), table, Path(tmp)) if frame.height else 0.0
            per[table] = per_row * frame.height / gpu_days
            rows.append({"table": table, "gpus": p["gpus"], "hours": p["hours"], "rows": frame.height,
                         "bytes_per_row": round(per_row, 1), "bytes_per_gpu_day": round(per[table])})
    raw = sum(per[t] for t in ("messages", "devices", "processes", "allocations", "attributed"))
    tiers = {"raw": raw * KEPT_DAYS["raw"], "ledger": per["ledger"] * KEPT_DAYS["ledger"],
             "ledger_hourly": per["ledger_hourly"] * KEPT_DAYS["ledger_hourly"]}
    for tier, size in tiers.items():
        rows.append({"table": f"tier:{tier}", "days_kept": round(KEPT_DAYS[tier]), "bytes_per_gpu": round(size)})
    total = sum(tiers.values())
    rows.append({"table": "one_machine", "bytes_per_gpu": round(total), "gpus_per_tb": int(1e12 // total)})
    return rows
