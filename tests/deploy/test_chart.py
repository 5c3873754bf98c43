"""deploy/helm/gpuledger: the chart renders and lints with Helm's own engine, every object it renders is a valid
Kubernetes object, every object it references exists, and its containers use only real flags and settings.

Rendered offline by helm-python-sdk (Helm v4's Go SDK, no helm binary, no cluster), validated by
kubernetes-validate (the API's JSON schemas, strict: an unknown field is an error); tests/support/chart.py.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuledger.analytics.budgets import load_budgets
from gpuledger.analytics.economics import load_cloud_rates, load_node_pools
from gpuledger.analytics.prices import load_price_book
from gpuledger.analytics.queues import load_queues
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.analytics.work_units import load_work_units
from gpuledger.api.app import create_app
from gpuledger.cli import build_parser
from gpuledger.cli.common import lake_config
from gpuledger.config import Settings
from gpuledger.store import Store
from tests.support.chart import CHART, LAKE, ROOT, custom_resources, is_custom, render, schema_errors

OPERATIONS = ROOT / "docs" / "operations.md"


def operations_values() -> dict[str, Any]:
    """The values.yaml of docs/operations.md's walk-through (step 2): the one a platform engineer starts from."""
    step = OPERATIONS.read_text(encoding="utf-8").split("### 2. ", 1)[1].split("### 3. ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", step, re.S)
    values: dict[str, Any] = yaml.safe_load(block)
    return values


