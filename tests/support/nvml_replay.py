"""A replay of pynvml for NvmlBackend's parsing code: responses from a JSON fixture.

``ReplayNvml(fixture, clock)`` has the ``nvml*`` functions NvmlBackend calls,
returning objects with pynvml's struct field names and raising pynvml's own
``NVMLError`` subclasses (``NVMLError(code)`` builds the right one). Sample
buffers behave like the driver's: a call returns the samples stamped after
``lastSeenTimeStamp`` and up to the clock, NOT_FOUND when there are none.
Constants (``NVML_*``, ``nvmlMemory_v2``) come from the real pynvml module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gpuledger.agent.nvml import pynvml

FIXTURES = Path(__file__).resolve().parents[1] / "agent" / "fixtures" / "nvml"

ERRORS = {
    "NOT_SUPPORTED": pynvml.NVML_ERROR_NOT_SUPPORTED,
    "NOT_FOUND": pynvml.NVML_ERROR_NOT_FOUND,
    "FUNCTION_NOT_FOUND": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
    "GPU_IS_LOST": pynvml.NVML_ERROR_GPU_IS_LOST,
    "NO_PERMISSION": pynvml.NVML_ERROR_NO_PERMISSION,
}


#: nvmlValue_t member per NVML_VALUE_TYPE_* (nvml.h), for writing field values
_VALUE_MEMBER = {pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal", pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
                 pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal", pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
                 pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal", pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
                 pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal"}


def load(name: str) -> dict[str, Any]:
    """A recorded NVML fixture from tests/agent/fixtures/nvml/ (see make_synthetic.py there)."""
    return json.loads((FIXTURES / name).read_text())


class ReplayNvml:
    def __init__(self, fixture: dict[str, Any], clock_us: Callable[[], int]) -> None:
        self.fx = fixture
        self.devices = fixture["devices"]
        self.clock_us = clock_us
        self.calls: list[str] = []
        self._xid_left = {i: list(d.get("xid_events", [])) if isinstance(d.get("xid_events"), list) else []
                          for i, d in enumerate(self.devices)}
        self._registered: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("nvml") and not name.startswith("nvmlMemory") and not name.startswith("nvmlEventType"):
            raise AttributeError(f"the replay has no {name}")  # an nvml call the fixture cannot answer
        return getattr(pynvml, name)

    # --- helpers -----------------------------------------------------------------------

    def _dev(self, handle: str, key: str | None = None) -> Any:
        self.calls.append(f"{handle}:{key}")
        gpu, _, slot = handle.removeprefix("gpu").partition("/mig")
        d = self.devices[int(gpu)]
        if slot:
            d = d["mig"][slot]
        if d.get("lost"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if key is None:
            return d
        value = d[key]
        if isinstance(value, dict) and "error" in value:
            raise pynvml.NVMLError(ERRORS[value["error"]])
        return value

    def _window(self, rows: list[list[Any]], since: int, ts_col: int) -> list[list[Any]]:
        now = self.clock_us()
        out = [r for r in rows if since < r[ts_col] <= now]
        if not out:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return out

    # --- system ------------------------------------------------------------------------

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        pass

    def nvmlShutdown(self) -> None:  # noqa: N802
        pass

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        return self.fx["driver_version"]

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:  # noqa: N802
        return f"gpu{i}"

    # --- device ------------------------------------------------------------------------

    def nvmlDeviceGetUUID(self, h: str) -> str:  # noqa: N802
        return self._dev(h, "uuid")

    # --- MIG -----------------------------------------------------------------------------

    def nvmlDeviceGetMaxMigDeviceCount(self, h: str) -> int:  # noqa: N802
        return self._dev(h, "max_mig")

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: str, m: int) -> str:  # noqa: N802
        if str(m) not in self._dev(h, "mig"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return f"{h}/mig{m}"

    def nvmlDeviceGetGpuInstanceProfileInfo(self, h: str, profile: int) -> Any:  # noqa: N802
        slices = {pynvml.NVML_GPU_INSTANCE_PROFILE_7_SLICE: 7, pynvml.NVML_GPU_INSTANCE_PROFILE_4_SLICE: 4}
        if slices.get(profile) != self._dev(h, "max_slices"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(sliceCount=slices[profile])

    def nvmlDeviceGetAttributes(self, h: str) -> Any:  # noqa: N802
        d = self._dev(h)
        return SimpleNamespace(gpuInstanceSliceCount=d["slices"], memorySizeMB=d["memory_mb"])

    def nvmlDeviceGetGpuInstanceId(self, h: str) -> int:  # noqa: N802
        return self._dev(h, "gi")

    def nvmlDeviceGetComputeInstanceId(self, h: str) -> int:  # noqa: N802
        return self._dev(h, "ci")

    def nvmlDeviceGetName(self, h: str) -> str:  # noqa: N802
        return self._dev(h, "name")

    def nvmlDeviceGetPciInfo(self, h: str) -> Any:  # noqa: N802
        return SimpleNamespace(busId=self._dev(h, "pci_bus_id").encode())

    def nvmlDeviceGetMemoryInfo(self, h: str, version: Any = None) -> Any:  # noqa: N802
        return SimpleNamespace(**self._dev(h, "memory_v2" if version is not None else "memory_v1"))

    def nvmlDeviceGetSamples(self, h: str, kind: int, since: int) -> Any:  # noqa: N802
        key = "util_samples" if kind == pynvml.NVML_GPU_UTILIZATION_SAMPLES else "mem_util_samples"
        rows = self._window(self._dev(h, key), since, 0)
        return pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, [
            SimpleNamespace(timeStamp=t, sampleValue=SimpleNamespace(uiVal=v)) for t, v in rows]

    def nvmlDeviceGetProcessesUtilizationInfo(self, h: str, since: int) -> list[Any]:  # noqa: N802
        rows = self._window(self._dev(h, "process_util_v2"), since, 1)
        return [SimpleNamespace(pid=p, timeStamp=t, smUtil=sm, memUtil=mem, encUtil=e, decUtil=d, jpgUtil=0,
                                ofaUtil=0) for p, t, sm, mem, e, d in rows]

    def nvmlDeviceGetProcessUtilization(self, h: str, since: int) -> list[Any]:  # noqa: N802
        rows = self._window(self._dev(h, "process_util_v1"), since, 1)
        return [SimpleNamespace(pid=p, timeStamp=t, smUtil=sm, memUtil=mem) for p, t, sm, mem in rows]

    def _procs(self, h: str, key: str) -> list[Any]:
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self._dev(h, key)]

    def nvmlDeviceGetComputeRunningProcesses_v3(self, h: str) -> list[Any]:  # noqa: N802
        return self._procs(h, "processes_v3")

    def nvmlDeviceGetComputeRunningProcesses_v2(self, h: str) -> list[Any]:  # noqa: N802
        return self._procs(h, "processes_v2")

    def nvmlDeviceGetComputeRunningProcesses_v1(self, h: str) -> list[Any]:  # noqa: N802
        return self._procs(h, "processes_v1")

    def nvmlDeviceGetMPSComputeRunningProcesses_v3(self, h: str) -> list[Any]:  # noqa: N802
        return []

    def nvmlDeviceGetTotalEnergyConsumption(self, h: str) -> int:  # noqa: N802
        d = self._dev(h)
        elapsed_s = (self.clock_us() - self.fx["t0_us"]) / 1e6
        return int(d["energy_start_mj"] + d["energy_mw"] * elapsed_s)

    def nvmlDeviceGetPowerUsage(self, h: str) -> int:  # noqa: N802
        return self._dev(h, "power_mw")

    def nvmlDeviceGetTemperature(self, h: str, sensor: int) -> int:  # noqa: N802
        return self._dev(h, "temp_c")

    def nvmlDeviceGetClockInfo(self, h: str, clock: int) -> int:  # noqa: N802
        return self._dev(h, "sm_clock" if clock == pynvml.NVML_CLOCK_SM else "mem_clock")

    def nvmlDeviceGetMigMode(self, h: str) -> list[int]:  # noqa: N802
        return self._dev(h, "mig_mode")

    def nvmlDeviceGetEncoderUtilization(self, h: str) -> list[int]:  # noqa: N802
        return self._dev(h, "enc_util")

    def nvmlDeviceGetDecoderUtilization(self, h: str) -> list[int]:  # noqa: N802
        return self._dev(h, "dec_util")

    def nvmlDeviceGetFieldValues(self, h: str, ids: list[int]) -> list[Any]:  # noqa: N802
        f = self._dev(h, "memory_temp_field")
        # pynvml's own union, filled as the driver fills it: only the member of valueType is meant,
        # the others read the same bytes (an unknown type's bytes are written as unsigned 64-bit).
        value = pynvml.c_nvmlValue_t()
        setattr(value, _VALUE_MEMBER.get(f["type"], "ullVal"), f["value"])
        return [SimpleNamespace(fieldId=ids[0], nvmlReturn=f["ret"], valueType=f["type"], value=value)]

    def nvmlDeviceGetPcieReplayCounter(self, h: str) -> int:  # noqa: N802
        return self._dev(h, "pcie_replay")

    def nvmlDeviceGetRemappedRows(self, h: str) -> tuple[int, ...]:  # noqa: N802
        return tuple(self._dev(h, "remapped_rows"))

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: str) -> int:  # noqa: N802
        return self._dev(h, "clocks_event_reasons")

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: str) -> int:  # noqa: N802
        return self._dev(h, "throttle_reasons")

    def nvmlEventSetCreate(self) -> str:  # noqa: N802
        return "event-set"

    def nvmlDeviceRegisterEvents(self, h: str, types: int, event_set: str) -> None:  # noqa: N802
        self._dev(h, "xid_events")
        self._registered.add(int(h.removeprefix("gpu")))

    def nvmlEventSetWait_v2(self, event_set: str, timeout_ms: int) -> Any:  # noqa: N802
        for i in sorted(self._registered):  # events after registration, up to now, once each
            if self._xid_left[i] and self._xid_left[i][0][0] <= self.clock_us():
                _, xid = self._xid_left[i].pop(0)
                return SimpleNamespace(device=f"gpu{i}", eventType=pynvml.nvmlEventTypeXidCriticalError,
                                       eventData=xid, gpuInstanceId=0, computeInstanceId=0)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
