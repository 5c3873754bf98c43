"""The GPU seam: what the agent asks of NVML, as a Protocol.

Two implementations share it: ``gpuledger.agent.nvml.NvmlBackend`` (the only
module that imports ``pynvml``) and ``gpuledger.sim.fleetsim.SimNode`` (the fleet
simulator with ground truth). The agent's sampling logic (sample-buffer
integration, fallbacks, per-field errors) runs unchanged on either.

Each method mirrors one NVML call, with Python types instead of ctypes structs.
A method raises a ``gpuledger.errors.FieldError`` subclass (NotSupported,
NotFound, NoPermission, GpuLost) when NVML would return that status; the agent
records it as null-plus-reason for that field and keeps the rest.

Timestamps are the driver's CPU timestamps in microseconds since the epoch.

Optional extension (looked up with ``getattr``, so a backend may lack it):
``health_fields(i) -> dict[str, float | FieldError]`` returns the remaining
wire device columns (``mem_copy_util``, ``enc_util``, ``dec_util``,
``mem_temp_c``, ``pcie_replay_total``, ``xid_last``, ``remapped_rows_*``,
``throttle_reasons``), each a value or the FieldError that field raised; it
raises GpuLost for a lost GPU. Both NvmlBackend and SimNode implement it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class MemoryInfo:
    """nvmlDeviceGetMemoryInfo(_v2), bytes."""

    total: int
    used: int
    free: int
    reserved: int | None = None


@dataclass(frozen=True)
class ComputeProcess:
    """One entry of nvmlDeviceGetComputeRunningProcesses (v3 -> v2 -> v1)."""

    pid: int
    used_memory_bytes: int | None  # None when NVML reports NVML_VALUE_NOT_AVAILABLE
    kind: int = 0  # 0 compute, 1 graphics, 2 MPS client


@dataclass(frozen=True)
class ValueSamples:
    """nvmlDeviceGetSamples: parallel arrays, timestamp (us) and value (percent)."""

    timestamp_us: np.ndarray  # uint64
    value: np.ndarray  # float64, percent 0..100


@dataclass(frozen=True)
class ProcessSamples:
    """nvmlDeviceGetProcessUtilization / GetProcessesUtilizationInfo, columnar."""

    pid: np.ndarray  # uint32
    timestamp_us: np.ndarray  # uint64
    sm_util: np.ndarray  # float64 percent
    mem_util: np.ndarray  # float64 percent


@dataclass(frozen=True)
class MigDevice:
    """A MIG device of a physical GPU (nvmlDeviceGetMigDeviceHandleByIndex)."""

    index: int
    uuid: str
    gpu_instance_id: int
    compute_instance_id: int
    profile: str  # e.g. "3g.40gb"
    slice_fraction: float  # GPU slices of the profile / slices of the parent (e.g. 3/7)


@runtime_checkable
class GpuBackend(Protocol):
    """One node's GPUs. Index ``i`` is the NVML device index."""

    def driver_version(self) -> str: ...
    def device_count(self) -> int: ...
    def uuid(self, i: int) -> str: ...
    def name(self, i: int) -> str: ...
    def pci_bus_id(self, i: int) -> str: ...
    def memory_info(self, i: int) -> MemoryInfo: ...
    def utilization_samples(self, i: int, since_us: int) -> ValueSamples: ...
    def process_samples(self, i: int, since_us: int) -> ProcessSamples: ...
    def compute_processes(self, i: int) -> list[ComputeProcess]: ...
    def total_energy_mj(self, i: int) -> int: ...
    def power_mw(self, i: int) -> int: ...
    def temperature_c(self, i: int) -> int: ...
    def sm_clock_mhz(self, i: int) -> int: ...
    def mem_clock_mhz(self, i: int) -> int: ...
    def mig_devices(self, i: int) -> list[MigDevice]: ...
    def mig_compute_processes(self, i: int, mig: int) -> list[ComputeProcess]: ...
    def mig_gr_engine_active(self, i: int, mig: int) -> float: ...
    def now_us(self) -> int: ...


@dataclass(frozen=True)
class Pod:
    """Kubernetes pod identity and the labels tenancy rules read."""

    uid: str
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Owner:
    """Who a host PID belongs to: a pod's container, a Slurm job, or neither."""

    pod: Pod | None = None
    container: str | None = None
    slurm_job: str | None = None


@dataclass(frozen=True)
class Allocation:
    """One holder of a device, as the kubelet's PodResources reports it.

    ``gpu_index``/``mig_index`` locate the device; ``replica`` is N of a
    time-slicing ID ``GPU-uuid::N`` (-1 otherwise); ``share`` the fraction of
    the device held (1.0 exclusive, 1/replicas for time-slicing, gpu_milli/1000
    for fractional sharing, 1.0 for a MIG device).
    """

    gpu_index: int
    mig_index: int
    pod: Pod
    container: str
    resource: str
    share: float
    replica: int = -1


@runtime_checkable
class WorkloadSource(Protocol):
    """Who holds and who uses the node's GPUs (PodResources + /proc)."""

    def owner_of(self, pid: int) -> Owner: ...
    def allocations(self) -> list[Allocation]: ...
