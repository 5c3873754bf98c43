"""Wire schema v1: one message per node per tick, agent -> transport -> ingest.

The full field list with units lives in ``docs/wire-schema.md``; this module is
the executable definition. A message is a small fixed header, a JSON header
(identity, interval, string table, pods), then four columnar tables of
fixed-width little-endian records. Ingest decodes a whole batch of messages
with ``numpy.frombuffer`` and one concatenation per table: no per-row Python.

Layout (all integers little-endian)::

    0   4s   magic  b"GPLW"
    4   u16  schema version (1)
    6   u16  flags (0; reserved)
    8   u32  JSON header length H
    12  u32  n_devices      16 u32 n_processes
    20  u32  n_allocations  24 u32 n_field_errors
    28  H bytes JSON header (UTF-8)
    ..  n_devices      x DEVICE      records
    ..  n_processes    x PROCESS     records
    ..  n_allocations  x ALLOCATION  records
    ..  n_field_errors x FIELD_ERROR records

Missing measurements are NaN in float columns *and* a FIELD_ERROR row saying
why (NotSupported, GpuLost, ...): missing is never zero.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpuledger.errors import WireError

MAGIC = b"GPLW"
SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
NULL_STR = 0xFFFFFFFF  # string-table index meaning "no value"
NULL_POD = -1  # pod-table index meaning "not in a pod"
#: The cluster of a message whose header names none (a v1 agent from before clusters, or one left unset):
#: the one default every stage shares (``default_cluster`` may name another at attribution).
DEFAULT_CLUSTER = "default"

_FRAME = struct.Struct("<4sHHIIIII")

# Health of a device in the interval (DEVICE.health).
HEALTH_OK, HEALTH_DEGRADED, HEALTH_LOST = 0, 1, 2

#: Device metric columns, all float64, NaN when missing (see FIELD_ERROR).
#: name -> (unit, source)
DEVICE_METRICS: dict[str, tuple[str, str]] = {
    "gpu_util": ("fraction 0..1, mean of driver samples in the interval",
                 "nvmlDeviceGetSamples(GPU_UTILIZATION_SAMPLES) / DCGM_FI_DEV_GPU_UTIL"),
    "mem_copy_util": ("fraction 0..1", "nvmlDeviceGetSamples(MEMORY_UTILIZATION_SAMPLES) / DCGM_FI_DEV_MEM_COPY_UTIL"),
    "enc_util": ("fraction 0..1", "nvmlDeviceGetEncoderUtilization / DCGM_FI_DEV_ENC_UTIL"),
    "dec_util": ("fraction 0..1", "nvmlDeviceGetDecoderUtilization / DCGM_FI_DEV_DEC_UTIL"),
    "gr_engine_active": ("fraction 0..1", "DCGM_FI_PROF_GR_ENGINE_ACTIVE (MIG devices; optional)"),
    "fb_total_bytes": ("bytes", "nvmlDeviceGetMemoryInfo.total"),
    "fb_used_bytes": ("bytes", "nvmlDeviceGetMemoryInfo.used / DCGM_FI_DEV_FB_USED"),
    "fb_free_bytes": ("bytes", "nvmlDeviceGetMemoryInfo.free / DCGM_FI_DEV_FB_FREE"),
    "fb_reserved_bytes": ("bytes", "nvmlDeviceGetMemoryInfo_v2.reserved / DCGM_FI_DEV_FB_RESERVED"),
    "power_w": ("watts, at the end of the interval", "nvmlDeviceGetPowerUsage / DCGM_FI_DEV_POWER_USAGE"),
    "energy_total_mj": ("millijoules, driver counter",
                        "nvmlDeviceGetTotalEnergyConsumption / DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"),
    "energy_delta_mj": ("millijoules in the interval; NaN on first tick or counter reset", "agent: counter delta"),
    "gpu_temp_c": ("degrees C", "nvmlDeviceGetTemperature / DCGM_FI_DEV_GPU_TEMP"),
    "mem_temp_c": ("degrees C", "nvmlDeviceGetFieldValues(NVML_FI_DEV_MEMORY_TEMP) / DCGM_FI_DEV_MEMORY_TEMP"),
    "sm_clock_mhz": ("MHz", "nvmlDeviceGetClockInfo(SM) / DCGM_FI_DEV_SM_CLOCK"),
    "mem_clock_mhz": ("MHz", "nvmlDeviceGetClockInfo(MEM) / DCGM_FI_DEV_MEM_CLOCK"),
    "pcie_replay_total": ("count, driver counter", "nvmlDeviceGetPcieReplayCounter / DCGM_FI_DEV_PCIE_REPLAY_COUNTER"),
    "xid_last": ("XID code of the last error event in the interval", "nvmlEventSetWait / DCGM_FI_DEV_XID_ERRORS"),
    "remapped_rows_correctable": ("rows", "nvmlDeviceGetRemappedRows / DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS"),
    "remapped_rows_uncorrectable": ("rows", "nvmlDeviceGetRemappedRows / DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS"),
    "throttle_reasons": ("bitmask", "nvmlDeviceGetCurrentClocksEventReasons / DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"),
}

DEVICE = np.dtype(
    [
        ("gpu_index", "<u2"),  # NVML index of the physical GPU on the node
        ("mig_index", "<i2"),  # -1: the physical GPU; >= 0: a MIG device of it
        ("uuid", "<u4"),  # string index: GPU-... or MIG-...
        ("model", "<u4"),  # string index: product name
        ("profile", "<u4"),  # string index: MIG profile (e.g. 3g.40gb) or NULL_STR
        ("slice_fraction", "<f8"),  # capacity share of the parent GPU (1.0 whole GPU)
        ("health", "u1"),  # HEALTH_*
        ("util_samples", "<u4"),  # driver utilization samples integrated
    ]
    + [(name, "<f8") for name in DEVICE_METRICS]
)

PROCESS = np.dtype(
    [
        ("gpu_index", "<u2"),
        ("mig_index", "<i2"),
        ("pid", "<u4"),  # host PID (NVML ignores PID namespaces)
        ("pod", "<i4"),  # index into header["pods"], NULL_POD when not in a pod
        ("container", "<u4"),  # string index: container name
        ("slurm_job", "<u4"),  # string index: Slurm job id, NULL_STR otherwise
        ("kind", "u1"),  # 0 compute, 1 graphics, 2 MPS client
        ("samples", "<u4"),  # per-process driver samples in the interval
        ("sm_util_sum", "<f8"),  # sum over those samples of SM util, fractions (NaN: no evidence)
        ("mem_util_sum", "<f8"),  # same for memory-controller util
        ("used_memory_bytes", "<f8"),  # nvmlDeviceGetComputeRunningProcesses.usedGpuMemory
    ]
)

ALLOCATION = np.dtype(
    [
        ("gpu_index", "<u2"),
        ("mig_index", "<i2"),
        ("replica", "<i2"),  # time-slicing replica N of GPU-uuid::N, -1 otherwise
        ("pod", "<i4"),
        ("container", "<u4"),
        ("resource", "<u4"),  # string index: nvidia.com/gpu, nvidia.com/gpu.shared, nvidia.com/mig-...
        ("share", "<f8"),  # fraction of the device this holder was allocated
    ]
)

FIELD_ERROR = np.dtype(
    [
        ("gpu_index", "<u2"),
        ("mig_index", "<i2"),
        ("pid", "<u4"),  # the process of a per-process field (used_memory_bytes); 0 for a device-level field
        ("field", "<u4"),  # string index: column name
        ("reason", "<u4"),  # string index: NotSupported, NotFound, GpuLost, NoPermission, Error: ...
    ]
)

TABLES: dict[str, np.dtype] = {
    "devices": DEVICE,
    "processes": PROCESS,
    "allocations": ALLOCATION,
    "field_errors": FIELD_ERROR,
}
#: The record tables of a message, in wire order; stored under these names, each row carrying its message's key.
RECORD_TABLES: tuple[str, ...] = tuple(TABLES)
#: Record columns holding an index into the message's string table (``NULL_STR``: no value); stored as text.
STRING_COLUMNS: dict[str, tuple[str, ...]] = {
    "devices": ("uuid", "model", "profile"),
    "processes": ("container", "slurm_job"),
    "allocations": ("container", "resource"),
    "field_errors": ("field", "reason"),
}
_HEADER_KEYS = ("agent_id", "boot_id", "seq", "node", "interval_start_ns", "interval_end_ns")


@dataclass
class Message:
    """One node's snapshot for one interval, decoded."""

    agent_id: str
    boot_id: str
    seq: int
    node: str
    interval_start_ns: int
    interval_end_ns: int
    strings: list[str]
    pods: list[dict[str, Any]]
    devices: np.ndarray
    processes: np.ndarray
    allocations: np.ndarray
    field_errors: np.ndarray
    driver_version: str | None = None
    #: Optional header key ``cluster``: the Kubernetes cluster (or Slurm site) the node is in; None: not sent,
    #: so the message belongs to the default cluster (``default_cluster``). Absent from v1 messages of older agents.
    cluster: str | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.agent_id, self.boot_id, self.seq)

    def string(self, index: int) -> str | None:
        return None if index == NULL_STR else self.strings[index]


