"""PodResources ``List`` client and the device-id -> GPU mapping.

The NVIDIA device plugin advertises (and the kubelet reports per container):

=====================================  ===================================  ==================
resource                               device id                            held share
=====================================  ===================================  ==================
nvidia.com/gpu                         ``GPU-<uuid>``                       1.0
nvidia.com/gpu (time-slicing)          ``GPU-<uuid>::<N>``                  1 / replicas
nvidia.com/gpu.shared (renamed)        ``GPU-<uuid>::<N>``                  1 / replicas
nvidia.com/mig-<profile> (mixed)       ``MIG-<uuid>`` (``::<N>`` sliced)    1.0 (1 / replicas)
nvidia.com/mig-<profile> (R450 names)  ``MIG-GPU-<uuid>/<gi>/<ci>``         1.0
nvidia.com/gpu, deviceIDStrategy=index ``<index>`` (``::<N>``)               as above
=====================================  ===================================  ==================

``replicas`` is the number of ids of that physical device the kubelet knows
(``GetAllocatableResources``); when that call is unavailable (kubelets before
1.23, or the feature gate off) it falls back to the highest replica index
seen in ``List`` + 1 -- an undercount of idle replicas, stated in the log.
"""

from __future__ import annotations

import builtins
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from gpuledger.agent.podresources import unary
from gpuledger.errors import BackendError

log = logging.getLogger("gpuledger.agent.podresources")

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
_REPLICA = re.compile(r"^(?P<base>.+?)::(?P<n>\d+)$")
_R450_MIG = re.compile(r"^MIG-(?P<gpu>GPU-[0-9a-fA-F-]+)/(?P<gi>\d+)/(?P<ci>\d+)$")
_HINT = ("mount /var/lib/kubelet/pod-resources read-only into the agent (the DaemonSet in deploy/ does) "
         "or set --pod-resources-socket")


@dataclass(frozen=True)
class DeviceHold:
    """One device id held by one container, as ``List`` reports it."""

    namespace: str
    pod: str
    container: str
    resource: str
    device_id: str