def remote_agent_values() -> dict[str, Any]:
    """The values of a remote GPU cluster in docs/operations.md, "Several clusters": agents only."""
    section = OPERATIONS.read_text(encoding="utf-8").split("## Several clusters", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    values: dict[str, Any] = yaml.safe_load(block)
    return values


def lake_values() -> dict[str, Any]:
    """The values of docs/operations.md, "The lake shape"."""
    section = OPERATIONS.read_text(encoding="utf-8").split("## The lake shape", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    values: dict[str, Any] = yaml.safe_load(block)
    return values


#: A few value sets beside the defaults: each renders, validates and hangs together.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "operations-guide": operations_values(),
    "defaults": {},
    "remote-agent": remote_agent_values(),
    "lake": LAKE,
    "lake-guide": lake_values(),
    "lake-own-secret-ray": {"mode": "lake", "api": {"replicas": 3},
                            "lake": {"catalogUri": "postgresql+psycopg://gl:pw@pg.db.svc:5432/gl",
                                     "aws": {"accessKeyId": "AKIA", "secretAccessKey": "s3cr3t", "region": "eu-west-1"},
                                     "warehouse": "s3://lake/raw", "ingestReplicas": 4,
                                     "attribute": {"rayAddress": "ray://ray-head.ray.svc:10001"}}},
    "everything": {
        "api": {"ingress": {"enabled": True, "className": "nginx"}},
        "kafka": {"securityProtocol": "SASL_SSL", "saslMechanism": "SCRAM-SHA-512", "saslUsername": "gpuledger",
                  "saslPasswordSecret": {"name": "kafka-user", "key": "password"},
                  "caConfigMap": {"name": "kafka-ca", "key": "ca.crt"},
                  "strimziTopic": {"enabled": True, "partitions": 24}},
        "config": {"prices": '[[price]]\nmodel = "H100"\n', "tenancy": "[rules]\n", "regionId": "eu-west",
                   "cloudRates": "# rates\n", "nodePools": "# pools\n", "budgets": "# budgets\n",
                   "workUnits": "# units\n", "queues": "# queues\n", "idlePolicy": "platform", "focusVersion": "1.2"},
        "embedded": {"persistence": {"existingClaim": "gpuledger-data", "storageClass": "fast"}},
        "imagePullSecrets": [{"name": "regcred"}],
        "unitsImport": {"enabled": True, "kueue": True},
    },
    "older-strimzi": {"kafka": {"strimziTopic": {"enabled": True, "apiVersion": "kafka.strimzi.io/v1beta2"}},
                      "metrics": {"prometheusRule": {"budgets": {"enabled": False}}}},
    "minimal": {"agent": {"enabled": False}, "networkPolicy": {"enabled": False},
                "metrics": {"serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}},
                "grafana": {"dashboards": {"enabled": False}, "datasource": {"enabled": False}},
                "retention": {"enabled": False}, "monthClose": {"enabled": False}, "api": {"pdb": {"enabled": False}}},
}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def objects(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    return render(VALUE_SETS[request.param])


@pytest.fixture(scope="module")
def default() -> dict[str, dict[str, Any]]:
    return render()


def pod_specs(objects: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for key, o in objects.items():
        if o["kind"] in ("DaemonSet", "StatefulSet", "Deployment"):
            out[key] = o["spec"]["template"]["spec"]
        elif o["kind"] == "CronJob":
            out[key] = o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return out


def of_kind(objects: dict[str, dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects.values() if o["kind"] == kind]


# --- Helm's engine ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_the_chart_lints_clean(name: str) -> None:
    import helm_python as helm

    report = helm.lint(CHART, VALUE_SETS[name], strict=True)
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2 and "icon" not in m["error"]]
    assert not problems, problems


def test_values_schema_rejects_what_the_chart_cannot_run() -> None:
    import helm_python as helm

    chart = helm.Chart.load(CHART)
    for bad, where in [({"mode": "cloud"}, "/mode"), ({"kafka": {"bootstrap": "kafka"}}, "/kafka/bootstrap"),
                       ({"agent": {"metricsPort": 0}}, "/agent/metricsPort"), ({"replicas": 3}, "replicas"),
                       ({"config": {"chargePeriod": "week"}}, "/config/chargePeriod"),
                       ({"config": {"idlePolicy": "nobody"}}, "/config/idlePolicy"),
                       ({"config": {"focusVersion": "1.3"}}, "/config/focusVersion"),
                       ({"config": {"budget": "currency = 'USD'"}}, "budget"),
                       ({"unitsImport": {"hours": 0}}, "/unitsImport/hours"),
                       ({"unitsImport": {"prometheusUrl": "prometheus:9090"}}, "/unitsImport/prometheusUrl"),
                       ({"kafka": {"strimziTopic": {"apiVersion": "kafka.strimzi.io/v1beta1"}}},
                        "/kafka/strimziTopic/apiVersion"),
                       ({"metrics": {"prometheusRule": {"budgets": {"for": "1 hour"}}}},
                        "/metrics/prometheusRule/budgets/for")]:
        with pytest.raises(helm.HelmValuesError, match=where):
            chart.render(bad)
    defaults = json.loads((CHART / "values.schema.json").read_text())
    assert set(defaults["properties"]) >= {"mode", "cluster", "kafka", "agent", "api"}


def test_lake_without_its_catalog_warehouse_or_two_api_replicas_is_refused_with_what_to_set() -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError, match="lake.existingSecret .* or lake.catalogUri"):
        render({"mode": "lake"})
    with pytest.raises(helm.HelmRenderError, match="lake.warehouse"):
        render({"mode": "lake", "lake": {"existingSecret": "s"}})
    with pytest.raises(helm.HelmRenderError, match="api.replicas to 2"):
        render({**LAKE, "api": {"replicas": 1}})
    with pytest.raises(helm.HelmValuesError, match="allowUnsupported"):  # the placeholder switch is gone
        render({**LAKE, "lake": {**LAKE["lake"], "allowUnsupported": True}})


#: What mode=agent renders (release "gpuledger"): the agent DaemonSet and what it needs, nothing of the pipeline.
AGENT_ONLY = {"DaemonSet/gpuledger-agent", "ServiceAccount/gpuledger-agent", "ClusterRole/gpuledger-agent",
              "ClusterRoleBinding/gpuledger-agent", "ConfigMap/gpuledger-agent", "Service/gpuledger-agent",
              "ServiceMonitor/gpuledger-agent", "PrometheusRule/gpuledger", "NetworkPolicy/gpuledger-agent"}


def test_agent_mode_renders_the_agent_and_only_what_it_needs() -> None:
    values = remote_agent_values()
    assert values["mode"] == "agent"
    objects = render(values)
    assert set(objects) == AGENT_ONLY
    assert [g["name"] for g in objects["PrometheusRule/gpuledger"]["spec"]["groups"]] == ["gpuledger-agent"]
    (agent,) = objects["DaemonSet/gpuledger-agent"]["spec"]["template"]["spec"]["containers"]
    assert {"name": "GPULEDGER_CLUSTER", "value": values["cluster"]} in agent["env"]
    assert objects["ConfigMap/gpuledger-agent"]["data"]["GPULEDGER_KAFKA_BOOTSTRAP"] == values["kafka"]["bootstrap"]
    # every pipeline switch on: still nothing of ingest, attribution, the API, the jobs, dashboards or the topic
    everything = {**VALUE_SETS["everything"], **values, "kafka": {**VALUE_SETS["everything"]["kafka"], **values["kafka"]}}
    assert set(render(everything)) == AGENT_ONLY
    assert set(render({**values, "networkPolicy": {"enabled": False}, "metrics": {
        "serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}}})) \
        == AGENT_ONLY - {"NetworkPolicy/gpuledger-agent", "ServiceMonitor/gpuledger-agent", "PrometheusRule/gpuledger"}


def test_agent_mode_without_the_agent_is_refused() -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError, match="agent.enabled=true"):
        render({"mode": "agent", "agent": {"enabled": False}})


# --- the Kubernetes API ----------------------------------------------------------------------------------------


def test_every_object_is_valid_for_the_kubernetes_api(objects) -> None:
    """Built-in kinds against the API's schemas; custom resources against their operators' vendored CRDs."""
    errors = [e for o in objects.values() for e in [schema_errors(o)] if e]
    assert not errors, "\n".join(errors)


def test_the_value_sets_render_every_vendored_custom_resource_version() -> None:
    """The CRD check above is not vacuous: between them the value sets render each kind and version vendored."""
    rendered = {(o["apiVersion"], o["kind"]) for values in VALUE_SETS.values() for o in render(values).values()
                if is_custom(o)}
    assert rendered == set(custom_resources().versions)


def test_a_long_release_name_still_gives_valid_names() -> None:
    """Kubernetes' limits: 52 characters for a CronJob (its Jobs add 11) and a StatefulSet, 63 for the rest."""
    objects = render(release="a-rather-long-release-name-for-the-team-gpu-fleet-in-eu-west")
    for o in objects.values():
        name = o["metadata"]["name"]
        limit = 52 if o["kind"] in ("CronJob", "StatefulSet") else 63
        assert len(name) <= limit and name[-1] != "-", f"{o['kind']}/{name}: {len(name)} > {limit}"


def test_the_schema_check_catches_a_broken_object(default) -> None:
    sts = copy.deepcopy(default["StatefulSet/gpuledger"])
    sts["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []  # misspelt field
    assert "volumeMount" in (schema_errors(sts) or "")
    svc = copy.deepcopy(default["Service/gpuledger-api"])
    svc["spec"]["ports"][0]["port"] = "http"
    assert schema_errors(svc)


def test_the_schema_check_catches_a_broken_custom_resource(default) -> None:
    monitor = copy.deepcopy(default["PodMonitor/gpuledger-pipeline"])
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "30 seconds"  # not a Prometheus duration
    assert "interval" in (schema_errors(monitor) or "")
    monitor = copy.deepcopy(default["PodMonitor/gpuledger-pipeline"])
    monitor["spec"]["podMetricsEndpoint"] = monitor["spec"].pop("podMetricsEndpoints")  # misspelt field
    assert "podMetricsEndpoint" in (schema_errors(monitor) or "")
    rule = copy.deepcopy(default["PrometheusRule/gpuledger"])
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    assert "expr" in (schema_errors(rule) or "")
    topic = render({"kafka": {"strimziTopic": {"enabled": True}}})["KafkaTopic/gpuledger.samples.v1"]
    assert schema_errors(topic) is None
    assert "not served" in (schema_errors({**topic, "apiVersion": "kafka.strimzi.io/v1beta1"}) or "")
    assert "partitions" in (schema_errors({**topic, "spec": {**topic["spec"], "partitions": 0}}) or "")


# --- references ------------------------------------------------------------------------------------------------


def test_every_referenced_object_is_created_or_named_in_values(objects) -> None:
    created = {(o["kind"], o["metadata"]["name"]) for o in objects.values()}
    for sts in of_kind(objects, "StatefulSet"):  # the claims its volumeClaimTemplates make
        created |= {("PersistentVolumeClaim", f"{t['metadata']['name']}-{sts['metadata']['name']}-{i}")
                    for t in sts["spec"].get("volumeClaimTemplates", []) for i in range(sts["spec"]["replicas"])}
    named = json.dumps(next(v for k, v in VALUE_SETS.items() if render(v) == objects))
    missing = []

    def need(kind: str, name: str) -> None:
        if (kind, name) not in created and f'"{name}"' not in named:
            missing.append(f"{kind}/{name}")

    for spec in pod_specs(objects).values():
        need("ServiceAccount", spec.get("serviceAccountName", "default"))
        for v in spec.get("volumes", []):
            if "configMap" in v:
                need("ConfigMap", v["configMap"]["name"])
            if "persistentVolumeClaim" in v:
                need("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
            if "secret" in v:
                need("Secret", v["secret"]["secretName"])
        for c in spec["containers"]:
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    need("ConfigMap", src["configMapRef"]["name"])
                if "secretRef" in src:
                    need("Secret", src["secretRef"]["name"])
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    need("Secret", ref["name"])
    for binding in of_kind(objects, "ClusterRoleBinding"):
        need("ClusterRole", binding["roleRef"]["name"])
        for s in binding["subjects"]:
            need("ServiceAccount", s["name"])
    for ing in of_kind(objects, "Ingress"):
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                need("Service", p["backend"]["service"]["name"])
    assert not missing, f"referenced but neither created by the chart nor named in values: {missing}"


def test_services_monitors_and_policies_select_real_pods_and_ports(objects) -> None:
    pods = [(o["spec"]["template"]["metadata"]["labels"], o["spec"]["template"]["spec"]) for o in objects.values()
            if o["kind"] in ("DaemonSet", "StatefulSet", "Deployment")]

    def port_names(spec: dict[str, Any]) -> set[str]:
        return {p["name"] for c in spec["containers"] for p in c.get("ports", [])}

    def matching(selector: dict[str, str]) -> list[dict[str, Any]]:
        return [spec for labels, spec in pods if selector.items() <= labels.items()]

    for svc in of_kind(objects, "Service"):
        targets = matching(svc["spec"]["selector"])
        assert targets, f"Service {svc['metadata']['name']} selects no pod"
        for p in svc["spec"]["ports"]:
            assert any(p["targetPort"] in port_names(s) for s in targets), (svc["metadata"]["name"], p)
    for sm in of_kind(objects, "ServiceMonitor"):
        svcs = [s for s in of_kind(objects, "Service")
                if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert svcs and {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for s in svcs for p in s["spec"]["ports"]}
    for pm in of_kind(objects, "PodMonitor"):
        wanted = set(pm["spec"]["selector"]["matchExpressions"][0]["values"])
        targets = [s for labels, s in pods if labels.get("app.kubernetes.io/component") in wanted]
        assert targets
        found = set().union(*(port_names(s) for s in targets))
        assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= found | {"attrib-metrics", "ingest-metrics"}
        assert found & {e["port"] for e in pm["spec"]["podMetricsEndpoints"]}
    for pdb in of_kind(objects, "PodDisruptionBudget"):
        assert matching(pdb["spec"]["selector"]["matchLabels"]), "the API's PodDisruptionBudget selects no pod"


# --- flags and settings ----------------------------------------------------------------------------------------


def gpuledger_commands(container: dict[str, Any]) -> list[list[str]]:
    """The gpuledger command lines a container runs (its args, or each `gpuledger ...` in a shell script)."""
    cmd, args = container.get("command", []), container.get("args", [])
    if cmd[:2] == ["/bin/sh", "-c"] and args and len(args) == 1:
        return [shlex.split(part.strip())[1:] for part in args[0].split(";") if part.strip().startswith("gpuledger ")]
    return [args]


def test_args_and_settings_are_real(objects) -> None:
    known = {f"GPULEDGER_{n.upper()}" for n in Settings.model_fields}
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in of_kind(objects, "ConfigMap")}
    seen = set()
    for key, spec in pod_specs(objects).items():
        for c in spec["containers"]:
            env: dict[str, str] = {}
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    env.update(configmaps[src["configMapRef"]["name"]])
            names = list(env) + [e["name"] for e in c.get("env", [])]
            unknown = [n for n in names if n.startswith("GPULEDGER_") and n not in known]
            assert not unknown, f"{key}/{c['name']}: not settings in gpuledger/config.py: {unknown}"
            env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
            settings = Settings(**{k.removeprefix("GPULEDGER_").lower(): v for k, v in env.items()
                                   if k in known and "$(" not in v})  # the values validate
            for argv in gpuledger_commands(c):
                args = build_parser(settings).parse_args(argv)  # argparse exits on an unknown flag
                seen.add(args.command)
                port = getattr(args, "own_metrics_port", None) or getattr(args, "metrics_port", None)
                if port:
                    assert port in {p["containerPort"] for p in c.get("ports", [])}, (key, c["name"], argv)
    assert seen, "no gpuledger container"


def test_every_writable_path_is_a_volume(objects) -> None:
    """The root filesystem is read-only: what a stage writes (the DuckDB file, numba's kernel cache) is mounted."""
    for key, spec in pod_specs(objects).items():
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, (key, c["name"])
            mounts = [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")]
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            for name in ("GPULEDGER_DB_PATH", "NUMBA_CACHE_DIR", "GPULEDGER_SPOOL_DIR"):
                if env.get(name):
                    assert any(Path(env[name]).is_relative_to(m) for m in mounts), (key, c["name"], name)
            if c["name"] != "agent":
                assert env.get("NUMBA_CACHE_DIR"), f"{key}/{c['name']}: numba needs a writable cache directory"


def test_every_stage_runs_in_both_shapes() -> None:
    for values, extra in (({}, {"export"}), (LAKE, {"lake-maintain", "export"})):
        commands = {argv[0] for spec in pod_specs(render(values)).values() for c in spec["containers"]
                    for argv in gpuledger_commands(c)}
        assert commands == {"agent", "ingest", "attribute", "serve", "retention"} | extra, commands


# --- configuration files (issue 18's business files) -------------------------------------------------------------

#: Each file setting and gpuledger's own parser of it.
LOADERS: dict[str, Callable[[Path], Any]] = {
    "prices_path": load_price_book, "tenancy_path": TenancyRules.load, "cloud_rates_path": load_cloud_rates,
    "node_pools_path": load_node_pools, "budgets_path": load_budgets, "work_units_path": load_work_units,
    "queues_path": load_queues,
}


def container_env(objects: dict[str, dict[str, Any]], c: dict[str, Any]) -> dict[str, str]:
    """A container's environment: its ConfigMaps' data, then its own literal env."""
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in of_kind(objects, "ConfigMap")}
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update(configmaps[src["configMapRef"]["name"]])
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    return env


@pytest.mark.parametrize("shape", ["embedded", "lake"])
def test_every_configuration_file_reaches_every_stage_and_parses(shape: str, tmp_path: Path) -> None:
    """The operations guide's files, rendered: each stage but the agent finds each at its setting's path, on the
    chart's files ConfigMap, and gpuledger's parsers accept them (the API starts with all of them together)."""
    objects = render({**operations_values(), **(LAKE if shape == "lake" else {})})
    files = objects["ConfigMap/gpuledger-files"]["data"]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    loaded: dict[str, Any] = {}
    stages = 0
    for key, spec in pod_specs(objects).items():
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            if c["name"] == "agent":
                continue
            stages += 1
            env = container_env(objects, c)
            paths = {name: env[f"GPULEDGER_{name.upper()}"] for name in LOADERS if f"GPULEDGER_{name.upper()}" in env}
            assert set(paths) == set(LOADERS), f"{key}/{c['name']} misses {set(LOADERS) - set(paths)}"
            for setting, path in paths.items():
                (mount,) = [m for m in c["volumeMounts"] if Path(path).parent == Path(m["mountPath"])]
                assert mount["readOnly"] and volumes[mount["name"]]["configMap"]["name"] == "gpuledger-files"
                assert Path(path).name in files, (key, c["name"], path)
                loaded[setting] = LOADERS[setting](tmp_path / Path(path).name)
    assert stages >= 5 and set(loaded) == set(LOADERS)
    create_app(store=Store(":memory:"), prices=loaded["prices_path"], cloud_rates=loaded["cloud_rates_path"],
               node_pools=loaded["node_pools_path"], budgets=loaded["budgets_path"],
               work_units=loaded["work_units_path"], queues=loaded["queues_path"])  # currencies agree, and so on
    jobs = [o for o in of_kind(objects, "CronJob") if o["metadata"]["name"] == "gpuledger-units-import"]
    (job,) = jobs  # in the lake shape too: the import finds the lake in GPULEDGER_LAKE_* (no --db)
    (c,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    args = build_parser(Settings()).parse_args(c["args"])
    assert (args.command, args.action, args.kueue) == ("units", "import", True)
    assert args.prometheus_url == operations_values()["unitsImport"]["prometheusUrl"]


def test_without_files_nothing_is_mounted_and_the_defaults_apply(default) -> None:
    assert "ConfigMap/gpuledger-files" not in default
    env = default["ConfigMap/gpuledger-config"]["data"]
    assert not [k for k in env if k.endswith("_PATH") and k != "GPULEDGER_DB_PATH"]
    assert (env["GPULEDGER_IDLE_POLICY"], env["GPULEDGER_FOCUS_VERSION"]) == ("holder", "1.4")
    assert "CronJob/gpuledger-units-import" not in default  # it needs a Prometheus: on by values


# --- the agent (what deploy/agent had) -------------------------------------------------------------------------


def test_daemonset_has_what_the_agent_needs_on_a_gpu_node(default) -> None:
    spec = default["DaemonSet/gpuledger-agent"]["spec"]["template"]["spec"]
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
    binding = default["ClusterRoleBinding/gpuledger-agent"]
    assert binding["subjects"][0]["name"] == spec["serviceAccountName"]
    assert binding["subjects"][0]["namespace"] == "gpuledger"


# --- the embedded shape ----------------------------------------------------------------------------------------


def test_embedded_is_one_pod_whose_stages_share_one_rwo_volume(default) -> None:
    (sts,) = of_kind(default, "StatefulSet")
    assert sts["spec"]["replicas"] == 1
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    spec = sts["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["ingest", "attribution", "api"]
    for c in spec["containers"]:
        (data,) = [m for m in c["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
        db = next(e["value"] for e in c["env"] if e["name"] == "GPULEDGER_DB_PATH")
        assert Path(db).parent == Path(data["mountPath"])
    assert not of_kind(default, "Deployment")
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_cronjobs_mount_the_embedded_volume_on_its_node(default) -> None:
    (sts,) = of_kind(default, "StatefulSet")
    claim = f"data-{sts['metadata']['name']}-0"
    jobs = of_kind(default, "CronJob")
    assert {j["metadata"]["name"] for j in jobs} == {"gpuledger-retention", "gpuledger-month-close"}
    for job in jobs:
        spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert any(v.get("persistentVolumeClaim", {}).get("claimName") == claim for v in spec["volumes"])
        (term,) = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()


def test_lake_shape_is_stateless_and_complete(objects) -> None:
    deployments = of_kind(objects, "Deployment")
    if not deployments:
        # the embedded shape; mode=agent renders neither (test_agent_mode_renders_the_agent_and_only_what_it_needs)
        assert of_kind(objects, "StatefulSet") or set(objects) <= AGENT_ONLY
        return
    values = next(v for v in VALUE_SETS.values() if render(v) == objects)
    lake = values["lake"]
    assert not of_kind(objects, "StatefulSet") and not of_kind(objects, "PersistentVolumeClaim")
    by_name = {d["metadata"]["name"]: d for d in deployments}
    assert set(by_name) == {"gpuledger-ingest", "gpuledger-api"}
    assert by_name["gpuledger-ingest"]["spec"]["replicas"] == lake.get("ingestReplicas", 2)
    assert by_name["gpuledger-api"]["spec"]["replicas"] == values.get("api", {}).get("replicas", 2) >= 2
    secret = lake.get("existingSecret") or "gpuledger-lake"
    config = objects["ConfigMap/gpuledger-config"]["data"]
    assert config["GPULEDGER_LAKE_WAREHOUSE"] == lake["warehouse"]
    assert config.get("GPULEDGER_LAKE_S3_ENDPOINT") == lake.get("s3Endpoint")
    if not lake.get("existingSecret"):  # the chart's own Secret carries the catalog and the S3 credentials
        data = objects["Secret/gpuledger-lake"]["stringData"]
        assert data["GPULEDGER_LAKE_CATALOG_URI"] == lake["catalogUri"]
        assert (data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"], data["AWS_REGION"]) == \
            (lake["aws"]["accessKeyId"], lake["aws"]["secretAccessKey"], lake["aws"]["region"])
        assert lake["catalogUri"] not in json.dumps(config)  # never in the ConfigMap
    else:
        assert "Secret/gpuledger-lake" not in objects
    for key, spec in pod_specs(objects).items():
        if key.startswith("DaemonSet/"):
            continue
        assert not any("persistentVolumeClaim" in v for v in spec["volumes"]), key
        (c,) = spec["containers"]
        assert {"secretRef": {"name": secret}} in c["envFrom"], key  # GPULEDGER_LAKE_CATALOG_URI, AWS_*
    api = by_name["gpuledger-api"]["spec"]["template"]["spec"]
    (serve,) = api["containers"]
    cache = serve["args"][serve["args"].index("--cache-dir") + 1]
    (mount,) = [m for m in serve["volumeMounts"] if m["mountPath"] == cache]
    assert "emptyDir" in {v["name"]: v for v in api["volumes"]}[mount["name"]]  # disposable
    jobs = {o["metadata"]["name"]: o["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
            for o in of_kind(objects, "CronJob")}
    importing = {"gpuledger-units-import"} if values.get("unitsImport", {}).get("enabled") else set()
    assert set(jobs) == {"gpuledger-attribute", "gpuledger-retention", "gpuledger-lake-maintain",
                         "gpuledger-month-close"} | importing
    ray = lake.get("attribute", {}).get("rayAddress")
    assert jobs["gpuledger-attribute"] == (["attribute", "--ray", ray] if ray else ["attribute"])
    assert (jobs["gpuledger-retention"], jobs["gpuledger-lake-maintain"]) == (["retention"], ["lake-maintain"])
    close = next(o for o in of_kind(objects, "CronJob") if o["metadata"]["name"] == "gpuledger-month-close")
    (closer,) = close["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    argvs = gpuledger_commands(closer)
    assert ["export", "chargeback", "--month", "previous", "--final"] == argvs[0][:5], argvs
    assert [a[:2] for a in argvs] == [["export", "chargeback"], ["export", "chargeback"], ["export", "reconciliation"]]
    assert all("--db" not in a for a in argvs)  # the lake from GPULEDGER_LAKE_* (the Secret and the ConfigMap)
    rules = json.dumps(objects["PrometheusRule/gpuledger"]["spec"]) if "PrometheusRule/gpuledger" in objects else ""
    assert 'cronjob=\\"gpuledger-attribute\\"' in rules  # attribution staleness from its CronJob's last success


def test_lake_settings_reach_the_commands_as_the_cli_reads_them() -> None:
    """The lake's ConfigMap and Secret keys are settings the commands read: parsed as one worker parses them."""
    objects = render(VALUE_SETS["lake-own-secret-ray"])
    env = {**objects["ConfigMap/gpuledger-config"]["data"], **objects["Secret/gpuledger-lake"]["stringData"]}
    settings = Settings(**{k.removeprefix("GPULEDGER_").lower(): v for k, v in env.items()
                           if k.startswith("GPULEDGER_")})
    assert (settings.lake_catalog_uri, settings.lake_warehouse) == ("postgresql+psycopg://gl:pw@pg.db.svc:5432/gl",
                                                                    "s3://lake/raw")
    assert (settings.lake_snapshot_expire_days, settings.lake_snapshots_kept, settings.lake_compact_after_hours) == \
        (7.0, 10, 6.0)
    args = build_parser(settings).parse_args(["retention"])
    assert args.command == "retention" and settings.lake_catalog_uri  # retention, ingest, lake-maintain: the lake
    (closer,) = objects["CronJob/gpuledger-month-close"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert {"secretRef": {"name": "gpuledger-lake"}} in closer["envFrom"]
    final = build_parser(settings).parse_args(gpuledger_commands(closer)[0])
    assert final.command == "export" and final.final  # export --lake: the lake from these settings
    lake = lake_config(settings)
    assert lake is not None and (settings.lake_metadata_uri or lake.catalog_uri) == settings.lake_catalog_uri


# --- dashboards and rules: one source of truth -----------------------------------------------------------------


def test_dashboards_are_the_repository_dashboards_with_the_sidecar_label(default) -> None:
    maps = [o for o in of_kind(default, "ConfigMap") if o["metadata"]["labels"].get("grafana_dashboard") == "1"]
    shipped = {p.name: p.read_text() for p in (ROOT / "dashboards").glob("*.json")}
    assert {n for m in maps for n in m["data"]} == set(shipped)
    for m in maps:
        for name, text in m["data"].items():
            assert text == shipped[name].rstrip("\n"), f"{name}: run `python dashboards/build.py` (it writes the chart's copy)"
    (ds,) = [o for o in of_kind(default, "ConfigMap") if o["metadata"]["labels"].get("grafana_datasource") == "1"]
    text = ds["data"]["gpuledger-datasources.yaml"]
    assert "uid: gpuledger-api" in text and "yesoreyeram-infinity-datasource" in text
    assert "http://gpuledger-api.gpuledger.svc:8080" in text and "${GPULEDGER_API_TOKEN}" in text


def test_no_kustomize_copy_remains() -> None:
    """deploy/ is the chart, the image and the chart's rules rendered for a plain Prometheus (test_alerts checks
    that file is the rendering): no loose manifest beside them to drift."""
    assert {p.name for p in (ROOT / "deploy").iterdir()} == {"Dockerfile", "helm", "prometheus"}
    assert {p.name for p in (ROOT / "deploy" / "prometheus").iterdir()} == {"gpuledger.rules.yaml"}
