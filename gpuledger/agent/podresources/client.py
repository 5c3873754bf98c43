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
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gpuledger.errors import BackendError

if TYPE_CHECKING:
    import grpc

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

    gRPC (``grpc`` and the generated stubs, ~15 MiB of the agent's RSS) is
    imported and the channel opened on the first call that finds the socket:
    an agent on a node without a kubelet never loads it.
    """

    def __init__(self, socket_path: str = DEFAULT_SOCKET, *, timeout_s: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._channel: Any = None
        self._stub: Any = None
        self._allocatable_ok = True

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = self._stub = None

    def _connect(self, what: str) -> Any:
        """(grpc, api_pb2) with the stub ready; BackendError while there is no socket to talk to."""
        if not os.path.exists(self.socket_path):
            raise BackendError(f"kubelet PodResources {what} on {self.socket_path} failed: no such socket",
                               hint=_HINT)
        import grpc

        from gpuledger.agent.podresources import api_pb2, api_pb2_grpc

        if self._stub is None:
            self._channel = grpc.insecure_channel(f"unix://{self.socket_path}")
            self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        return grpc, api_pb2

    def _fail(self, what: str, exc: grpc.RpcError) -> BackendError:
        code = exc.code() if hasattr(exc, "code") else None
        return BackendError(
            f"kubelet PodResources {what} on {self.socket_path} failed: {code}: "
            f"{exc.details() if hasattr(exc, 'details') else exc}",
            hint=_HINT,
        )

    def list(self) -> list[DeviceHold]:
        """Every device id held by every container on the node (devices only; CPUs and memory ignored)."""
        grpc, api_pb2 = self._connect("List")
        try:
            resp = self._stub.List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise self._fail("List", exc) from None
        return [
            DeviceHold(pod.namespace, pod.name, c.name, d.resource_name, dev_id)
            for pod in resp.pod_resources
            for c in pod.containers
            for d in c.devices
            for dev_id in d.device_ids
        ]

    def allocatable(self) -> builtins.list[tuple[str, str]] | None:
        """(resource, device id) of every device the kubelet knows; None where the call is unavailable."""
        if not self._allocatable_ok:
            return None
        grpc, api_pb2 = self._connect("GetAllocatableResources")
        try:
            resp = self._stub.GetAllocatableResources(api_pb2.AllocatableResourcesRequest(), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE) or "disabled" in str(
                exc.details()
            ):
                log.warning("kubelet GetAllocatableResources unavailable (%s); time-slicing replica counts fall "
                            "back to the replicas seen in use", exc.code())
                self._allocatable_ok = False
                return None
            raise self._fail("GetAllocatableResources", exc) from None
        return [(d.resource_name, i) for d in resp.devices for i in d.device_ids]


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
