"""deploy/agent: the DaemonSet manifests parse, hang together, and use only real flags and settings.

``kubectl kustomize`` renders them (offline; no cluster needed): without
kubectl that test skips, except under CI=true where it fails; the structural
checks run on the parsed YAML either way.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from gpuledger.cli import build_parser
from gpuledger.config import Settings
from tests.support.system import need_binary

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "deploy" / "agent"


def docs() -> dict[str, dict]:
    out = {}
    for path in sorted(AGENT.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    return docs()


def pod_spec(manifests: dict[str, dict]) -> dict:
    return manifests["DaemonSet/gpuledger-agent"]["spec"]["template"]["spec"]


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((AGENT / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in AGENT.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.external
def test_kubectl_renders_the_kustomization() -> None:
    kubectl = need_binary("kubectl", hint="only this test needs it; the structural checks below run without it")
    out = subprocess.run([kubectl, "kustomize", str(AGENT)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out.stdout) if d)
    assert kinds == sorted(["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap",
                            "DaemonSet", "Service", "ServiceMonitor"])
    assert all(d["metadata"].get("namespace", "gpuledger") == "gpuledger" for d in yaml.safe_load_all(out.stdout) if d)


def test_daemonset_has_what_the_agent_needs_on_a_gpu_node(manifests) -> None:
    spec = pod_spec(manifests)
    assert spec["hostPID"] is True
    assert spec["runtimeClassName"] == "nvidia"
    assert any(t.get("key") == "nvidia.com/gpu" and t["operator"] == "Exists" for t in spec["tolerations"])
    (c,) = spec["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["GPULEDGER_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    proc = mounts[env["GPULEDGER_PROC_ROOT"]["value"]]
    assert proc["readOnly"] is True and volumes[proc["name"]]["hostPath"]["path"] == "/proc"
    sock = Path(env["GPULEDGER_POD_RESOURCES_SOCKET"]["value"])
    pr = mounts[str(sock.parent)]
    assert pr["readOnly"] is True and volumes[pr["name"]]["hostPath"]["path"] == "/var/lib/kubelet/pod-resources"
    spool = mounts[env["GPULEDGER_SPOOL_DIR"]["value"]]
    assert volumes[spool["name"]]["hostPath"]["type"] == "DirectoryOrCreate"  # survives pod restarts
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_args_and_settings_are_real(manifests) -> None:
    (c,) = pod_spec(manifests)["containers"]
    args = build_parser(Settings()).parse_args(c["args"])  # argparse exits on an unknown flag
    assert args.command == "agent" and args.backend == "nvml"
    port = next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
    assert args.metrics_port == port
    names = [e["name"] for e in c["env"]] + list(manifests["ConfigMap/gpuledger-agent"]["data"])
    known = {f"GPULEDGER_{n.upper()}" for n in Settings.model_fields}
    unknown = [n for n in names if n.startswith("GPULEDGER_") and n not in known]
    assert not unknown, f"not settings in gpuledger/config.py: {unknown}"
    Settings(**{k.removeprefix("GPULEDGER_").lower(): v
                for k, v in manifests["ConfigMap/gpuledger-agent"]["data"].items()})  # values validate


def test_service_and_servicemonitor_select_the_agent(manifests) -> None:
    pod_labels = manifests["DaemonSet/gpuledger-agent"]["spec"]["template"]["metadata"]["labels"]
    svc = manifests["Service/gpuledger-agent"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    sm = manifests["ServiceMonitor/gpuledger-agent"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    binding = manifests["ClusterRoleBinding/gpuledger-agent"]
    assert binding["subjects"][0]["name"] == pod_spec(manifests)["serviceAccountName"]


def test_dockerfile_runs_the_cli() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    entry = next(line for line in text.splitlines() if line.startswith("ENTRYPOINT"))
    cmd = next(line for line in text.splitlines() if line.startswith("CMD"))
    assert '"gpuledger"' in entry
    build_parser(Settings()).parse_args(yaml.safe_load(cmd.removeprefix("CMD").strip()))
    assert "COPY gpuledger gpuledger" in text  # the one package tree
