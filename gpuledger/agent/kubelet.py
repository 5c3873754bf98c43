"""Pod metadata from the kubelet's pods endpoint, cached with a bounded refresh rate.

PodResources names pods (namespace, name) but carries no UID or labels, and
``/proc/<pid>/cgroup`` carries the pod UID and container *id* but no names.
The kubelet's ``GET /pods`` (a ``v1.PodList`` of the pods bound to this node,
``https://<node>:10250/pods`` with the service account's token, or the
read-only ``http://127.0.0.1:10255/pods`` where enabled) joins them: UID,
namespace, name, labels, and container id -> container name.

The list is fetched at most once per ``min_refresh_s`` seconds (default 30),
also when a lookup misses (a pod newer than the cache), so a node with
thousands of short-lived processes costs at most one request per window.
A failed fetch keeps the last good list and logs once per outage.

vCluster: a pod that a virtual cluster's syncer created on the host carries
its virtual identity in the annotations ``vcluster.loft.sh/object-name`` and
``vcluster.loft.sh/object-namespace`` (and the labels
``vcluster.loft.sh/managed-by`` = the virtual cluster, and
``vcluster.loft.sh/namespace``). Pod metadata on the wire holds labels only,
so those two annotations (:data:`VCLUSTER_ANNOTATIONS`) are kept in the
pod's labels map under their own keys, for the tenancy rules
(gpuledger/analytics/tenancy.py, ``[vclusters]``).
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gpuledger.agent.backend import Pod

log = logging.getLogger("gpuledger.agent.kubelet")

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: Annotations vCluster's syncer sets on host pods (loft-sh/vcluster pkg/util/translate), kept with the labels.
VCLUSTER_ANNOTATIONS = ("vcluster.loft.sh/object-name", "vcluster.loft.sh/object-namespace")
MAX_BODY_BYTES = 64 * 2**20


@dataclass
class PodIndex:
    """One snapshot of the node's pods."""

    by_uid: dict[str, Pod] = field(default_factory=dict)
    by_name: dict[tuple[str, str], Pod] = field(default_factory=dict)
    container_names: dict[str, str] = field(default_factory=dict)  # container id (hex) -> name


def parse_pod_list(doc: object) -> PodIndex:
    """A ``v1.PodList`` JSON document -> PodIndex; malformed items are skipped, never raised on."""
    index = PodIndex()
    items = doc.get("items") if isinstance(doc, dict) else None
    for item in items if isinstance(items, list) else ():
        meta = item.get("metadata") if isinstance(item, dict) else None
        if not isinstance(meta, dict):
            continue
        uid, ns, name = meta.get("uid"), meta.get("namespace"), meta.get("name")
        if not (isinstance(uid, str) and uid and isinstance(ns, str) and ns and isinstance(name, str) and name):
            continue
        raw_labels = meta.get("labels")
        labels: dict[object, object] = dict(raw_labels) if isinstance(raw_labels, dict) else {}
        annotations = meta.get("annotations")
        if isinstance(annotations, dict):
            labels.update({k: annotations[k] for k in VCLUSTER_ANNOTATIONS if isinstance(annotations.get(k), str)})
        pod = Pod(uid=uid, namespace=ns, name=name,
                  labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())))
        index.by_uid[uid] = pod
        index.by_name[(ns, name)] = pod
        raw_status = item.get("status")
        status: dict[str, object] = raw_status if isinstance(raw_status, dict) else {}
        for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
            statuses = status.get(key)
            for cs in statuses if isinstance(statuses, list) else ():
                if isinstance(cs, dict) and isinstance(cs.get("containerID"), str) and isinstance(cs.get("name"), str):
                    index.container_names[cs["containerID"].rsplit("://", 1)[-1]] = cs["name"]
    return index


class KubeletPods:
    """Cached pod metadata from one pods endpoint URL."""

    def __init__(self, url: str, *, min_refresh_s: float = 30.0, timeout_s: float = 5.0,
                 token_path: Path | None = SA_DIR / "token", ca_path: Path | None = SA_DIR / "ca.crt",
                 insecure_tls: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.min_refresh_s = min_refresh_s
        self.timeout_s = timeout_s
        self.token_path, self.ca_path = token_path, ca_path
        self.insecure_tls = insecure_tls
        self.clock = clock
        self.index = PodIndex()
        self.fetches = 0
        self.failures = 0
        self._last_fetch: float | None = None
        self._failing = False

    def _request(self) -> urllib.request.Request:
        req = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        if self.token_path is not None and self.token_path.is_file():
            req.add_header("Authorization", f"Bearer {self.token_path.read_text().strip()}")
        return req

    def _context(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https:"):
            return None
        ctx = ssl.create_default_context(
            cafile=str(self.ca_path) if self.ca_path is not None and self.ca_path.is_file() else None)
        # The kubelet's serving certificate names the node, not the IP the agent dials; the CA still
        # has to sign it when one is mounted.
        ctx.check_hostname = False
        if self.insecure_tls:  # self-signed kubelet certificates (no serverTLSBootstrap): encrypted, unverified
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def refresh(self, *, force: bool = False) -> bool:
        """Fetch now unless the last fetch is under ``min_refresh_s`` old; True when a fetch happened."""
        now = self.clock()
        if not force and self._last_fetch is not None and now - self._last_fetch < self.min_refresh_s:
            return False
        self._last_fetch = now
        self.fetches += 1
        try:
            with urllib.request.urlopen(self._request(), timeout=self.timeout_s, context=self._context()) as resp:
                body = resp.read(MAX_BODY_BYTES + 1)
            if len(body) > MAX_BODY_BYTES:
                raise ValueError(f"pod list larger than {MAX_BODY_BYTES} bytes")
            self.index = parse_pod_list(json.loads(body))
        except (OSError, ValueError) as exc:
            self.failures += 1
            if not self._failing:
                log.warning("kubelet pods endpoint %s failed: %s; keeping the last %d pods (hint: check "
                            "--kubelet-pods-url and the agent's RBAC: nodes/proxy get)", self.url, exc,
                            len(self.index.by_uid))
            self._failing = True
            return True
        if self._failing:
            log.info("kubelet pods endpoint %s answers again (%d pods)", self.url, len(self.index.by_uid))
        self._failing = False
        return True

    def by_uid(self, uid: str) -> Pod | None:
        pod = self.index.by_uid.get(uid)
        if pod is None and self.refresh():
            pod = self.index.by_uid.get(uid)
        return pod

    def by_name(self, namespace: str, name: str) -> Pod | None:
        pod = self.index.by_name.get((namespace, name))
        if pod is None and self.refresh():
            pod = self.index.by_name.get((namespace, name))
        return pod

    def container_name(self, container_id: str) -> str | None:
        name = self.index.container_names.get(container_id)
        if name is None and self.refresh():
            name = self.index.container_names.get(container_id)
        return name
