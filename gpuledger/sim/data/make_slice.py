"""Build the simulator's data slice from the public traces (build time only).

    python gpuledger/sim/data/make_slice.py TRACE_DIR

TRACE_DIR holds the public traces as ``alibaba-gpu-2023/`` and
``alibaba-genai-2026/`` (see PROVENANCE.md for where they come from).
Nothing in the package runs this at run time: it writes the small files next to
it, which ``gpuledger.sim.traces`` loads through importlib.resources. See
PROVENANCE.md for what each output holds.

Outputs (all in this directory):

- ``pod_duty_cycle.npz``  143 pods x 1441 steps of 57 s from
  alibaba-genai-2026: ``duty_bp`` uint16 duty cycle in basis points
  (0.01 %, 0..10000), ``mem_mib`` uint16 GPU memory used in MiB,
  65535 = not observed in both; ``step_s``, ``t0_anon`` (anonymised epoch s),
  ``pod_ids`` (the trace's hashed container ids).
- ``openb_pods.csv.gz``  every GPU pod of alibaba-gpu-2023
  ``openb_pod_list_default.csv`` that was scheduled: ``num_gpu, gpu_milli,
  lifetime_s, qos, phase``.
- ``gpu_models.csv``  hand-written spec-sheet table of the GPU models the
  demo fleet uses (not from a trace).
"""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

MISSING = 65535  # uint16 sentinel: no sample at this (pod, step)

# name (exactly as nvidia-smi / nvmlDeviceGetName prints it), total memory MiB
# (nvidia-smi), TDP W and typical idle W, max SM / memory clock MHz (vendor
# datasheets and nvidia-smi -q), MIG compute slices (0 = no MIG).
GPU_MODELS = """\
name,memory_mib,tdp_w,idle_w,sm_clock_max_mhz,sm_clock_idle_mhz,mem_clock_mhz,mig_slices
NVIDIA H100 80GB HBM3,81559,700,70,1980,345,2619,7
NVIDIA A100-SXM4-80GB,81920,400,55,1410,210,1593,7
NVIDIA L4,23034,72,16,2040,210,6251,0
NVIDIA A10,23028,150,21,1695,210,6251,0
Tesla T4,15360,70,10,1590,300,5001,0
Tesla V100-SXM2-32GB,32768,300,40,1530,135,877,0
"""


def duty_cycle_grid(src: Path) -> dict[str, np.ndarray]:
    """Pivot the long (value, timestamp, pod) traces onto one pod x step grid."""
    duty = pl.read_csv(src / "alibaba-genai-2026" / "pod_gpu_duty_cycle_anon.csv.gz")
    mem = pl.read_csv(src / "alibaba-genai-2026" / "pod_gpu_memory_used_bytes_anon.csv.gz")
    pods = sorted(duty["container_ip"].unique().to_list())  # memory has one extra pod: dropped
    stamps = duty["timestamp_anon"].to_numpy()
    t0 = float(stamps.min())
    step = float(np.median(np.diff(np.sort(duty["timestamp_anon"].unique().to_numpy()))))
    n_steps = round((float(stamps.max()) - t0) / step) + 1
    row_of = {p: k for k, p in enumerate(pods)}

    def grid(frame: pl.DataFrame, scale: float, top: int) -> np.ndarray:
        out = np.full((len(pods), n_steps), MISSING, dtype=np.uint16)
        frame = frame.filter(pl.col("container_ip").is_in(pods))
        r = np.array([row_of[p] for p in frame["container_ip"].to_list()])
        c = np.rint((frame["timestamp_anon"].to_numpy() - t0) / step).astype(np.int64)
        v = np.clip(np.rint(frame["value"].to_numpy() * scale), 0, top).astype(np.uint16)
        out[r, c] = v
        return out

    return {
        "duty_bp": grid(duty, 100.0, 10000),  # percent -> basis points
        "mem_mib": grid(mem, 1.0 / 2**20, MISSING - 1),  # bytes -> MiB
        "step_s": np.array(step),
        "t0_anon": np.array(int(t0)),
        "pod_ids": np.array(pods),
    }


def openb_pods(src: Path) -> pl.DataFrame:
    """GPU pods that ran: how many GPUs, what fraction of one, how long."""
    pods = pl.read_csv(src / "alibaba-gpu-2023" / "openb_pod_list_default.csv")
    return (
        pods.filter(pl.col("num_gpu") > 0, pl.col("scheduled_time").is_not_null())
        .select(
            "num_gpu",
            "gpu_milli",
            (pl.col("deletion_time") - pl.col("scheduled_time")).alias("lifetime_s"),
            "qos",
            pl.col("pod_phase").alias("phase"),
        )
    )


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python gpuledger/sim/data/make_slice.py TRACE_DIR")
    src = Path(argv[1])
    out = Path(__file__).resolve().parent
    grid: dict[str, Any] = duty_cycle_grid(src)
    np.savez_compressed(out / "pod_duty_cycle.npz", **grid)
    buf = io.BytesIO()
    openb_pods(src).write_csv(buf)
    # mtime=0: the gzip bytes depend only on the content (reproducible builds)
    with gzip.GzipFile(out / "openb_pods.csv.gz", "wb", compresslevel=9, mtime=0) as fh:
        fh.write(buf.getvalue())
    (out / "gpu_models.csv").write_text(GPU_MODELS)
    for f in ("pod_duty_cycle.npz", "openb_pods.csv.gz", "gpu_models.csv"):
        print(f, (out / f).stat().st_size, "bytes")


if __name__ == "__main__":
    main(sys.argv)
