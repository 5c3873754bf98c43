"""One tick of the node agent: read the GPU backend, build a wire message.

Measuring right (DESIGN.md): utilization comes from the driver's sample
buffers with a per-device ``lastSeenTimeStamp`` carried between ticks, so one
tick integrates every driver sample inside it, not one instantaneous read.
Energy comes from the total-energy counter (deltas, resets detected). Every
field read that fails becomes NaN plus a FIELD_ERROR row with the reason; the
rest of the sample is kept.

The first tick only primes the carried state (timestamps, energy counter) and
returns None: an interval needs two edges.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from gpuledger import wire
from gpuledger.agent.backend import GpuBackend, Owner, WorkloadSource
from gpuledger.agent.metrics import DeviceInfo
from gpuledger.errors import FieldError, GpuledgerError, GpuLost, NotSupported

T = TypeVar("T")
log = logging.getLogger("gpuledger.agent")
_OWNER_TTL_TICKS = 3
_NO_OWNER = Owner()


@dataclass
class _DeviceState:
    util_seen_us: int = 0  # lastSeenTimeStamp for device utilization samples
    proc_seen_us: int = 0  # lastSeenTimeStamp for per-process samples
    energy_mj: int | None = None
    lost: bool = False
    uuid: str | None = None  # identity is read once: a GPU lost later keeps its name
    model: str | None = None


@dataclass
class _Build:
    """Rows of one message under construction."""

    strings: wire.StringTable = field(default_factory=wire.StringTable)
    pods: list[dict[str, Any]] = field(default_factory=list)
    pod_index: dict[str, int] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)
    processes: list[tuple[Any, ...]] = field(default_factory=list)  # records in wire.PROCESS field order
    allocations: list[tuple[Any, ...]] = field(default_factory=list)  # records in wire.ALLOCATION order
    errors: list[tuple[int, int, int, str, str]] = field(default_factory=list)

    def pod(self, owner_pod: Any) -> int:
        if owner_pod is None:
            return wire.NULL_POD
        found = self.pod_index.get(owner_pod.uid)
        if found is None:
            found = self.pod_index[owner_pod.uid] = len(self.pods)
            self.pods.append(
                {"uid": owner_pod.uid, "namespace": owner_pod.namespace, "name": owner_pod.name,
                 "labels": dict(owner_pod.labels)}
            )
        return found

    def device_table(self) -> np.ndarray:
        """Device rows (dicts: a device has many optional fields) -> records; absent floats are NaN."""
        return np.array([tuple(row.get(name, default) for name, default in _DEVICE_DEFAULTS) for row in self.devices],
                        dtype=wire.DEVICE)


#: (field, value when a device row lacks it): NaN for measurements, 0 for the rest
_DEVICE_DEFAULTS = tuple((name, math.nan if wire.DEVICE[name].kind == "f" else 0) for name in wire.DEVICE.names or ())


class Sampler:
    """Builds one wire message per tick for one node."""

    def __init__(
        self,
        backend: GpuBackend,
        workloads: WorkloadSource,
        *,
        node: str,
        agent_id: str | None = None,
        boot_id: str | None = None,
        cluster: str | None = None,
    ) -> None:
        self.backend = backend
        self.cluster = cluster  # the optional header key; None: the message names no cluster
        self.workloads = workloads
        self.node = node
        self.agent_id = agent_id or node
        self.boot_id = boot_id or uuid.uuid4().hex[:16]
        self.seq = 0
        self._state: dict[int, _DeviceState] = {}
        self._prev_us: int | None = None
        self._driver: str | None = None
        # pid -> (owner, last tick seen): a process that exited before this tick's
        # read still has samples in the buffer, and /proc no longer knows it.
        self._owners: dict[int, tuple[Owner, int]] = {}
        #: (gpu, mig) -> labels the wire message does not carry (PCI bus id, MIG instance ids), for /metrics
        self.device_info: dict[tuple[int, int], DeviceInfo] = {}
        self._alloc_failing = False
        self._health_fields = getattr(backend, "health_fields", None)  # optional GpuBackend extension

    def tick(self) -> wire.Message | None:
        """Sample every device since the previous tick; None on the priming tick."""
        now_us = self.backend.now_us()
        build = _Build()
        n = self.backend.device_count()
        for i in range(n):
            self._sample_device(i, build)
        if self._prev_us is None:
            self._prev_us = now_us
            return None
        extra: dict[str, Any] = {}
        try:
            allocs = self.workloads.allocations()
        except GpuledgerError as exc:  # unknown is not "nobody holds anything": say so in the message
            allocs = []
            extra["allocations_unavailable"] = f"{type(exc).__name__}: {exc}"
            if not self._alloc_failing:
                log.warning("allocations unavailable: %s (hint: %s)", exc, exc.hint)
        self._alloc_failing = bool(extra)
        for alloc in allocs:
            build.allocations.append(
                (alloc.gpu_index, alloc.mig_index, alloc.replica, build.pod(alloc.pod),
                 build.strings(alloc.container), build.strings(alloc.resource), alloc.share)
            )
        errors = wire.empty("field_errors", len(build.errors))
        for j, (gpu, mig, pid, name, reason) in enumerate(build.errors):
            errors[j] = (gpu, mig, pid, build.strings(name), build.strings(reason))
        msg = wire.Message(
            agent_id=self.agent_id,
            boot_id=self.boot_id,
            seq=self.seq,
            node=self.node,
            interval_start_ns=self._prev_us * 1000,
            interval_end_ns=now_us * 1000,
            strings=build.strings.items,
            pods=build.pods,
            devices=build.device_table(),
            processes=np.array(build.processes, dtype=wire.PROCESS),
            allocations=np.array(build.allocations, dtype=wire.ALLOCATION),
            field_errors=errors,
            driver_version=self._driver_version(),
            cluster=self.cluster,
            extra=extra,
        )
        self.seq += 1
        self._prev_us = now_us
        self._forget_owners()
        return msg

    # --- one physical GPU ------------------------------------------------------

    def _sample_device(self, i: int, build: _Build) -> None:
        state = self._state.setdefault(i, _DeviceState())
        row: dict[str, Any] = {"gpu_index": i, "mig_index": -1, "slice_fraction": 1.0,
                               "profile": wire.NULL_STR, "health": wire.HEALTH_OK}
        read = _Reader(build, i, -1)
        if state.uuid is None:
            state.uuid = read("uuid", lambda: self.backend.uuid(i), None)
        if state.model is None:
            state.model = read("model", lambda: self.backend.name(i), None)
        row["uuid"] = build.strings(state.uuid)
        row["model"] = build.strings(state.model)
        if read.lost:
            self._mark_lost(row, build, state, read)
            return
        mem = read("fb_used_bytes", lambda: self.backend.memory_info(i), None)
        if mem is not None:
            row.update(fb_total_bytes=mem.total, fb_used_bytes=mem.used, fb_free_bytes=mem.free)
            row["fb_reserved_bytes"] = math.nan if mem.reserved is None else mem.reserved
        row["power_w"] = read("power_w", lambda: self.backend.power_mw(i) / 1000.0)
        row["gpu_temp_c"] = read("gpu_temp_c", lambda: self.backend.temperature_c(i))
        row["sm_clock_mhz"] = read("sm_clock_mhz", lambda: self.backend.sm_clock_mhz(i))
        row["mem_clock_mhz"] = read("mem_clock_mhz", lambda: self.backend.mem_clock_mhz(i))
        health_fields = self._health_fields
        if health_fields is not None:
            for name, value in read("health_fields", lambda: health_fields(i), {}).items():
                if isinstance(value, FieldError):
                    # NotSupported is a capability of this GPU, not a fault: health stays OK
                    read.skip(name, value.reason if not str(value) else f"{value.reason}: {value}",
                              failure=not isinstance(value, NotSupported))
                else:
                    row[name] = value
        if (i, -1) not in self.device_info:  # a /metrics label, not a wire column: read once, no error row
            try:
                bus: str | None = self.backend.pci_bus_id(i)
            except FieldError:
                bus = None
            self.device_info[(i, -1)] = DeviceInfo(pci_bus_id=bus)
        energy = read("energy_total_mj", lambda: self.backend.total_energy_mj(i), None)
        row["energy_total_mj"] = math.nan if energy is None else energy
        row["energy_delta_mj"] = self._energy_delta(state, energy, read)
        migs = read("mig_devices", lambda: self.backend.mig_devices(i), [])
        if migs:
            read.skip("gpu_util", "NotSupported: GPU in MIG mode", failure=False)
            row["util_samples"] = 0
        else:
            self._device_util(i, state, row, read)
            self._processes(i, -1, state, build, read)
        if read.lost:
            self._mark_lost(row, build, state, read)
            return
        for mig in migs:
            self._sample_mig(i, mig, row, build)
        row["health"] = wire.HEALTH_DEGRADED if read.failed else wire.HEALTH_OK
        build.devices.append(row)

    def _device_util(self, i: int, state: _DeviceState, row: dict[str, Any], read: _Reader) -> None:
        samples = read("gpu_util", lambda: self.backend.utilization_samples(i, state.util_seen_us), None)
        if samples is None or len(samples.timestamp_us) == 0:
            row["util_samples"] = 0
            if samples is not None:
                read.skip("gpu_util", "NotFound: no driver samples in the interval", failure=False)
            return
        row["util_samples"] = len(samples.value)
        row["gpu_util"] = float(np.mean(samples.value)) / 100.0
        state.util_seen_us = int(samples.timestamp_us.max())

    def _processes(self, i: int, mig: int, state: _DeviceState, build: _Build, read: _Reader) -> None:
        if mig < 0:
            procs = read("processes", lambda: self.backend.compute_processes(i), [])
            samples = read("sm_util_sum", lambda: self.backend.process_samples(i, state.proc_seen_us), None)
        else:
            procs = read("processes", lambda: self.backend.mig_compute_processes(i, mig), [])
            samples = None  # MIG has no per-process utilization (NVML: NotSupported)
        evidence: dict[int, tuple[int, float, float]] = {}
        if samples is not None and len(samples.pid):
            # tens of samples per device per tick: a dict beats numpy's per-call overhead here
            acc: dict[int, list[float]] = {}
            for pid, sm, mem in zip(samples.pid.tolist(), samples.sm_util.tolist(), samples.mem_util.tolist()):
                a = acc.get(pid)
                if a is None:
                    acc[pid] = [1, sm, mem]
                else:
                    a[0] += 1
                    a[1] += sm
                    a[2] += mem
            evidence = {pid: (int(a[0]), a[1] / 100.0, a[2] / 100.0) for pid, a in acc.items()}
            state.proc_seen_us = max(state.proc_seen_us, int(samples.timestamp_us.max()))
        memory = {p.pid: p for p in procs}
        no_evidence = (0, math.nan, math.nan) if samples is None else (0, 0.0, 0.0)
        for pid in sorted(set(memory) | set(evidence)):
            count, sm_sum, mem_sum = evidence.get(pid, no_evidence)
            proc = memory.get(pid)
            owner = self._owner(pid)
            used = math.nan if proc is None or proc.used_memory_bytes is None else proc.used_memory_bytes
            if proc is not None and proc.used_memory_bytes is None:  # NVML: NVML_VALUE_NOT_AVAILABLE
                read.skip("used_memory_bytes", "NotAvailable", failure=False, pid=pid)
            build.processes.append(
                (i, mig, pid, build.pod(owner.pod), build.strings(owner.container), build.strings(owner.slurm_job),
                 0 if proc is None else proc.kind, count, sm_sum, mem_sum, used)
            )

    def _sample_mig(self, i: int, mig: Any, parent: dict[str, Any], build: _Build) -> None:
        read = _Reader(build, i, mig.index)
        self.device_info[(i, mig.index)] = DeviceInfo(gpu_instance_id=mig.gpu_instance_id,
                                                      compute_instance_id=mig.compute_instance_id)
        row: dict[str, Any] = {
            "gpu_index": i, "mig_index": mig.index, "uuid": build.strings(mig.uuid),
            "model": parent["model"], "profile": build.strings(mig.profile),
            "slice_fraction": mig.slice_fraction, "health": wire.HEALTH_OK, "util_samples": 0,
        }
        # MIG devices have no utilization in NVML; DCGM's GR_ENGINE_ACTIVE when present.
        row["gr_engine_active"] = read("gr_engine_active", lambda: self.backend.mig_gr_engine_active(i, mig.index))
        self._processes(i, mig.index, _DeviceState(), build, read)
        row["health"] = wire.HEALTH_DEGRADED if read.failed else wire.HEALTH_OK
        build.devices.append(row)

    # --- helpers -----------------------------------------------------------------

    def _energy_delta(self, state: _DeviceState, energy: int | None, read: _Reader) -> float:
        previous, state.energy_mj = state.energy_mj, energy
        if energy is None or previous is None:
            return math.nan
        if energy < previous:  # driver reload reset the counter: the delta is unknowable
            read.skip("energy_delta_mj", "CounterReset")
            return math.nan
        return float(energy - previous)

    def _mark_lost(self, row: dict[str, Any], build: _Build, state: _DeviceState, read: _Reader) -> None:
        state.lost = True
        row["health"] = wire.HEALTH_LOST
        row["util_samples"] = 0
        read.skip("gpu_util", "GpuLost")
        build.devices.append(row)

    def _owner(self, pid: int) -> Owner:
        try:
            owner = self.workloads.owner_of(pid)
        except (OSError, FieldError):
            owner = Owner()
        if owner is _NO_OWNER or owner == _NO_OWNER:
            cached = self._owners.get(pid)
            return cached[0] if cached else owner
        self._owners[pid] = (owner, self.seq)
        return owner

    def _forget_owners(self) -> None:
        """Drop cached owners unseen for a few ticks (PIDs get reused)."""
        stale = [pid for pid, (_, seen) in self._owners.items() if self.seq - seen > _OWNER_TTL_TICKS]
        for pid in stale:
            del self._owners[pid]

    def _driver_version(self) -> str | None:
        if self._driver is None:
            try:
                self._driver = self.backend.driver_version()
            except FieldError:
                return None
        return self._driver


class _Reader:
    """Calls one backend getter; a FieldError becomes (default, error row)."""

    def __init__(self, build: _Build, gpu: int, mig: int) -> None:
        self.build, self.gpu, self.mig = build, gpu, mig
        self.failed = False
        self.lost = False

    def __call__(self, name: str, fn: Callable[[], T], default: Any = math.nan) -> Any:
        if self.lost:
            return default
        try:
            return fn()
        except GpuLost:
            self.lost = True
            self.skip(name, "GpuLost")
        except FieldError as exc:
            self.skip(name, exc.reason if not str(exc) else f"{exc.reason}: {exc}")
        return default

    def skip(self, name: str, reason: str, failure: bool = True, pid: int = 0) -> None:
        """Record ``name`` as missing; ``pid`` names the process of a per-process field (0: the device's)."""
        self.failed = self.failed or failure
        self.build.errors.append((self.gpu, self.mig, pid, name, reason))
