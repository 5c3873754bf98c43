"""The vendored CRDs the chart's custom resources are checked against (tests/support/crds.py): upstream's bytes,
with their provenance, and a conversion to JSON Schema that rejects what the API server would."""

from __future__ import annotations

import yaml

from tests.support.crds import CRDS, CustomResources, ecma_pattern, git_blob_sha1, json_schema, served, sources


def test_every_vendored_crd_is_upstreams_file_at_the_named_commit() -> None:
    listed = sources()
    assert set(listed) == {p.name for p in CRDS.glob("*.yaml")}, "list every vendored CRD in SOURCES.toml"
    for name, meta in listed.items():
        assert git_blob_sha1((CRDS / name).read_bytes()) == meta["blob"], f"{name} differs from {meta['path']}"
        assert len(meta["commit"]) == 40 and meta["repository"].startswith("https://github.com/")
        assert meta["license"] == "Apache-2.0" and meta["tag"]
        versions = {v["name"] for v in yaml.safe_load((CRDS / name).read_text())["spec"]["versions"] if v["served"]}
        assert set(meta["versions"]) <= versions, f"{name} serves {versions}"


def test_strimzi_1_serves_kafkatopic_v1_only_and_v1beta2_is_deprecated() -> None:
    """Why the chart renders kafka.strimzi.io/v1 by default, and v1beta2 only for an operator before 0.49."""
    crd = yaml.safe_load((CRDS / "strimzi-1.2.0_043-Crd-kafkatopic.yaml").read_text())
    assert [v["name"] for v in crd["spec"]["versions"] if v["served"]] == ["v1"]
    versions = served()
    assert not versions[("kafka.strimzi.io/v1", "KafkaTopic")].deprecated
    assert versions[("kafka.strimzi.io/v1beta2", "KafkaTopic")].deprecated


def test_the_conversion_is_as_strict_as_the_api_server() -> None:
    schema = {"type": "object", "properties": {
        "port": {"x-kubernetes-int-or-string": True},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {"type": "string"}}},
        "mode": {"type": "string", "pattern": "^(?i)(abort|warn)?$"},
        "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
        "note": {"type": "string", "nullable": True}}}
    out = json_schema(schema, top=False)
    assert out["additionalProperties"] is False  # an unknown field is an error (strict field validation)
    assert "additionalProperties" not in out["properties"]["free"]  # unless the schema keeps unknown fields
    assert out["properties"]["port"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert out["properties"]["tags"]["uniqueItems"] is True
    assert out["properties"]["note"]["type"] == ["string", "null"]
    assert out["properties"]["mode"]["pattern"] == "^([aA][bB][oO][rR][tT]|[wW][aA][rR][nN])?$"
    assert ecma_pattern("^[a-z]+$") == "^[a-z]+$"


def test_metadata_is_checked_as_object_meta() -> None:
    checks = CustomResources()
    good = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "gpuledger", "labels": {"app.kubernetes.io/name": "gpuledger"}},
            "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up == 0"}]}]}}
    assert checks.errors(good) == []
    for meta, what in [({"name": "Gpuledger_Rules"}, "/metadata/name"),
                       ({"name": "ok", "labels": {"team": "x" * 64}}, "/metadata/labels/team"),
                       ({"name": "ok", "uid": "set-by-the-server"}, "uid"),
                       ({"labels": {}}, "name")]:
        errors = checks.errors({**good, "metadata": meta})
        assert errors and what in " ".join(errors), (meta, errors)
