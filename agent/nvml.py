"""The real GPU backend over NVML: the only module that imports ``pynvml``.

Each method is one NVML call with its ctypes result turned into the plain types
of ``gpuledger.agent.backend`` and its status codes turned into the project's
error tree (NotSupported, NotFound, NoPermission, GpuLost). Process and device
utilization use the driver's sample buffers from a caller-supplied
``lastSeenTimeStamp`` (microseconds), so the agent can integrate every sample.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from gpuledger.agent.backend import ComputeProcess, MemoryInfo, MigDevice, ProcessSamples, ValueSamples
from gpuledger.errors import BackendUnavailable, FieldError, GpuLost, NoPermission, NotFound, NotSupported

try:
    import pynvml
except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
    pynvml = None

T = TypeVar("T")
_EMPTY_U64 = np.zeros(0, dtype=np.uint64)


def _translate(exc: Exception) -> FieldError:
    code = getattr(exc, "value", None)
    mapping: dict[Any, type[FieldError]] = {
        pynvml.NVML_ERROR_NOT_SUPPORTED: NotSupported,
        pynvml.NVML_ERROR_NOT_FOUND: NotFound,
        pynvml.NVML_ERROR_NO_PERMISSION: NoPermission,
        pynvml.NVML_ERROR_GPU_IS_LOST: GpuLost,
    }
    cls = mapping.get(code, FieldError)
    return cls("" if cls is not FieldError else f"NVML error {code}: {exc}")


def _call(fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except pynvml.NVMLError as exc:
        raise _translate(exc) from None


class NvmlBackend:
    """GpuBackend over the local NVIDIA driver."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        if pynvml is None:
            raise BackendUnavailable("the nvidia-ml-py package (pynvml) is not installed")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise BackendUnavailable(
                f"NVML could not start: {exc}",
                hint="this machine has no NVIDIA driver (libnvidia-ml.so); run on a GPU node "
                "(in Kubernetes: runtimeClassName nvidia) or use --backend sim",
            ) from None
        self._clock_ns = clock_ns
        self._handles: dict[int, Any] = {}
        self._mig_handles: dict[tuple[int, int], Any] = {}
        self._max_slices: dict[int, int] = {}

    def close(self) -> None:
        pynvml.nvmlShutdown()

    def _h(self, i: int) -> Any:
        handle = self._handles.get(i)
        if handle is None:
            handle = self._handles[i] = _call(pynvml.nvmlDeviceGetHandleByIndex, i)
        return handle

    def now_us(self) -> int:
        return self._clock_ns() // 1000

    def driver_version(self) -> str:
        return str(_call(pynvml.nvmlSystemGetDriverVersion))

    def device_count(self) -> int:
        return int(_call(pynvml.nvmlDeviceGetCount))

    def uuid(self, i: int) -> str:
        return str(_call(pynvml.nvmlDeviceGetUUID, self._h(i)))

    def name(self, i: int) -> str:
        return str(_call(pynvml.nvmlDeviceGetName, self._h(i)))

    def pci_bus_id(self, i: int) -> str:
        info = _call(pynvml.nvmlDeviceGetPciInfo, self._h(i))
        bus = info.busId
        return bus.decode() if isinstance(bus, bytes) else str(bus)

    def memory_info(self, i: int) -> MemoryInfo:
        try:
            mem = _call(pynvml.nvmlDeviceGetMemoryInfo, self._h(i), pynvml.nvmlMemory_v2)
            return MemoryInfo(int(mem.total), int(mem.used), int(mem.free), int(mem.reserved))
        except NotSupported:  # pre-R510 drivers: v1 has no reserved field
            mem = _call(pynvml.nvmlDeviceGetMemoryInfo, self._h(i))
            return MemoryInfo(int(mem.total), int(mem.used), int(mem.free), None)

    def utilization_samples(self, i: int, since_us: int) -> ValueSamples:
        try:
            _, samples = _call(pynvml.nvmlDeviceGetSamples, self._h(i), pynvml.NVML_GPU_UTILIZATION_SAMPLES, since_us)
        except NotFound:  # no sample newer than since_us
            return ValueSamples(_EMPTY_U64, np.zeros(0))
        ts = np.fromiter((s.timeStamp for s in samples), dtype=np.uint64, count=len(samples))
        val = np.fromiter((s.sampleValue.uiVal for s in samples), dtype=np.float64, count=len(samples))
        keep = ts > since_us
        return ValueSamples(ts[keep], val[keep])

    def process_samples(self, i: int, since_us: int) -> ProcessSamples:
        try:
            rows = _call(pynvml.nvmlDeviceGetProcessUtilization, self._h(i), since_us)
        except NotFound:
            rows = []
        n = len(rows)
        return ProcessSamples(
            pid=np.fromiter((r.pid for r in rows), dtype=np.uint32, count=n),
            timestamp_us=np.fromiter((r.timeStamp for r in rows), dtype=np.uint64, count=n),
            sm_util=np.fromiter((r.smUtil for r in rows), dtype=np.float64, count=n),
            mem_util=np.fromiter((r.memUtil for r in rows), dtype=np.float64, count=n),
        )

    def compute_processes(self, i: int) -> list[ComputeProcess]:
        return self._processes(self._h(i))

    def _processes(self, handle: Any) -> list[ComputeProcess]:
        getters = [
            getattr(pynvml, name)
            for name in ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2",
                         "nvmlDeviceGetComputeRunningProcesses")
            if hasattr(pynvml, name)
        ]
        last: Exception | None = None
        for getter in getters:  # v3 -> v2 -> v1: older drivers lack the newer symbols
            try:
                procs = getter(handle)
                break
            except pynvml.NVMLError_FunctionNotFound as exc:
                last = exc
            except pynvml.NVMLError as exc:
                raise _translate(exc) from None
        else:
            raise NotSupported(f"no nvmlDeviceGetComputeRunningProcesses variant works: {last}")
        mps = self._mps_pids(handle)
        return [
            ComputeProcess(int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory),
                           2 if p.pid in mps else 0)
            for p in procs
        ]

    def _mps_pids(self, handle: Any) -> set[int]:
        getter = getattr(pynvml, "nvmlDeviceGetMPSComputeRunningProcesses", None)
        if getter is None:
            return set()
        try:
            return {int(p.pid) for p in getter(handle)}
        except pynvml.NVMLError:
            return set()

    def total_energy_mj(self, i: int) -> int:
        return int(_call(pynvml.nvmlDeviceGetTotalEnergyConsumption, self._h(i)))

    def power_mw(self, i: int) -> int:
        return int(_call(pynvml.nvmlDeviceGetPowerUsage, self._h(i)))

    def temperature_c(self, i: int) -> int:
        return int(_call(pynvml.nvmlDeviceGetTemperature, self._h(i), pynvml.NVML_TEMPERATURE_GPU))

    def sm_clock_mhz(self, i: int) -> int:
        return int(_call(pynvml.nvmlDeviceGetClockInfo, self._h(i), pynvml.NVML_CLOCK_SM))

    def mem_clock_mhz(self, i: int) -> int:
        return int(_call(pynvml.nvmlDeviceGetClockInfo, self._h(i), pynvml.NVML_CLOCK_MEM))

    def mig_devices(self, i: int) -> list[MigDevice]:
        handle = self._h(i)
        try:
            current, _pending = _call(pynvml.nvmlDeviceGetMigMode, handle)
        except NotSupported:
            return []
        if current != pynvml.NVML_DEVICE_MIG_ENABLE:
            return []
        slices = self._parent_slices(i)
        out = []
        for m in range(int(_call(pynvml.nvmlDeviceGetMaxMigDeviceCount, handle))):
            try:
                mh = _call(pynvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, m)
            except NotFound:
                continue
            self._mig_handles[(i, m)] = mh
            attrs = _call(pynvml.nvmlDeviceGetAttributes, mh)
            n = int(attrs.gpuInstanceSliceCount)
            out.append(
                MigDevice(
                    index=m,
                    uuid=str(_call(pynvml.nvmlDeviceGetUUID, mh)),
                    gpu_instance_id=int(_call(pynvml.nvmlDeviceGetGpuInstanceId, mh)),
                    compute_instance_id=int(_call(pynvml.nvmlDeviceGetComputeInstanceId, mh)),
                    profile=f"{n}g.{round(int(attrs.memorySizeMB) / 1024)}gb",
                    slice_fraction=n / slices,
                )
            )
        return out

    def _parent_slices(self, i: int) -> int:
        if i not in self._max_slices:
            self._max_slices[i] = 7
            for slices, profile in ((8, "NVML_GPU_INSTANCE_PROFILE_8_SLICE"), (7, "NVML_GPU_INSTANCE_PROFILE_7_SLICE"),
                                    (4, "NVML_GPU_INSTANCE_PROFILE_4_SLICE")):
                try:
                    _call(pynvml.nvmlDeviceGetGpuInstanceProfileInfo, self._h(i), getattr(pynvml, profile))
                    self._max_slices[i] = slices
                    break
                except (FieldError, AttributeError):
                    continue
        return self._max_slices[i]

    def mig_compute_processes(self, i: int, mig: int) -> list[ComputeProcess]:
        return self._processes(self._mig_handles[(i, mig)])

    def mig_gr_engine_active(self, i: int, mig: int) -> float:
        raise NotSupported("GR_ENGINE_ACTIVE needs DCGM profiling (not configured)")
