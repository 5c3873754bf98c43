"""Host PID -> pod / container / Slurm job, from ``/proc/<pid>/cgroup``.

NVML reports host PIDs (the driver ignores PID namespaces), so the agent runs
with hostPID and reads each process's cgroup path. Handled shapes (cgroup v1
and v2, cgroupfs and systemd drivers; containerd, CRI-O, Docker)::

    /kubepods/burstable/pod<uid>/<64-hex container id>
    /kubepods/pod<uid>/<id>                                  (Guaranteed: no QoS segment)
    /kubepods.slice/kubepods-besteffort.slice/
        kubepods-besteffort-pod<uid with _>.slice/cri-containerd-<id>.scope
    .../crio-<id>.scope   .../docker-<id>.scope
    /slurm/uid_1000/job_4242/step_0                          (Slurm job cgroups)

The pod's namespace and name are not in the path; the kubelet knows them
(PodResources / pods endpoint). Without them the owner carries the UID only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gpuledger.agent.backend import Allocation, Owner, Pod

_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_CONTAINER = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?$")
_SLURM_JOB = re.compile(r"/job_(\d+)(?:/|$)")


@dataclass(frozen=True)
class CgroupIdentity:
    pod_uid: str | None = None
    container_id: str | None = None
    slurm_job: str | None = None


def parse_cgroup(text: str) -> CgroupIdentity:
    """Parse the contents of /proc/<pid>/cgroup (any version); never raises."""
    pod = container = job = None
    for line in text.splitlines():
        path = line.split(":", 2)[-1].strip()
        if not path:
            continue
        if pod is None and (m := _POD.search(path)):
            pod = m.group(1).replace("_", "-")
        if container is None and (m := _CONTAINER.search(path)):
            container = m.group(1)
        if job is None and (m := _SLURM_JOB.search(path)):
            job = m.group(1)
    return CgroupIdentity(pod, container, job)


class ProcWorkloads:
    """WorkloadSource over a host /proc (mounted read-only in the DaemonSet)."""

    def __init__(self, proc_root: str | Path = "/proc") -> None:
        self.proc_root = Path(proc_root)

    def owner_of(self, pid: int) -> Owner:
        try:
            ident = parse_cgroup((self.proc_root / str(pid) / "cgroup").read_text(errors="replace"))
        except OSError:
            return Owner()
        pod = Pod(uid=ident.pod_uid, namespace="", name="") if ident.pod_uid else None
        return Owner(pod=pod, container=ident.container_id, slurm_job=ident.slurm_job)

    def allocations(self) -> list[Allocation]:
        return []  # PodResources (kubelet gRPC) is not wired yet; see README "Not built yet"
