"""The Helm chart under deploy/helm/gpuledger, rendered with Helm's own engine (helm-python-sdk: Helm v4's Go
SDK, no helm binary), and every rendered object checked against the Kubernetes API schema
(kubernetes-validate's bundled OpenAPI-derived JSON schemas).

Custom resources (Prometheus Operator, Strimzi) have no schema there: :func:`schema_errors` checks them
against their operators' own CRDs, vendored with their provenance (:mod:`tests.support.crds`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

from tests.support.crds import CustomResources

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "gpuledger"
RULES_FILE = ROOT / "deploy" / "prometheus" / "gpuledger.rules.yaml"
RELEASE = "gpuledger"
NAMESPACE = "gpuledger"
#: Kubernetes version the objects are validated for (the chart's kubeVersion floor).
KUBE_VERSION = "1.27"

#: The lake shape with the catalog and S3 credentials in an existing Secret (the way docs/operations.md shows).
LAKE = {"mode": "lake", "lake": {"existingSecret": "gpuledger-lake", "warehouse": "s3://gpuledger-lake/raw",
                                 "s3Endpoint": "http://minio.minio.svc:9000"}}


def render(values: dict[str, Any] | None = None, *, release: str = RELEASE) -> dict[str, dict[str, Any]]:
    """``{"Kind/name": object}`` of every object the chart renders with ``values``."""
    import helm_python as helm

    manifests = helm.Chart.load(CHART).render(values or {}, name=release, namespace=NAMESPACE)
    out: dict[str, dict[str, Any]] = {}
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                key = f"{doc['kind']}/{doc['metadata']['name']}"
                assert key not in out, f"{key} rendered twice ({path})"
                out[key] = doc
    return out


def schema_errors(obj: dict[str, Any]) -> str | None:
    """Why ``obj`` is not a valid object of the Kubernetes API (strict: no unknown fields), or None.

    A custom resource is checked against its vendored CRD (:mod:`tests.support.crds`), any other object
    against kubernetes-validate's schemas (an apiVersion/kind neither knows is an error)."""
    import kubernetes_validate

    if is_custom(obj):
        return "\n".join(custom_resources().errors(obj)) or None
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(map(str, exc.path))
        return f"{obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}"
    return None


def is_custom(obj: dict[str, Any]) -> bool:
    """A custom resource: its API group is a domain outside Kubernetes' own (``*.k8s.io``, or no dot: apps, batch)."""
    group = obj["apiVersion"].rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


@functools.cache
def custom_resources() -> CustomResources:
    """The vendored CRDs' validators (built once per test session)."""
    return CustomResources()


def rules_spec(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The rule groups of the chart's PrometheusRule: a plain Prometheus rules file's content."""
    (rule,) = [o for o in objects.values() if o["kind"] == "PrometheusRule"]
    return {"groups": rule["spec"]["groups"]}


def rules_file_text() -> str:
    """What deploy/prometheus/gpuledger.rules.yaml holds: the rules rendered with the default values."""
    header = ("# Generated from deploy/helm/gpuledger/templates/prometheusrule.yaml with the chart's default values\n"
              "# (release name gpuledger) by `python -m tests.support.chart`; do not edit by hand.\n"
              "# For a Prometheus without the operator: rule_files: [gpuledger.rules.yaml]\n")
    return header + yaml.safe_dump(rules_spec(render()), sort_keys=False, width=120)


if __name__ == "__main__":
    RULES_FILE.parent.mkdir(parents=True, exist_ok=True)
    RULES_FILE.write_text(rules_file_text())
    print(f"wrote {RULES_FILE.relative_to(ROOT)}")
