"""The real GPU backend over NVML: the only module that imports ``pynvml``.

Each method is one NVML call with its ctypes result turned into the plain types
of ``gpuledger.agent.backend`` and its status codes turned into the project's
error tree (NotSupported, NotFound, NoPermission, GpuLost). Process and device
utilization use the driver's sample buffers from a caller-supplied
``lastSeenTimeStamp`` (microseconds), so the agent can integrate every sample.
"""

from __future__ import annotations

import ctypes
import logging
import math
import re
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, TypeVar

import numpy as np

from gpuledger.agent.backend import ComputeProcess, MemoryInfo, MigDevice, ProcessSamples, ValueSamples
from gpuledger.errors import BackendUnavailable, FieldError, GpuLost, NoPermission, NotFound, NotSupported

try:
    import pynvml
except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
    pynvml = None

T = TypeVar("T")
log = logging.getLogger("gpuledger.agent.nvml")
_MIG_NAME = re.compile(r"MIG (\d+g\.\d+gb)")
_EMPTY_U64 = np.zeros(0, dtype=np.uint64)
#: The member of the ``nvmlValue_t`` union that holds each ``NVML_VALUE_TYPE_*`` (nvml.h). A type not
#: listed (or not known to the installed pynvml) is a field error: reading another member would
#: reinterpret the bytes (a signed -3 read as unsigned is 4294967293).
_VALUE_MEMBERS = (("DOUBLE", "dVal"), ("UNSIGNED_INT", "uiVal"), ("UNSIGNED_LONG", "ulVal"),
                  ("UNSIGNED_LONG_LONG", "ullVal"), ("SIGNED_LONG_LONG", "sllVal"), ("SIGNED_INT", "siVal"),
                  ("UNSIGNED_SHORT", "usVal"))


def value_member(value_type: int) -> str | None:
    """The ``nvmlValue_t`` member holding a value of ``value_type``; None for a type this agent does not know."""
    for name, member in _VALUE_MEMBERS:
        if getattr(pynvml, f"NVML_VALUE_TYPE_{name}", None) == value_type:
            return member
    return None


def mig_profile_name(slices: int, memory_mb: int, gpu_memory_mib: float | None) -> str:
    """A MIG profile's name as NVIDIA gives it, from its compute slices and memory (when the driver gives no name).

    NVIDIA names the memory by the profile's share of the GPU's *marketed*
    memory: 1, 2, 4 or all 8 eighths of it (the A30's quarters are 2, 4 and 8
    eighths), rounded half up to whole GB. A100 40GB: 1g.5gb, 2g.10gb,
    3g.20gb, 7g.40gb; H100 80GB: 1g.10gb, 1g.20gb, 3g.40gb, 7g.80gb; H100 NVL
    94GB: 1g.12gb, 3g.47gb; H200 141GB: 1g.18gb, 1g.35gb, 3g.71gb, 7g.141gb
    (NVIDIA's MIG user guide). The memory a MIG device reports is somewhat
    below its share (A100 40GB 7g.40gb: 40192 of 40960 MiB), so the share is
    the nearest power of two eighths. The marketed size is the GPU's total
    memory in GiB rounded up (A100 40GB: 40960 MiB, 40). Without the GPU's
    total (``None``): the device's own memory in GiB rounded up (A100 40GB
    7g.40gb, 40192 MB: 40gb; H100 7g.80gb, 81152 MB: 80gb), which misses
    where a share is more than 1 GiB below its marketed size.
    """
    if gpu_memory_mib is None or gpu_memory_mib <= 0 or memory_mb <= 0:
        return f"{slices}g.{math.ceil(memory_mb / 1024)}gb"
    marketed_gb = math.ceil(gpu_memory_mib / 1024)
    eighths = min(8, 2 ** max(0, round(math.log2(memory_mb / gpu_memory_mib * 8))))
    return f"{slices}g.{(marketed_gb * eighths + 4) // 8}gb"  # + 4: half up


