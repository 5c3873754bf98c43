"""The production WorkloadSource: /proc cgroups + kubelet PodResources + pod metadata.

- ``owner_of(pid)``: ``/proc/<pid>/cgroup`` gives the pod UID and container id
  (or a Slurm job); the kubelet's pods endpoint turns them into namespace,
  name, labels and the container's name.
- ``allocations()``: PodResources ``List`` says which container holds which
  device id, including idle holders; ids resolve to (GPU, MIG device) through
  the backend's UUIDs, and time-slicing replicas get 1/replicas of the GPU.

Without a pods endpoint, pods are known by UID (from cgroups) or by
namespace/name (from PodResources) only, and the two cannot be joined: the
pod UID of an allocation is then ``unresolved:<namespace>/<name>``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from gpuledger.agent.backend import Allocation, GpuBackend, Owner, Pod
from gpuledger.agent.cgroup import ProcWorkloads
from gpuledger.agent.kubelet import KubeletPods
from gpuledger.agent.podresources.client import PodResourcesClient, resolve_holds
from gpuledger.errors import FieldError

log = logging.getLogger("gpuledger.agent.holders")


def device_ids(backend: GpuBackend) -> dict[str, tuple[int, int]]:
    """Every id form the device plugin may report -> (gpu index, mig index)."""
    out: dict[str, tuple[int, int]] = {}
    for i in range(backend.device_count()):
        try:
            uuid = backend.uuid(i)
        except FieldError:
            continue
        out[uuid] = out[str(i)] = (i, -1)
        try:
            migs = backend.mig_devices(i)
        except FieldError:
            migs = []
        for m in migs:
            out[m.uuid] = (i, m.index)
            out[f"{uuid}/{m.gpu_instance_id}"] = (i, m.index)  # R450 MIG-GPU-<uuid>/<gi>/<ci>
    return out


class NodeWorkloads:
    """WorkloadSource for a Kubernetes (or Slurm) GPU node."""

    def __init__(self, procs: ProcWorkloads, podresources: PodResourcesClient | None, pods: KubeletPods | None,
                 devices: Callable[[], dict[str, tuple[int, int]]], *, allocatable_refresh_s: float = 300.0,
                 devices_refresh_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.procs, self.podresources, self.pods = procs, podresources, pods
        self._devices_fn = devices
        self._devices: dict[str, tuple[int, int]] | None = None
        self._devices_at = -1e18
        self._allocatable: list[tuple[str, str]] | None = None
        self._allocatable_at = -1e18
        self.allocatable_refresh_s, self.devices_refresh_s = allocatable_refresh_s, devices_refresh_s
        self.clock = clock
        self._warned: set[str] = set()
        # pid -> (identity of /proc/<pid>: inode and ctime, owner): a live process's cgroup is read once
        self._owners: dict[int, tuple[tuple[int, int], Owner]] = {}

    @classmethod
    def for_node(cls, backend: GpuBackend, *, socket_path: str | None = None, pods_url: str | None = None,
                 proc_root: str = "/proc", kubelet_insecure_tls: bool = False) -> NodeWorkloads:
        client = None
        if socket_path and not os.path.isdir(os.path.dirname(socket_path) or "."):
            # no pod-resources directory at all: not a Kubernetes node (bare metal, Slurm)
            log.info("no kubelet PodResources directory for %s: not a Kubernetes node; no device allocations",
                     socket_path)
        elif socket_path:  # a missing socket in an existing directory is an error each tick, not "nobody"
            client = PodResourcesClient(socket_path)
        pods = KubeletPods(pods_url, insecure_tls=kubelet_insecure_tls) if pods_url else None
        return cls(ProcWorkloads(proc_root), client, pods, lambda: device_ids(backend))

    def owner_of(self, pid: int) -> Owner:
        """Owner of a host PID, cached while /proc/<pid> is the same process (a reused PID gets a new
        /proc inode, so it is read afresh)."""
        try:
            st = os.stat(self.procs.proc_root / str(pid))
        except OSError:
            self._owners.pop(pid, None)
            return Owner()
        stamp = (st.st_ino, st.st_ctime_ns)
        cached = self._owners.get(pid)
        if cached is not None and cached[0] == stamp and (cached[1].pod is None or cached[1].pod.name):
            return cached[1]
        owner = self._read_owner(pid)
        if len(self._owners) >= 65536:
            self._owners.clear()
        self._owners[pid] = (stamp, owner)
        return owner

    def _read_owner(self, pid: int) -> Owner:
        ident = self.procs.identity(pid)
        if ident is None:
            return Owner()
        pod = None
        container = ident.container_id
        if ident.pod_uid:
            pod = self.pods.by_uid(ident.pod_uid) if self.pods is not None else None
            pod = pod or Pod(uid=ident.pod_uid, namespace="", name="")
            if ident.container_id and self.pods is not None:
                container = self.pods.container_name(ident.container_id) or ident.container_id
        return Owner(pod=pod, container=container, slurm_job=ident.slurm_job)

    def _device_map(self, *, stale: bool) -> dict[str, tuple[int, int]]:
        now = self.clock()
        if self._devices is None or (stale and now - self._devices_at >= self.devices_refresh_s):
            self._devices, self._devices_at = self._devices_fn(), now
        return self._devices

    def allocations(self) -> list[Allocation]:
        """Every device held now. Raises BackendError when PodResources cannot be read (not 'nobody')."""
        if self.podresources is None:
            return []
        holds = self.podresources.list()
        now = self.clock()
        if now - self._allocatable_at >= self.allocatable_refresh_s:
            self._allocatable, self._allocatable_at = self.podresources.allocatable(), now
        resolved, unknown = resolve_holds(holds, self._device_map(stale=False), self._allocatable)
        if unknown:
            resolved, unknown = resolve_holds(holds, self._device_map(stale=True), self._allocatable)
        for h in unknown:
            if h.device_id not in self._warned and len(self._warned) < 1000:
                self._warned.add(h.device_id)
                log.warning("PodResources device id %r (%s, pod %s/%s) matches no GPU or MIG device NVML reports",
                            h.device_id, h.resource, h.namespace, h.pod)
        out = []
        for h, gpu, mig, replica, share in resolved:
            pod = self.pods.by_name(h.namespace, h.pod) if self.pods is not None else None
            pod = pod or Pod(uid=f"unresolved:{h.namespace}/{h.pod}", namespace=h.namespace, name=h.pod)
            out.append(Allocation(gpu, mig, pod, h.container, h.resource, share, replica))
        return out
