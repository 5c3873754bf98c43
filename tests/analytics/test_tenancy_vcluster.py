"""Tenants in virtual clusters: pods vCluster synced into the host, resolved by virtual cluster and namespace.

The fixture is a kubelet ``/pods`` answer as a host node sees it: pods synced
by two virtual clusters (``team-a``, one tenant; ``shared``, with virtual
namespaces ``ml`` and ``cv``), their host names translated
(``<name>-x-<virtual namespace>-x-<vcluster>``), their virtual identity in the
annotations ``vcluster.loft.sh/object-name``/``object-namespace`` and the
labels ``vcluster.loft.sh/managed-by``/``namespace`` (loft-sh/vcluster
``pkg/util/translate``); one synced pod carries only the labels, and the
virtual cluster's own control-plane pod is a plain host pod.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from gpuledger.agent.kubelet import parse_pod_list
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.errors import ConfigError

FIXTURE = Path(__file__).parent / "fixtures" / "vcluster-synced-pods.json"


def pods_frame() -> pl.DataFrame:
    """The pods table the agent's messages give: uid, host namespace, name, labels JSON."""
    index = parse_pod_list(json.loads(FIXTURE.read_text()))
    pods = sorted(index.by_uid.values(), key=lambda p: p.uid)
    return pl.DataFrame({"pod_uid": [p.uid for p in pods], "namespace": [p.namespace for p in pods],
                         "name": [p.name for p in pods], "labels": [json.dumps(dict(p.labels)) for p in pods]})


def tenants(rules: TenancyRules) -> dict[str, str]:
    frame = pods_frame()
    by_uid = dict(zip(frame["pod_uid"], frame["name"], strict=True))
    return {by_uid[u]: t for u, t in rules.tenant_table(frame).iter_rows()}


def test_the_agent_keeps_the_virtual_identity_of_a_synced_pod() -> None:
    index = parse_pod_list(json.loads(FIXTURE.read_text()))
    trainer = dict(index.by_name[("vcluster-team-a", "trainer-x-default-x-team-a")].labels)
    assert (trainer["vcluster.loft.sh/object-name"], trainer["vcluster.loft.sh/object-namespace"]) == (
        "trainer", "default")
    assert "vcluster.loft.sh/object-uid" not in trainer  # only the two identity annotations are kept
    llm = dict(index.by_name[("vc-shared", "llm-x-ml-x-shared")].labels)
    assert "kubectl.kubernetes.io/restartedAt" not in llm and llm["team"] == "nlp"


def test_tenancy_rules_key_on_the_virtual_cluster_and_virtual_namespace(tmp_path: Path) -> None:
    # Without vCluster rules, every synced pod lands on its host namespace (or its team label).
    assert tenants(TenancyRules()) == {
        "trainer-x-default-x-team-a": "vcluster-team-a", "llm-x-ml-x-shared": "nlp", "det-x-cv-x-shared": "vision",
        "notebook-x-ml-x-shared": "vc-shared", "shared-0": "vc-shared"}
    path = tmp_path / "rules.toml"
    path.write_text('version = "vc-1"\n[overrides]\nvc-shared = "platform"\n'
                    '[vclusters]\nteam-a = "team-a"\nshared = "shared-users"\n"shared/ml" = "ml"\n')
    rules = TenancyRules.load(path)
    assert tenants(rules) == {
        "trainer-x-default-x-team-a": "team-a",  # the whole virtual cluster is one tenant
        "llm-x-ml-x-shared": "ml",  # virtual namespace ml: its own tenant, before the team label
        "notebook-x-ml-x-shared": "ml",  # only the labels say where it came from: still ml
        "det-x-cv-x-shared": "shared-users",  # cv is not mapped: the virtual cluster's tenant
        "shared-0": "platform",  # the virtual cluster's own pod is a host pod: the namespace override
    }
    path.write_text('[vclusters]\nteam-a = 7\n')
    with pytest.raises(ConfigError, match=r"\[vclusters\] maps names to strings"):
        TenancyRules.load(path)