def _translate(exc: Exception, fn_name: str | None = None) -> FieldError:
    """An NVML error as the wire's field-error reason (docs/wire-schema.md). A function the driver's
    library lacks (FUNCTION_NOT_FOUND: an older driver; pynvml's unversioned wrappers raise
    NVMLLibraryMismatchError for it) is NotSupported: the driver cannot answer it, as for a GPU that
    lacks the feature."""
    if isinstance(exc, pynvml.NVMLLibraryMismatchError):
        code: Any = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    else:
        code = getattr(exc, "value", None)
    if code == pynvml.NVML_ERROR_FUNCTION_NOT_FOUND:
        return NotSupported(f"{fn_name or 'an NVML function'} is not in this driver's libnvidia-ml (an older driver)")
    mapping: dict[Any, type[FieldError]] = {
        pynvml.NVML_ERROR_NOT_SUPPORTED: NotSupported,
        pynvml.NVML_ERROR_NOT_FOUND: NotFound,
        pynvml.NVML_ERROR_NO_PERMISSION: NoPermission,
        pynvml.NVML_ERROR_GPU_IS_LOST: GpuLost,
    }
    cls = mapping.get(code, FieldError)
    return cls("" if cls is not FieldError else f"NVML error {code}: {exc}")


def _handle_key(handle: Any) -> Any:
    """Compare device handles: ctypes pointers by address, anything else (a replay) by value."""
    contents = getattr(handle, "contents", None)
    if contents is not None:
        return ctypes.addressof(contents)
    return handle


def _call(fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except (pynvml.NVMLError, pynvml.NVMLLibraryMismatchError) as exc:
        raise _translate(exc, getattr(fn, "__name__", None)) from None


def _sized(fn: Callable[..., T], *args: Any) -> T:
    """A pynvml call that sizes its buffer from a first C call and fills it in a second: samples or
    processes that arrive in between make the second INSUFFICIENT_SIZE (nvml.h: call again with the
    new count). pynvml does not retry; ask again, a few times."""
    for attempt in range(3):
        try:
            return fn(*args)
        except pynvml.NVMLError as exc:
            if getattr(exc, "value", None) != pynvml.NVML_ERROR_INSUFFICIENT_SIZE or attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


#: Process lists, newest first: _v3 (R510+), _v2 (R450+), then the original symbol, whose 16-byte v1 rows
#: pynvml cannot read (its unversioned function calls _v3): :func:`_processes_v1` reads them.
_PROCESS_LISTS = {
    "compute": ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2",
                "nvmlDeviceGetComputeRunningProcesses"),
    "mps": ("nvmlDeviceGetMPSComputeRunningProcesses_v3", "nvmlDeviceGetMPSComputeRunningProcesses_v2",
            "nvmlDeviceGetMPSComputeRunningProcesses"),
}


class _ProcessInfoV1(ctypes.Structure):
    """nvml.h ``nvmlProcessInfo_v1_t``: what the original, unsuffixed process-list symbols fill (drivers
    before R450; 16 bytes a row, where v2/v3 rows are 24: reading them as v2 would misplace every pid)."""

    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


def _processes_v1(symbol: str, handle: Any) -> list[Any]:
    """The v1 process list through pynvml's library handle (pynvml wraps only _v2 and _v3; its unversioned
    function calls _v3): size query, then the fill, as pynvml does for the others."""
    fn = pynvml._nvmlGetFunctionPointer(symbol)
    count = ctypes.c_uint(0)
    ret = fn(handle, ctypes.byref(count), None)
    if ret == pynvml.NVML_SUCCESS:
        return []
    if ret != pynvml.NVML_ERROR_INSUFFICIENT_SIZE:
        raise pynvml.NVMLError(ret)
    count.value = count.value * 2 + 5  # room for processes that start in between
    rows = (_ProcessInfoV1 * count.value)()
    ret = fn(handle, ctypes.byref(count), rows)
    if ret != pynvml.NVML_SUCCESS:
        raise pynvml.NVMLError(ret)
    unknown = pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value
    return [SimpleNamespace(pid=int(r.pid), usedGpuMemory=None if r.usedGpuMemory == unknown else int(r.usedGpuMemory))
            for r in rows[:count.value]]