class PodResourcesClient:
    """``v1.PodResourcesLister`` over ``unix://<socket>``; errors become BackendError with a hint.

    Each call is one HTTP/2 connection (:mod:`.unary`: its own frames and a
    protobuf reader, not grpcio, whose C core alone is ~17 MiB of the agent's
    60 MiB budget): a call per tick, to a local socket.
    """

    def __init__(self, socket_path: str = DEFAULT_SOCKET, *, timeout_s: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._allocatable_ok = True

    def close(self) -> None:
        """Nothing to release: no connection outlives a call (kept for callers that close clients)."""

    def _call(self, method: str) -> bytes:
        return unary.call(self.socket_path, f"/v1.PodResourcesLister/{method}", timeout_s=self.timeout_s)

    def _fail(self, what: str, exc: unary.RpcError | ValueError) -> BackendError:
        return BackendError(f"kubelet PodResources {what} on {self.socket_path} failed: {exc}", hint=_HINT)

    def list(self) -> list[DeviceHold]:
        """Every device id held by every container on the node (devices only; CPUs and memory ignored)."""
        try:
            return [DeviceHold(namespace, pod, container, resource, dev_id)
                    for pod, namespace, containers in _pods(self._call("List"))
                    for container, devices in containers
                    for resource, ids in devices
                    for dev_id in ids]
        except (unary.RpcError, ValueError) as exc:
            raise self._fail("List", exc) from None

    def allocatable(self) -> builtins.list[tuple[str, str]] | None:
        """(resource, device id) of every device the kubelet knows; None where the call is unavailable."""
        if not self._allocatable_ok:
            return None
        try:
            data = self._call("GetAllocatableResources")
            devices = [_devices(v) for n, _, v in unary.fields(data) if n == 1 and isinstance(v, bytes)]
        except unary.RpcError as exc:
            if exc.code in (unary.StatusCode.UNIMPLEMENTED, unary.StatusCode.UNAVAILABLE) or "disabled" in exc.details:
                log.warning("kubelet GetAllocatableResources unavailable (%s); time-slicing replica counts fall "
                            "back to the replicas seen in use", exc)
                self._allocatable_ok = False
                return None
            raise self._fail("GetAllocatableResources", exc) from None
        except ValueError as exc:
            raise self._fail("GetAllocatableResources", exc) from None
        return [(resource, i) for resource, ids in devices for i in ids]


# --- the messages (api.proto field numbers); unknown fields (CPUs, memory, topology, DRA) are skipped ----

def _text(v: bytes | int) -> str:
    if not isinstance(v, bytes):
        raise ValueError("a string field is not length-delimited")
    return v.decode()


def _devices(data: bytes | int) -> tuple[str, builtins.list[str]]:
    """ContainerDevices: (resource_name = 1, device_ids = 2)."""
    if not isinstance(data, bytes):
        raise ValueError("a message field is not length-delimited")
    resource, ids = "", []
    for n, _, v in unary.fields(data):
        if n == 1:
            resource = _text(v)
        elif n == 2:
            ids.append(_text(v))
    return resource, ids


def _pods(data: bytes) -> Iterator[tuple[str, str, builtins.list[tuple[str, builtins.list[tuple[str, builtins.list[str]]]]]]]:
    """ListPodResourcesResponse.pod_resources (1): PodResources (name = 1, namespace = 2, containers = 3),
    ContainerResources (name = 1, devices = 2)."""
    for n, _, pod in unary.fields(data):
        if n != 1 or not isinstance(pod, bytes):
            continue
        name = namespace = ""
        containers = []
        for pn, _, pv in unary.fields(pod):
            if pn == 1:
                name = _text(pv)
            elif pn == 2:
                namespace = _text(pv)
            elif pn == 3 and isinstance(pv, bytes):
                cname, devices = "", []
                for cn, _, cv in unary.fields(pv):
                    if cn == 1:
                        cname = _text(cv)
                    elif cn == 2:
                        devices.append(_devices(cv))
                containers.append((cname, devices))
        yield name, namespace, containers


def split_replica(device_id: str) -> tuple[str, int]:
    """``GPU-x::3`` -> (``GPU-x``, 3); ``GPU-x`` -> (``GPU-x``, -1)."""
    m = _REPLICA.match(device_id)
    return (m.group("base"), int(m.group("n"))) if m else (device_id, -1)


def resolve_holds(
    holds: list[DeviceHold],
    devices: Mapping[str, tuple[int, int]],
    allocatable: list[tuple[str, str]] | None = None,
) -> tuple[list[tuple[DeviceHold, int, int, int, float]], list[DeviceHold]]:
    """Map held device ids to (hold, gpu index, mig index, replica, share); and the ids not found.

    ``devices`` maps every known id form to (gpu, mig): ``GPU-<uuid>``,
    ``MIG-<uuid>``, ``MIG-GPU-<uuid>/<gi>/<ci>`` and the decimal index.
    Only resources under ``nvidia.com/`` are considered.
    """
    replicas: dict[str, int] = {}
    source = allocatable if allocatable is not None else [(h.resource, h.device_id) for h in holds]
    for resource, dev_id in source:
        if not resource.startswith("nvidia.com/"):
            continue
        base, n = split_replica(dev_id)
        if allocatable is not None:
            replicas[base] = replicas.get(base, 0) + (1 if n >= 0 else 0)
        else:
            replicas[base] = max(replicas.get(base, 0), n + 1)
    out, unknown = [], []
    for h in holds:
        if not h.resource.startswith("nvidia.com/"):
            continue
        base, n = split_replica(h.device_id)
        where = devices.get(base)
        if where is None and (m := _R450_MIG.match(base)):
            where = devices.get(f"{m.group('gpu')}/{m.group('gi')}")
        if where is None:
            unknown.append(h)
            continue
        share = 1.0 if n < 0 else 1.0 / max(1, replicas.get(base, n + 1))
        out.append((h, where[0], where[1], n, share))
    return out, unknown
