"""Tenancy rules: who a workload belongs to, resolved at attribution time.

Rules are data with a version, so a corrected mapping can be re-applied to
past periods (``gpuledger attribute --full --tenancy rules.toml``): the ledger
keeps pod uids and Slurm job ids, never a frozen tenant. Resolution order for
a pod, first match wins:

1. ``pods``: static overrides by pod uid, ``cluster/namespace/pod-name`` or
   ``namespace/pod-name`` (any cluster)
2. ``vclusters``: a pod that vCluster synced into the host cluster, by its
   virtual cluster (label ``vcluster.loft.sh/managed-by``) and virtual
   namespace (annotation ``vcluster.loft.sh/object-namespace``, kept with the
   labels by the agent, else label ``vcluster.loft.sh/namespace``):
   ``"vcluster/virtual-namespace"`` first, then ``"vcluster"``
3. ``overrides``: ``cluster/namespace`` or namespace (any cluster) -> tenant,
   exact names (e.g. ``kube-system`` -> platform)
4. ``label_keys``: the first of these pod labels that is set (default ``team``;
   e.g. ``["cost-center", "team"]`` to charge cost centres)
5. the pod's namespace (for a synced pod: its host namespace, the virtual cluster's)
6. no pod at all (a host process, an unknown PID): ``unattributed``

A bare-metal Slurm process has no pod but a job id (from its cgroup). Its
tenant is the job's account (``slurm_jobs``: job id -> account, e.g. loaded
from ``sacct -X -n -P -o JobID,Account``), mapped through ``slurm_accounts``
(account -> tenant; default: the account itself); a job with no known
account is ``unattributed``. Slurm owners appear in the ledger's tenant table
as ``slurm:<job id>`` (see ``SLURM_PREFIX``).

TOML format::

    version = "2026-11-02"
    label_keys = ["cost-center", "team"]
    [overrides]          # namespace or "cluster/namespace" = "tenant"
    kube-system = "platform"
    "gpu-east/team-a" = "east-team-a"
    [pods]               # "namespace/pod", "cluster/namespace/pod" or pod uid = "tenant"
    "research/shared-notebook" = "research"
    [vclusters]          # "virtual cluster" or "virtual cluster/virtual namespace" = "tenant"
    team-a = "team-a"
    "shared/ml" = "ml"
    [slurm_accounts]     # account = "tenant"
    astro = "science"
    [slurm_jobs]         # job id = "account" (or slurm_jobs_csv = "sacct.txt", JobID|Account lines)
    "4242" = "astro"

A pod's identity is (cluster, namespace, pod): the cluster is the one its
messages name (``default_cluster`` when they name none), so two clusters'
``team-a`` namespaces stay apart in the ledger, and a rule may name one of them.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from gpuledger.analytics.kinds import UNATTRIBUTED_TENANT
from gpuledger.errors import ConfigError

SLURM_PREFIX = "slurm:"
#: What vCluster's syncer puts on a host pod (loft-sh/vcluster pkg/util/translate): the virtual cluster's name
#: (label), the virtual namespace (annotation, kept with the labels by the agent; and a label).
VCLUSTER_LABEL = "vcluster.loft.sh/managed-by"
VCLUSTER_NAMESPACE_KEYS = ("vcluster.loft.sh/object-namespace", "vcluster.loft.sh/namespace")


@dataclass(frozen=True)
class TenancyRules:
    version: str = "default-1"
    label_keys: tuple[str, ...] = ("team",)
    overrides: Mapping[str, str] = field(default_factory=dict)
    pods: Mapping[str, str] = field(default_factory=dict)
    slurm_accounts: Mapping[str, str] = field(default_factory=dict)
    slurm_jobs: Mapping[str, str] = field(default_factory=dict)
    vclusters: Mapping[str, str] = field(default_factory=dict)

    def resolve(self, namespace: str | None, labels: Mapping[str, str], *, uid: str | None = None,
                name: str | None = None, cluster: str | None = None) -> str:
        if uid is not None and uid in self.pods:
            return self.pods[uid]
        if cluster and namespace and name and f"{cluster}/{namespace}/{name}" in self.pods:
            return self.pods[f"{cluster}/{namespace}/{name}"]
        if namespace and name and f"{namespace}/{name}" in self.pods:
            return self.pods[f"{namespace}/{name}"]
        if not namespace:  # no pod, or a pod whose namespace is not known
            return UNATTRIBUTED_TENANT
        vcluster = labels.get(VCLUSTER_LABEL) if self.vclusters else None
        if vcluster:
            virtual_ns = next((labels[k] for k in VCLUSTER_NAMESPACE_KEYS if labels.get(k)), None)
            if virtual_ns and f"{vcluster}/{virtual_ns}" in self.vclusters:
                return self.vclusters[f"{vcluster}/{virtual_ns}"]
            if vcluster in self.vclusters:
                return self.vclusters[vcluster]
        if cluster and f"{cluster}/{namespace}" in self.overrides:
            return self.overrides[f"{cluster}/{namespace}"]
        if namespace in self.overrides:
            return self.overrides[namespace]
        for key in self.label_keys:
            value = labels.get(key)
            if value:
                return value
        return namespace

    def resolve_slurm(self, job: str) -> str:
        account = self.slurm_jobs.get(job)
        if not account:
            return UNATTRIBUTED_TENANT
        return self.slurm_accounts.get(account, account)

    def tenant_table(self, pods: pl.DataFrame, slurm_jobs: list[str] | None = None) -> pl.DataFrame:
        """pods(pod_uid, namespace, labels JSON[, name][, cluster]) + Slurm job ids -> (pod_uid, tenant).

        Slurm jobs get rows keyed ``slurm:<job id>``.
        """
        uids = pods["pod_uid"].to_list()
        names = pods["name"].to_list() if "name" in pods.columns else [None] * len(uids)
        clusters = pods["cluster"].to_list() if "cluster" in pods.columns else [None] * len(uids)
        tenants = [
            self.resolve(ns, json.loads(labels) if labels else {}, uid=uid, name=name, cluster=cluster)
            for uid, ns, labels, name, cluster in zip(uids, pods["namespace"].to_list(), pods["labels"].to_list(),
                                                      names, clusters)
        ]
        for job in slurm_jobs or ():
            uids.append(SLURM_PREFIX + job)
            tenants.append(self.resolve_slurm(job))
        return pl.DataFrame({"pod_uid": uids, "tenant": tenants}, schema={"pod_uid": pl.String, "tenant": pl.String})

    @classmethod
    def load(cls, path: str | Path) -> TenancyRules:
        """Read rules from a TOML file (see the module docstring)."""
        try:
            data: dict[str, Any] = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"tenancy rules {path}: {exc}", hint="see docs/attribution.md for the format") from None
        keys = data.get("label_keys", ["team"])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ConfigError(f"tenancy rules {path}: label_keys must be a list of strings")
        tables = {}
        for table in ("overrides", "pods", "slurm_accounts", "slurm_jobs", "vclusters"):
            value = data.get(table, {})
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise ConfigError(f"tenancy rules {path}: [{table}] maps names to strings",
                                  hint='e.g. [overrides]\\nkube-system = "platform"')
            tables[table] = dict(value)
        if "slurm_jobs_csv" in data:
            tables["slurm_jobs"].update(_read_sacct(Path(path).parent / str(data["slurm_jobs_csv"])))
        return cls(version=str(data.get("version", Path(path).name)), label_keys=tuple(keys), **tables)


def _read_sacct(path: Path) -> dict[str, str]:
    """``JobID|Account`` lines (``sacct -X -n -P -o JobID,Account``) -> job id -> account."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"Slurm job list {path}: {exc}",
                          hint="export it with sacct -X -n -P -o JobID,Account") from None
    out = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        job, sep, account = line.partition("|")
        if not sep or not job.strip():
            raise ConfigError(f"Slurm job list {path} line {n}: expected JobID|Account, got {line!r}")
        out[job.strip()] = account.strip()
    return out