class NvmlBackend:
    """GpuBackend over the local NVIDIA driver."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns, *, nvml: Any = None, dcgm: Any = None) -> None:
        """``nvml``: the module whose ``nvml*`` functions are called (default: pynvml). Tests pass a
        replay of recorded responses, so this class's parsing runs without a GPU. ``dcgm``: an optional
        ``DcgmExporterScrape`` for MIG devices' GR_ENGINE_ACTIVE."""
        if pynvml is None:
            raise BackendUnavailable("the nvidia-ml-py package (pynvml) is not installed")
        self._nv = nvml if nvml is not None else pynvml
        try:
            self._nv.nvmlInit()
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
        self._proc_util_v2: dict[int, bool] = {}  # device -> nvmlDeviceGetProcessesUtilizationInfo works
        self._mem_seen_us: dict[int, int] = {}  # lastSeenTimeStamp of memory-utilization samples
        self._xid_set: Any = None
        self._xid_registered: dict[int, FieldError | None] = {}
        self._xid_pending: dict[Any, int] = {}
        self._dcgm = dcgm
        self._mig_gi: dict[tuple[int, int], int] = {}  # (gpu, mig index) -> GPU instance id
        self._no_variant: set[str] = set()  # process-list functions with no symbol in this driver (logged)

    def close(self) -> None:
        self._nv.nvmlShutdown()

    def _h(self, i: int) -> Any:
        handle = self._handles.get(i)
        if handle is None:
            handle = self._handles[i] = _call(self._nv.nvmlDeviceGetHandleByIndex, i)
        return handle

    def now_us(self) -> int:
        return self._clock_ns() // 1000

    def driver_version(self) -> str:
        return str(_call(self._nv.nvmlSystemGetDriverVersion))

    def device_count(self) -> int:
        return int(_call(self._nv.nvmlDeviceGetCount))

    def uuid(self, i: int) -> str:
        return str(_call(self._nv.nvmlDeviceGetUUID, self._h(i)))

    def name(self, i: int) -> str:
        return str(_call(self._nv.nvmlDeviceGetName, self._h(i)))

    def pci_bus_id(self, i: int) -> str:
        info = _call(self._nv.nvmlDeviceGetPciInfo, self._h(i))
        bus = info.busId
        return bus.decode() if isinstance(bus, bytes) else str(bus)

    def memory_info(self, i: int) -> MemoryInfo:
        handle = self._h(i)
        try:
            mem = self._nv.nvmlDeviceGetMemoryInfo(handle, self._nv.nvmlMemory_v2)
            return MemoryInfo(int(mem.total), int(mem.used), int(mem.free), int(mem.reserved))
        except pynvml.NVMLError as exc:
            # pre-R510 drivers lack the nvmlDeviceGetMemoryInfo_v2 symbol (FUNCTION_NOT_FOUND) or
            # refuse the struct version: v1, which has no reserved field (its used includes it)
            if getattr(exc, "value", None) not in (pynvml.NVML_ERROR_NOT_SUPPORTED,
                                                   pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
                                                   pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH):
                raise _translate(exc) from None
        mem = _call(self._nv.nvmlDeviceGetMemoryInfo, handle)
        return MemoryInfo(int(mem.total), int(mem.used), int(mem.free), None)

    def utilization_samples(self, i: int, since_us: int) -> ValueSamples:
        try:
            _, samples = _call(self._nv.nvmlDeviceGetSamples, self._h(i), pynvml.NVML_GPU_UTILIZATION_SAMPLES, since_us)
        except NotFound:  # no sample newer than since_us
            return ValueSamples(_EMPTY_U64, np.zeros(0))
        ts = np.fromiter((s.timeStamp for s in samples), dtype=np.uint64, count=len(samples))
        val = np.fromiter((s.sampleValue.uiVal for s in samples), dtype=np.float64, count=len(samples))
        keep = ts > since_us
        return ValueSamples(ts[keep], val[keep])

    def process_samples(self, i: int, since_us: int) -> ProcessSamples:
        """Per-process samples after ``since_us``: nvmlDeviceGetProcessesUtilizationInfo (R535+, one
        versioned struct) where the driver has it, else nvmlDeviceGetProcessUtilization."""
        handle = self._h(i)
        rows: Any = None
        if self._proc_util_v2.get(i, True):
            try:
                rows = _sized(self._nv.nvmlDeviceGetProcessesUtilizationInfo, handle, since_us)
                self._proc_util_v2[i] = True
            except pynvml.NVMLError as exc:
                code = getattr(exc, "value", None)
                if code in (pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_SUCCESS):
                    rows = []  # no sample newer than since_us (pynvml raises SUCCESS for a zero count)
                elif code in (pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, pynvml.NVML_ERROR_NOT_SUPPORTED,
                              pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH):
                    self._proc_util_v2[i] = False  # older driver: use the v1 call from now on
                else:
                    raise _translate(exc) from None
        if rows is None:
            try:
                rows = _sized(self._nv.nvmlDeviceGetProcessUtilization, handle, since_us)
            except pynvml.NVMLError as exc:
                if getattr(exc, "value", None) not in (pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_SUCCESS):
                    raise _translate(exc) from None
                rows = []
        n = len(rows)
        ts = np.fromiter((r.timeStamp for r in rows), dtype=np.uint64, count=n)
        keep = ts > since_us  # NVML may repeat the sample stamped exactly at lastSeenTimeStamp
        return ProcessSamples(
            pid=np.fromiter((r.pid for r in rows), dtype=np.uint32, count=n)[keep],
            timestamp_us=ts[keep],
            sm_util=np.fromiter((r.smUtil for r in rows), dtype=np.float64, count=n)[keep],
            mem_util=np.fromiter((r.memUtil for r in rows), dtype=np.float64, count=n)[keep],
        )

    def compute_processes(self, i: int) -> list[ComputeProcess]:
        return self._processes(self._h(i))

    def _processes(self, handle: Any) -> list[ComputeProcess]:
        procs = self._process_list(handle, "compute", required=True)
        mps = {int(p.pid) for p in self._process_list(handle, "mps")}
        return [
            ComputeProcess(int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory),
                           2 if p.pid in mps else 0)
            for p in procs
        ]

    def _process_list(self, handle: Any, kind: str, *, required: bool = False) -> list[Any]:
        """The ``kind`` list of :data:`_PROCESS_LISTS`, newest variant first: each older driver lacks the
        newer symbols. ``required``: when no variant answers, NotSupported (the list is unknown, not
        empty); else an empty list (who is an MPS server is then unknown; logged once)."""
        v3, v2, v1_symbol = _PROCESS_LISTS[kind]
        getters: list[Callable[[Any], list[Any]]] = [getattr(self._nv, name) for name in (v3, v2)
                                                     if hasattr(self._nv, name)]
        v1 = getattr(self._nv, f"{v1_symbol}_v1", None)  # a replay's recorded v1 answers
        if v1 is None and self._nv is pynvml:
            v1 = lambda h: _processes_v1(v1_symbol, h)  # noqa: E731 - pynvml has no v1 wrapper
        if v1 is not None:
            getters.append(v1)
        base = v1_symbol
        last: Exception | None = None
        for getter in getters:
            try:
                return _sized(getter, handle)
            except (pynvml.NVMLError_FunctionNotFound, pynvml.NVMLLibraryMismatchError) as exc:
                last = exc
            except pynvml.NVMLError as exc:
                if required:
                    raise _translate(exc) from None
                return []
        if required:
            raise NotSupported(f"no {base} variant works (v3, v2, v1): {last}")
        if base not in self._no_variant:
            self._no_variant.add(base)
            log.warning("no %s variant in this driver's libnvidia-ml: MPS servers are not told apart", base)
        return []

    # --- health and the remaining DCGM fields ------------------------------------------

    def health_fields(self, i: int) -> dict[str, float | FieldError]:
        """Wire columns beyond the core: each value, or the FieldError that field raised.

        mem_copy_util (memory-controller samples since the previous call, mean, 0..1),
        enc_util/dec_util (nvmlDeviceGetEncoder/DecoderUtilization, 0..1), mem_temp_c
        (field NVML_FI_DEV_MEMORY_TEMP), pcie_replay_total, remapped rows, throttle_reasons
        (nvmlDeviceGetCurrentClocksEventReasons, else ...ThrottleReasons) and xid_last (the
        last XID critical-error event since the previous call, 0 for none). GpuLost raises.
        """
        h = self._h(i)
        out: dict[str, float | FieldError] = {}

        def field(name: str, fn: Callable[[], float]) -> None:
            try:
                out[name] = float(fn())
            except GpuLost:
                raise
            except FieldError as exc:
                out[name] = exc
            except pynvml.NVMLError as exc:
                err = _translate(exc)
                if isinstance(err, GpuLost):
                    raise err from None
                out[name] = err

        field("mem_copy_util", lambda: self._mem_util(i, h))
        field("enc_util", lambda: _call(self._nv.nvmlDeviceGetEncoderUtilization, h)[0] / 100.0)
        field("dec_util", lambda: _call(self._nv.nvmlDeviceGetDecoderUtilization, h)[0] / 100.0)
        field("mem_temp_c", lambda: self._field_value(h, pynvml.NVML_FI_DEV_MEMORY_TEMP))
        field("pcie_replay_total", lambda: _call(self._nv.nvmlDeviceGetPcieReplayCounter, h))
        rows: list[Any] = []

        def remapped(k: int) -> float:
            if not rows:
                rows.append(_call(self._nv.nvmlDeviceGetRemappedRows, h))
            return float(rows[0][k])

        field("remapped_rows_correctable", lambda: remapped(0))
        field("remapped_rows_uncorrectable", lambda: remapped(1))
        field("throttle_reasons", lambda: self._throttle(h))
        field("xid_last", lambda: self._xid(i, h))
        return out

    def _mem_util(self, i: int, h: Any) -> float:
        since = self._mem_seen_us.get(i, 0)
        try:
            _, samples = _call(self._nv.nvmlDeviceGetSamples, h, pynvml.NVML_MEMORY_UTILIZATION_SAMPLES, since)
        except NotFound:
            samples = []
        ts = np.fromiter((s.timeStamp for s in samples), dtype=np.uint64, count=len(samples))
        val = np.fromiter((s.sampleValue.uiVal for s in samples), dtype=np.float64, count=len(samples))
        keep = ts > since
        if not keep.any():
            raise NotFound("no memory-utilization samples in the interval")
        self._mem_seen_us[i] = int(ts[keep].max())
        return float(val[keep].mean()) / 100.0

    def _field_value(self, h: Any, field_id: int) -> float:
        (v,) = _call(self._nv.nvmlDeviceGetFieldValues, h, [field_id])
        if v.nvmlReturn != pynvml.NVML_SUCCESS:
            raise _translate(pynvml.NVMLError(v.nvmlReturn))
        member = value_member(v.valueType)
        if member is None:
            raise FieldError(f"field {field_id} has NVML value type {v.valueType}, which this agent cannot read")
        return float(getattr(v.value, member))

    def _throttle(self, h: Any) -> float:
        try:  # renamed "clocks event reasons" in R535; the old symbol may be missing on new drivers
            return float(self._nv.nvmlDeviceGetCurrentClocksEventReasons(h))
        except pynvml.NVMLError as exc:
            if getattr(exc, "value", None) != pynvml.NVML_ERROR_FUNCTION_NOT_FOUND:
                raise _translate(exc) from None
        return float(_call(self._nv.nvmlDeviceGetCurrentClocksThrottleReasons, h))

    def _xid(self, i: int, h: Any) -> float:
        if i not in self._xid_registered:
            try:
                if self._xid_set is None:
                    self._xid_set = _call(self._nv.nvmlEventSetCreate)
                _call(self._nv.nvmlDeviceRegisterEvents, h, pynvml.nvmlEventTypeXidCriticalError, self._xid_set)
                self._xid_registered[i] = None
            except FieldError as exc:
                self._xid_registered[i] = exc
        if self._xid_registered[i] is not None:
            raise self._xid_registered[i]  # type: ignore[misc]
        for _ in range(256):  # drain every pending event of every device (bounded)
            try:
                data = self._nv.nvmlEventSetWait_v2(self._xid_set, 0)
            except pynvml.NVMLError as exc:
                if getattr(exc, "value", None) == pynvml.NVML_ERROR_TIMEOUT:
                    break
                raise _translate(exc) from None
            if data.eventType & pynvml.nvmlEventTypeXidCriticalError:
                self._xid_pending[_handle_key(data.device)] = int(data.eventData)
        return float(self._xid_pending.pop(_handle_key(h), 0))

    def total_energy_mj(self, i: int) -> int:
        return int(_call(self._nv.nvmlDeviceGetTotalEnergyConsumption, self._h(i)))

    def power_mw(self, i: int) -> int:
        return int(_call(self._nv.nvmlDeviceGetPowerUsage, self._h(i)))

    def temperature_c(self, i: int) -> int:
        return int(_call(self._nv.nvmlDeviceGetTemperature, self._h(i), pynvml.NVML_TEMPERATURE_GPU))

    def sm_clock_mhz(self, i: int) -> int:
        return int(_call(self._nv.nvmlDeviceGetClockInfo, self._h(i), pynvml.NVML_CLOCK_SM))

    def mem_clock_mhz(self, i: int) -> int:
        return int(_call(self._nv.nvmlDeviceGetClockInfo, self._h(i), pynvml.NVML_CLOCK_MEM))

    def mig_devices(self, i: int) -> list[MigDevice]:
        handle = self._h(i)
        try:
            current, _pending = _call(self._nv.nvmlDeviceGetMigMode, handle)
        except NotSupported:
            return []
        if current != pynvml.NVML_DEVICE_MIG_ENABLE:
            return []
        slices = self._parent_slices(i)
        out = []
        for m in range(int(_call(self._nv.nvmlDeviceGetMaxMigDeviceCount, handle))):
            try:
                mh = _call(self._nv.nvmlDeviceGetMigDeviceHandleByIndex, handle, m)
            except NotFound:
                continue
            self._mig_handles[(i, m)] = mh
            attrs = _call(self._nv.nvmlDeviceGetAttributes, mh)
            n = int(attrs.gpuInstanceSliceCount)
            gi = int(_call(self._nv.nvmlDeviceGetGpuInstanceId, mh))
            self._mig_gi[(i, m)] = gi
            out.append(
                MigDevice(
                    index=m,
                    uuid=str(_call(self._nv.nvmlDeviceGetUUID, mh)),
                    gpu_instance_id=gi,
                    compute_instance_id=int(_call(self._nv.nvmlDeviceGetComputeInstanceId, mh)),
                    profile=self._mig_profile(i, mh, n, int(attrs.memorySizeMB)),
                    slice_fraction=n / slices,
                )
            )
        return out

    def _mig_profile(self, i: int, mh: Any, slices: int, memory_mb: int) -> str:
        """The profile as NVIDIA names it: from the MIG device's name ("... MIG 3g.40gb") where the
        driver gives it, else from its slices, its memory and the GPU's (:func:`mig_profile_name`)."""
        try:
            match = _MIG_NAME.search(str(_call(self._nv.nvmlDeviceGetName, mh)))
        except FieldError:
            match = None
        if match:
            return match.group(1)
        try:
            gpu_mib: float | None = self.memory_info(i).total / 2**20
        except FieldError:
            gpu_mib = None
        return mig_profile_name(slices, memory_mb, gpu_mib)

    def _parent_slices(self, i: int) -> int:
        if i not in self._max_slices:
            self._max_slices[i] = 7
            for slices, profile in ((8, "NVML_GPU_INSTANCE_PROFILE_8_SLICE"), (7, "NVML_GPU_INSTANCE_PROFILE_7_SLICE"),
                                    (4, "NVML_GPU_INSTANCE_PROFILE_4_SLICE")):
                try:
                    _call(self._nv.nvmlDeviceGetGpuInstanceProfileInfo, self._h(i), getattr(pynvml, profile))
                    self._max_slices[i] = slices
                    break
                except (FieldError, AttributeError):
                    continue
        return self._max_slices[i]

    def mig_compute_processes(self, i: int, mig: int) -> list[ComputeProcess]:
        return self._processes(self._mig_handles[(i, mig)])

    def mig_gr_engine_active(self, i: int, mig: int) -> float:
        if self._dcgm is None:
            raise NotSupported("GR_ENGINE_ACTIVE needs DCGM profiling (set --dcgm-exporter-url)")
        return float(self._dcgm.gr_engine_active(i, self._mig_gi[(i, mig)]))
