"""The custom resources the chart renders, checked against their operators' own CRD schemas.

kubernetes-validate knows the built-in kinds only. The CRDs of the operators the chart writes objects for
(Prometheus Operator: ServiceMonitor, PodMonitor, PrometheusRule; Strimzi: KafkaTopic) are vendored verbatim
under tests/deploy/fixtures/crds/, each listed with its repository, tag, commit, path and git blob SHA-1 in
SOURCES.toml there (tests/deploy/test_crds.py checks the hashes, so the files stay upstream's bytes).

A CRD's ``openAPIV3Schema`` is a structural OpenAPI schema with Kubernetes extensions; :func:`json_schema`
turns one version's into JSON Schema the way the API server applies it with strict field validation (the
default of ``kubectl apply`` since 1.27):

- an object schema with ``properties`` and no ``x-kubernetes-preserve-unknown-fields`` or
  ``additionalProperties`` admits no other field (the server would reject it as unknown);
- ``x-kubernetes-int-or-string`` admits an integer or a string; ``nullable`` admits null;
  ``x-kubernetes-list-type: set`` needs unique items;
- a pattern's case-insensitive ``(?i)`` (Go's syntax) is spelt out (:func:`ecma_pattern`);
- ``metadata`` is checked as ObjectMeta (name a DNS-1123 subdomain, label keys and values as the API server
  checks them, no unknown fields), which a CRD's schema leaves to the server.

Not checked (the server does them): ``x-kubernetes-list-type: map`` key uniqueness, CEL rules
(``x-kubernetes-validations``; none in the vendored versions), integer formats (int32/int64 ranges).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CRDS = Path(__file__).resolve().parents[1] / "deploy" / "fixtures" / "crds"

_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A label key: an optional DNS-subdomain prefix and "/", then a name of at most 63 characters.
_LABEL_KEY = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
              r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
#: ObjectMeta as a client may write it (the server sets uid, resourceVersion, creationTimestamp, ...).
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": _DNS_SUBDOMAIN},
        "generateName": {"type": "string"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL},
        "labels": {"type": "object", "propertyNames": {"maxLength": 316, "pattern": _LABEL_KEY},
                   "additionalProperties": {"type": "string", "maxLength": 63, "pattern": _LABEL_VALUE}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["name"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Served:
    """One served version of a vendored CRD."""

    api_version: str  # group/version
    kind: str
    schema: dict[str, Any]  # the version's openAPIV3Schema, as upstream wrote it
    deprecated: bool
    source: str  # the vendored file's name


def sources() -> dict[str, dict[str, str]]:
    """File name -> its provenance (repository, tag, commit, path, blob SHA-1, license) from SOURCES.toml."""
    with (CRDS / "SOURCES.toml").open("rb") as f:
        return dict(tomllib.load(f)["file"])


def git_blob_sha1(data: bytes) -> str:
    """The SHA-1 git gives a file's content (``git hash-object``), to match the commit it came from."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def served() -> dict[tuple[str, str], Served]:
    """(apiVersion, kind) -> its schema, for every served version of every vendored CRD.

    A version vendored twice (one Strimzi release per API version) is taken from the file SOURCES.toml
    names for it (``versions``)."""
    out: dict[tuple[str, str], Served] = {}
    for name, meta in sources().items():
        crd = yaml.safe_load((CRDS / name).read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            if not v["served"] or v["name"] not in meta["versions"]:
                continue
            key = (f"{group}/{v['name']}", kind)
            assert key not in out, f"{key} vendored twice: name the file for it in SOURCES.toml's versions"
            out[key] = Served(key[0], kind, v["schema"]["openAPIV3Schema"], bool(v.get("deprecated")), name)
    return out


def json_schema(openapi: dict[str, Any], *, top: bool = True) -> dict[str, Any]:
    """The JSON Schema (draft 7) that checks an object as the API server would (module doc)."""
    out: dict[str, Any] = {}
    for key, value in openapi.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "default", "description"):
            continue
        if key == "properties":
            out[key] = {k: json_schema(v, top=False) for k, v in value.items()}
        elif key == "items" and isinstance(value, dict):
            out[key] = json_schema(value, top=False)
        elif key == "additionalProperties" and isinstance(value, dict):
            out[key] = json_schema(value, top=False)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [json_schema(v, top=False) for v in value]
        elif key == "not":
            out[key] = json_schema(value, top=False)
        elif key == "pattern":
            out[key] = ecma_pattern(value)
        else:
            out[key] = value
    if openapi.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if openapi.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if openapi.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if ("properties" in out and "additionalProperties" not in out
            and not openapi.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if top:
        out["properties"] = {**out.get("properties", {}), "metadata": OBJECT_META}
        out["required"] = sorted({*out.get("required", []), "apiVersion", "kind", "metadata"})
    return out


def ecma_pattern(pattern: str) -> str:
    """A CRD's pattern (Go's RE2 syntax) in JSON Schema's (ECMA 262), which has no inline ``(?i)`` flag:
    ``^(?i)(abort|warn)?$`` becomes ``^([aA][bB][oO][rR][tT]|[wW][aA][rR][nN])?$``."""
    if "(?i)" not in pattern:
        return pattern
    rest = pattern.replace("(?i)", "", 1)
    if "(?" in rest or "[" in rest or "\\" in rest:
        raise ValueError(f"cannot translate the case-insensitive pattern {pattern!r}: extend ecma_pattern")
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isascii() and c.isalpha() else c for c in rest)


class CustomResources:
    """Validators of every vendored (apiVersion, kind), built once."""

    def __init__(self) -> None:
        import jsonschema_rs

        self.versions = served()
        self._validators = {
            key: jsonschema_rs.Draft7Validator(json_schema(s.schema))
            for key, s in self.versions.items()
        }

    def errors(self, obj: dict[str, Any]) -> list[str]:
        """Why ``obj`` would not be accepted by a cluster running the vendored CRDs (empty: it would)."""
        key = (obj.get("apiVersion", ""), obj.get("kind", ""))
        name = f"{key[1]}/{obj.get('metadata', {}).get('name')}"
        validator = self._validators.get(key)
        if validator is None:
            known = sorted(f"{v} {k}" for v, k in self._validators)
            return [f"{name}: {key[0]} {key[1]} is not served by any vendored CRD ({', '.join(known)})"]
        return [f"{name}: /{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(obj)]
