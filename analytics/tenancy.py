"""Tenancy rules: who a pod belongs to, resolved at attribution time.

Rules are data with a version, so a corrected mapping can be re-applied to
past periods (``gpuledger attribute --full``). Resolution order, first match
wins:

1. ``overrides``: namespace -> tenant, exact names (e.g. ``kube-system`` -> platform)
2. ``label_keys``: the first of these pod labels that is set (default ``team``)
3. the pod's namespace
4. no pod at all (a host process, an unknown PID): ``unattributed``
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


@dataclass(frozen=True)
class TenancyRules:
    version: str = "default-1"
    label_keys: tuple[str, ...] = ("team",)
    overrides: Mapping[str, str] = field(default_factory=dict)

    def resolve(self, namespace: str | None, labels: Mapping[str, str]) -> str:
        if not namespace:  # no pod, or a pod whose namespace is not known
            return UNATTRIBUTED_TENANT
        if namespace in self.overrides:
            return self.overrides[namespace]
        for key in self.label_keys:
            value = labels.get(key)
            if value:
                return value
        return namespace

    def tenant_table(self, pods: pl.DataFrame) -> pl.DataFrame:
        """pods(pod_uid, namespace, labels JSON) -> (pod_uid, tenant)."""
        uids = pods["pod_uid"].to_list()
        tenants = [
            self.resolve(ns, json.loads(labels) if labels else {})
            for ns, labels in zip(pods["namespace"].to_list(), pods["labels"].to_list())
        ]
        return pl.DataFrame({"pod_uid": uids, "tenant": tenants}, schema={"pod_uid": pl.String, "tenant": pl.String})

    @classmethod
    def load(cls, path: str | Path) -> TenancyRules:
        """Read rules from a TOML file: version, label_keys, [overrides]."""
        try:
            data: dict[str, Any] = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"tenancy rules {path}: {exc}", hint="see docs/attribution.md for the format") from None
        keys = data.get("label_keys", ["team"])
        overrides = data.get("overrides", {})
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ConfigError(f"tenancy rules {path}: label_keys must be a list of strings")
        if not isinstance(overrides, dict) or not all(isinstance(v, str) for v in overrides.values()):
            raise ConfigError(f"tenancy rules {path}: [overrides] maps namespace = \"tenant\"")
        return cls(version=str(data.get("version", Path(path).name)), label_keys=tuple(keys), overrides=overrides)
