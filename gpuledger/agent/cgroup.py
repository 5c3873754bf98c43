"""Host PID -> pod / container / Slurm job, from ``/proc/<pid>/cgroup``.

NVML reports host PIDs (the driver ignores PID namespaces), so the agent runs
with hostPID and reads each process's cgroup path. Handled shapes (cgroup v1
and v2, cgroupfs and systemd drivers; containerd, CRI-O, Docker)::

    /kubepods/burstable/pod<uid>/<64-hex container id>
    /kubepods/pod<uid>/<id>                                  (Guaranteed: no QoS segment)
    /kubepods.slice/kubepods-besteffort.slice/
        kubepods-besteffort-pod<uid with _>.slice/cri-containerd-<id>.scope
    .../crio-<id>.scope   .../docker-<id>.scope
    /machine.slice/libpod-<id>.scope/container               (Podman)
    /slurm/uid_1000/job_4242/step_0                          (Slurm job cgroups, v1)
    /system.slice/slurmstepd.scope/job_4242/step_0/...       (Slurm, cgroup v2)

Static pods' UIDs are a 32-hex hash rather than an RFC 4122 UUID; both are
recognised. ``tests/agent/fixtures/cgroup/`` holds one real path shape per file.

The pod's namespace and name are not in the path; the kubelet knows them
(PodResources / pods endpoint). Without them the owner carries the UID only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gpuledger.agent.backend import Allocation, Owner, Pod

# A pod UID: RFC 4122 form (dashes; systemd escapes them to "_"), or the 32-hex hash of a static pod.
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32})"
                  r"(?![0-9a-f])")
# A 64-hex container id as a whole path segment or after a runtime prefix (cri-containerd-, crio-,
# docker-, libpod-), optionally ".scope", possibly followed by sub-cgroups (podman's ".../container").
_CONTAINER = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?(?=/|$)")
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
        if container is None and (found := _CONTAINER.findall(path)):
            container = found[-1]  # the innermost: a podman pod's own id may come first
        if job is None and (m := _SLURM_JOB.search(path)):
            job = m.group(1)
    return CgroupIdentity(pod, container, job)


class ProcWorkloads:
    """WorkloadSource over a host /proc (mounted read-only in the DaemonSet)."""

    def __init__(self, proc_root: str | Path = "/proc") -> None:
        self.proc_root = Path(proc_root)

    def identity(self, pid: int) -> CgroupIdentity | None:
        """The parsed cgroup of a host PID; None when the process is gone or unreadable."""
        try:
            return parse_cgroup((self.proc_root / str(pid) / "cgroup").read_text(errors="replace"))
        except OSError:
            return None

    def owner_of(self, pid: int) -> Owner:
        ident = self.identity(pid)
        if ident is None:
            return Owner()
        pod = Pod(uid=ident.pod_uid, namespace="", name="") if ident.pod_uid else None
        return Owner(pod=pod, container=ident.container_id, slurm_job=ident.slurm_job)

    def allocations(self) -> list[Allocation]:
        """None known from /proc alone: ``NodeWorkloads`` adds the kubelet's PodResources."""
        return []