class StringTable:
    """Interns strings for one message; index NULL_STR stands for None."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, value: str | None) -> int:
        if value is None:
            return NULL_STR
        found = self._index.get(value)
        if found is None:
            found = self._index[value] = len(self.items)
            self.items.append(value)
        return found


def header_note(value: object) -> str | None:
    """An optional header note (``allocations_unavailable``) as stored text: agents may send any JSON value."""
    return None if value is None else value if isinstance(value, str) else json.dumps(value)


def encode(msg: Message) -> bytes:
    header = {
        "agent_id": msg.agent_id,
        "boot_id": msg.boot_id,
        "seq": msg.seq,
        "node": msg.node,
        "interval_start_ns": msg.interval_start_ns,
        "interval_end_ns": msg.interval_end_ns,
        "driver_version": msg.driver_version,
        **({"cluster": msg.cluster} if msg.cluster is not None else {}),
        "strings": msg.strings,
        "pods": msg.pods,
        **msg.extra,
    }
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    tables = [np.ascontiguousarray(getattr(msg, name), dtype=dt) for name, dt in TABLES.items()]
    parts = [_FRAME.pack(MAGIC, SCHEMA_VERSION, 0, len(head), *(len(t) for t in tables)), head]
    parts.extend(t.tobytes() for t in tables)
    return b"".join(parts)


def peek_version(buf: bytes) -> int:
    if len(buf) < _FRAME.size or buf[:4] != MAGIC:
        raise WireError("not a gpuledger message (bad magic or shorter than the frame)")
    return int(struct.unpack_from("<H", buf, 4)[0])


def decode(buf: bytes) -> Message:
    """Decode one message; raises WireError with a readable reason."""
    if len(buf) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(buf)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    version = peek_version(buf)
    if version not in SUPPORTED_VERSIONS:
        raise WireError(f"unknown schema version {version} (this build reads {sorted(SUPPORTED_VERSIONS)})")
    _, _, _, head_len, *counts = _FRAME.unpack_from(buf, 0)
    offset = _FRAME.size + head_len
    expected = offset + sum(n * dt.itemsize for n, dt in zip(counts, TABLES.values()))
    if expected != len(buf):
        raise WireError(f"length mismatch: frame declares {expected} bytes, message has {len(buf)}")
    try:
        header = json.loads(buf[_FRAME.size:offset])
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"JSON header unreadable: {exc}") from None
    except RecursionError:
        raise WireError("JSON header unreadable: nested too deeply") from None
    _check_header(header)
    if b"\\ud" in buf[_FRAME.size:offset].lower():  # \u escapes of UTF-16 surrogates: rare, check properly
        _check_unicode(header)
    arrays = {}
    for (name, dt), n in zip(TABLES.items(), counts):
        arrays[name] = np.frombuffer(buf, dtype=dt, count=n, offset=offset)
        offset += n * dt.itemsize
    _check_references(header, arrays)
    known = {*_HEADER_KEYS, "strings", "pods", "driver_version", "cluster"}
    return Message(
        agent_id=header["agent_id"],
        boot_id=header["boot_id"],
        seq=header["seq"],
        node=header["node"],
        interval_start_ns=header["interval_start_ns"],
        interval_end_ns=header["interval_end_ns"],
        strings=header["strings"],
        pods=header["pods"],
        driver_version=header.get("driver_version"),
        cluster=header.get("cluster"),
        extra={k: v for k, v in header.items() if k not in known},
        schema_version=version,
        **arrays,
    )


def _check_header(header: Any) -> None:
    if not isinstance(header, dict):
        raise WireError("JSON header is not an object")
    missing = [k for k in _HEADER_KEYS if k not in header]
    if missing:
        raise WireError(f"header lacks {', '.join(missing)}")
    for key in ("agent_id", "boot_id", "node"):
        if not isinstance(header[key], str) or not header[key]:
            raise WireError(f"header field {key} must be a non-empty string")
    for key in ("seq", "interval_start_ns", "interval_end_ns"):
        value = header[key]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
            raise WireError(f"header field {key} must be a non-negative 64-bit integer, got {value!r}")
    if header["interval_end_ns"] <= header["interval_start_ns"]:
        raise WireError("interval_end_ns must be after interval_start_ns")
    if not isinstance(header.get("driver_version"), (str, type(None))):
        raise WireError("header field driver_version must be a string or null")
    cluster = header.get("cluster")
    if cluster is not None and (not isinstance(cluster, str) or not cluster):
        raise WireError("header field cluster must be a non-empty string (absent or null: the default cluster)")
    strings, pods = header.get("strings"), header.get("pods")
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        raise WireError("header field strings must be a list of strings")
    if not isinstance(pods, list) or not all(_pod_ok(p) for p in pods):
        raise WireError("header field pods must be a list of {uid, namespace, name, labels}")


def _check_unicode(header: dict[str, Any]) -> None:
    # JSON may escape a lone surrogate ("\\ud800"); Python accepts it, UTF-8
    # (DuckDB, Arrow) cannot hold it, so the message could never be stored.
    try:
        json.dumps(header, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise WireError("JSON header holds a lone UTF-16 surrogate (not valid Unicode text)") from None


def _pod_ok(pod: Any) -> bool:
    return (
        isinstance(pod, dict)
        and all(isinstance(pod.get(k), str) for k in ("uid", "namespace", "name"))
        and isinstance(pod.get("labels", {}), dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in pod.get("labels", {}).items())
    )


def _check_references(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    n_strings, n_pods = len(header["strings"]), len(header["pods"])
    refs = {
        "devices": ("uuid", "model", "profile"),
        "processes": ("container", "slurm_job"),
        "allocations": ("container", "resource"),
        "field_errors": ("field", "reason"),
    }
    for table, columns in refs.items():
        for column in columns:
            col = arrays[table][column]
            if col.size and ((col != NULL_STR) & (col >= n_strings)).any():
                raise WireError(f"{table}.{column} points past the string table")
    for column in ("field", "reason"):  # NOT NULL: an error row without a field or reason says nothing
        col = arrays["field_errors"][column]
        if col.size and (col == NULL_STR).any():
            raise WireError(f"field_errors.{column} must name a string, not null")
    for table in ("processes", "allocations"):
        pod = arrays[table]["pod"]
        if pod.size and ((pod < NULL_POD) | (pod >= n_pods)).any():
            raise WireError(f"{table}.pod points past the pod table")
    dev = arrays["devices"]
    if dev.size and (~np.isfinite(dev["slice_fraction"]) | (dev["slice_fraction"] <= 0) | (dev["slice_fraction"] > 1)).any():
        raise WireError("devices.slice_fraction must be in (0, 1]")
    share = arrays["allocations"]["share"]
    if share.size and (~np.isfinite(share) | (share < 0) | (share > 1)).any():
        raise WireError("allocations.share must be in [0, 1]")
    util = dev["gpu_util"]
    if util.size and ((util < 0) | (util > 1)).any():  # NaN compares False: allowed (missing)
        raise WireError("devices.gpu_util must be a fraction in [0, 1] or missing")


def empty(table: str, n: int = 0) -> np.ndarray:
    """A zeroed table of n records with every float column NaN (missing)."""
    arr = np.zeros(n, dtype=TABLES[table])
    for name in arr.dtype.names or ():
        if arr.dtype[name].kind == "f":
            arr[name] = math.nan
    return arr
