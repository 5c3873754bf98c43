"""Ledger rows for the chargeback tests, parsed FOCUS files, and random ledgers that sum to capacity.

``row(tenant, kind, seconds, ...)`` is one row of the ledger table (one GPU-hour
interval in March 2025 unless told otherwise); ``ledger(rows)`` is them as a
LazyFrame; ``parse``/``billed`` read a chargeback CSV; ``random_ledgers()`` is the
hypothesis strategy of (rows, capacity ns per model). Shared by the chargeback,
golden-file and closing tests (tests/analytics/).
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import polars as pl
from hypothesis import strategies as st

from gpuledger.analytics import kinds as K
from gpuledger.analytics.hourly import refresh_hourly
from gpuledger.store import Store
from gpuledger.timeutil import to_ns
from gpuledger.wire import DEFAULT_CLUSTER

H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"
HOUR_NS = 3_600 * 10**9
T0 = to_ns(datetime(2025, 3, 1, tzinfo=UTC))
MARCH_NS = 31 * 24 * HOUR_NS
SCHEMA = {
    "agent_id": pl.String, "boot_id": pl.String, "seq": pl.UInt64, "node": pl.String,
    "interval_start_ns": pl.Int64, "interval_end_ns": pl.Int64, "gpu_uuid": pl.String, "gpu_index": pl.UInt16,
    "mig_index": pl.Int16, "model": pl.String, "profile": pl.String, "sharing": pl.String, "kind": pl.String,
    "tenant": pl.String, "namespace": pl.String, "pod": pl.String, "rule": pl.String, "gpu_seconds": pl.Float64,
    "energy_j": pl.Float64, "memory_gb_seconds": pl.Float64, "cluster": pl.String,
}
RULES = {K.BUSY: K.RULE_PROCESS_SAMPLES, K.ALLOCATED_IDLE: K.RULE_IDLE_SHARE, K.UNMEASURED: K.RULE_MIG_UNMEASURED,
         K.UNALLOCATED: K.RULE_UNALLOCATED}


def row(tenant: str, kind: str, seconds: float, *, seq: int = 0, gpu: int = 0, start_ns: int = T0,
        dt_ns: int = HOUR_NS, model: str = H100, profile: str | None = None, mig: int = -1,
        rule: str | None = None, energy_j: float | None = None, sharing: str = "exclusive",
        cluster: str = DEFAULT_CLUSTER) -> dict[str, Any]:
    """One ledger row (the ledger table's columns)."""
    return {"agent_id": "agent-a", "boot_id": "boot-1", "seq": seq, "node": "node-a",
            "interval_start_ns": start_ns, "interval_end_ns": start_ns + dt_ns, "gpu_uuid": f"GPU-{gpu}",
            "gpu_index": gpu, "mig_index": mig, "model": model, "profile": profile, "sharing": sharing,
            "kind": kind, "tenant": K.PLATFORM_TENANT if kind == K.UNALLOCATED else tenant,
            "namespace": None if kind == K.UNALLOCATED else tenant, "pod": None, "rule": rule or RULES[kind],
            "gpu_seconds": float(seconds), "energy_j": energy_j, "memory_gb_seconds": None,
            "cluster": cluster}


def ledger(rows: list[dict[str, Any]]) -> pl.LazyFrame:
    return pl.DataFrame(rows, schema=SCHEMA).lazy()


def book(store: Store, rows: list[dict[str, Any]]) -> None:
    """Append ledger rows and roll their hours up, as the attribution job does (exports read the rollups)."""
    store.append("ledger", pl.DataFrame(rows, schema=SCHEMA))
    refresh_hourly(store, [r["interval_start_ns"] for r in rows])


def parse(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def billed(text: str) -> Decimal:
    return sum((Decimal(r["BilledCost"]) for r in parse(text)), Decimal(0))


MODELS = [H100, A100, "NVIDIA L4", "Tesla T4", "Mystery GPU"]
TENANTS = ["ml", "cv", "nlp", "=evil", "équipe"]
KINDS = [K.BUSY, K.ALLOCATED_IDLE, K.UNMEASURED, K.UNALLOCATED]


@st.composite
def random_ledgers(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Random GPUs and intervals, each split among tenants and kinds so rows sum to capacity."""
    models = draw(st.lists(st.sampled_from(MODELS), min_size=1, max_size=4))
    rows: list[dict[str, Any]] = []
    capacity_ns: dict[str, int] = {}
    for seq in range(draw(st.integers(1, 6))):
        start = T0 + draw(st.integers(0, MARCH_NS - 1))
        dt = draw(st.integers(1, 6 * HOUR_NS))
        for gpu, model in enumerate(models):
            parts = draw(st.lists(st.tuples(st.sampled_from(TENANTS), st.sampled_from(KINDS),
                                            st.integers(1, 1000), st.booleans()), min_size=1, max_size=5))
            weight = sum(p[2] for p in parts)
            for tenant, kind, w, measured in parts:
                rows.append(row(tenant, kind, dt / 1e9 * w / weight, seq=seq, gpu=gpu, start_ns=start, dt_ns=dt,
                                model=model, energy_j=float(w) if measured else None))
            capacity_ns[model] = capacity_ns.get(model, 0) + dt
    return rows, capacity_ns
