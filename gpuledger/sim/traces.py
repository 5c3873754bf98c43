"""The simulator's real-trace inputs, loaded from the package's data slice.

The slice (``gpuledger/data/``, built once by ``make_slice.py``, provenance in
``PROVENANCE.md``) ships inside the package; nothing here reads the original traces.

- :func:`duty_cycles` -- per-pod GPU duty cycle (fraction 0..1) and memory
  used (bytes) of 143 Stable Diffusion serving pods, on a regular grid of
  57 s steps over ~22.8 h (Alibaba GenAI trace 2026).
- :func:`openb_pods` -- (num_gpu, gpu_milli, lifetime_s) of 7,000+ scheduled
  GPU pods (Alibaba GPU-sharing trace 2023): the allocation mix and lifetimes.
- :func:`gpu_models` -- spec-sheet table of the GPU models the demo fleet uses.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from importlib import resources

import numpy as np
import polars as pl

__all__ = ["DutyCycles", "GpuModel", "duty_cycles", "gpu_models", "openb_pods"]

_MISSING = 65535  # uint16 sentinel in the slice: not observed


def _data(name: str) -> bytes:
    return resources.files("gpuledger.sim").joinpath("data", name).read_bytes()


@dataclass(frozen=True)
class DutyCycles:
    """Per-pod series on one regular grid; NaN where the trace has no sample.

    ``duty[s, k]`` is the GPU duty cycle of series ``s`` over step ``k``
    (fraction of time a kernel ran, 0..1); ``memory_bytes[s, k]`` its GPU
    memory used (bytes). Step ``k`` starts ``k * step_s`` seconds after the
    (anonymised) trace start.
    """

    duty: np.ndarray  # float64 (n_series, n_steps), fraction 0..1, NaN = missing
    memory_bytes: np.ndarray  # float64 (n_series, n_steps), bytes, NaN = missing
    step_s: float  # grid step, seconds (57 in the trace)
    series_ids: tuple[str, ...]  # the trace's hashed container ids

    @property
    def coverage(self) -> np.ndarray:
        """Fraction of steps observed, per series (0..1)."""
        return np.asarray(np.mean(~np.isnan(self.duty), axis=1))

    def filled(self, min_coverage: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Series observed on at least ``min_coverage`` of steps, gaps filled.

        Returns ``(duty, memory_bytes)`` of shape (n_kept, n_steps): a gap
        takes the last observed value (the first observed one at the start),
        i.e. the trace's own sample-and-hold, never a zero.
        """
        keep = self.coverage >= min_coverage
        return _ffill(self.duty[keep]), _ffill(self.memory_bytes[keep])


def _ffill(a: np.ndarray) -> np.ndarray:
    """Forward-fill NaN along axis 1, then back-fill the leading gap."""
    out = a.copy()
    n = out.shape[1]
    idx = np.where(np.isnan(out), 0, np.arange(n))
    np.maximum.accumulate(idx, axis=1, out=idx)
    out = np.take_along_axis(out, idx, axis=1)
    first = np.argmax(~np.isnan(out), axis=1)
    lead = np.arange(n)[None, :] < first[:, None]
    out[lead] = np.broadcast_to(out[np.arange(len(out)), first][:, None], out.shape)[lead]
    filled: np.ndarray = np.nan_to_num(out, nan=0.0)
    return filled  # a series with no sample at all: 0 (none kept by filled())


@functools.cache
def duty_cycles() -> DutyCycles:
    """Load the GenAI duty-cycle slice (cached; ~0.6 MB in memory)."""
    with np.load(io.BytesIO(_data("pod_duty_cycle.npz"))) as z:
        bp = z["duty_bp"]
        mib = z["mem_mib"]
        duty = np.where(bp == _MISSING, np.nan, bp / 10000.0)  # basis points -> fraction
        mem = np.where(mib == _MISSING, np.nan, mib * float(2**20))  # MiB -> bytes
        return DutyCycles(duty, mem, float(z["step_s"]), tuple(str(s) for s in z["pod_ids"]))


@functools.cache
def openb_pods() -> pl.DataFrame:
    """Scheduled GPU pods of the openb trace: num_gpu, gpu_milli, lifetime_s (s), qos, phase."""
    return pl.read_csv(io.BytesIO(_data("openb_pods.csv.gz")))


@dataclass(frozen=True)
class GpuModel:
    """Spec-sheet numbers of one GPU model (see gpu_models.csv)."""

    name: str  # as nvmlDeviceGetName returns it
    memory_bytes: int  # total framebuffer
    tdp_w: float  # board power limit, W
    idle_w: float  # typical idle draw, W
    sm_clock_max_mhz: int
    sm_clock_idle_mhz: int
    mem_clock_mhz: int
    mig_slices: int  # compute slices when MIG is enabled; 0 = MIG not supported


@functools.cache
def gpu_models() -> dict[str, GpuModel]:
    """GPU models by NVML name."""
    frame = pl.read_csv(io.BytesIO(_data("gpu_models.csv")))
    return {
        r["name"]: GpuModel(
            name=r["name"],
            memory_bytes=int(r["memory_mib"]) * 2**20,
            tdp_w=float(r["tdp_w"]),
            idle_w=float(r["idle_w"]),
            sm_clock_max_mhz=int(r["sm_clock_max_mhz"]),
            sm_clock_idle_mhz=int(r["sm_clock_idle_mhz"]),
            mem_clock_mhz=int(r["mem_clock_mhz"]),
            mig_slices=int(r["mig_slices"]),
        )
        for r in frame.iter_rows(named=True)
    }
