"""A small hand-made ledger with known costs for the API tests (tests/api/).

``LEDGER``: February, ml uses an H100 for an hour; March, one hour each of an
H100 shared by ml and nobody, an A100 for cv and an L4 for a tenant named like
a spreadsheet formula (the expected costs are in the comment above it).
``row(...)`` is one ledger-table row; ``write_ledger`` appends rows to a Store.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import polars as pl

from gpuledger.analytics import kinds as K
from gpuledger.analytics.hourly import refresh_hourly
from gpuledger.store import Store
from gpuledger.wire import DEFAULT_CLUSTER

H100, A100, L4 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "NVIDIA L4"
HOUR_NS = 3_600 * 10**9
MARCH = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp()) * 10**9
FEB = int(datetime(2025, 2, 1, tzinfo=UTC).timestamp()) * 10**9
SCHEMA = {
    "agent_id": pl.String, "boot_id": pl.String, "seq": pl.UInt64, "node": pl.String,
    "interval_start_ns": pl.Int64, "interval_end_ns": pl.Int64, "gpu_uuid": pl.String, "gpu_index": pl.UInt16,
    "mig_index": pl.Int16, "model": pl.String, "profile": pl.String, "sharing": pl.String, "kind": pl.String,
    "tenant": pl.String, "namespace": pl.String, "pod": pl.String, "rule": pl.String, "gpu_seconds": pl.Float64,
    "energy_j": pl.Float64, "memory_gb_seconds": pl.Float64, "cluster": pl.String,
}
RULES = {K.BUSY: K.RULE_PROCESS_SAMPLES, K.ALLOCATED_IDLE: K.RULE_IDLE_SHARE, K.UNALLOCATED: K.RULE_UNALLOCATED}


def row(tenant: str, kind: str, seconds: float, *, seq: int = 0, gpu: int = 0, start_ns: int = MARCH,
        model: str = H100, rule: str | None = None, energy_j: float | None = None, node: str = "node-a",
        cluster: str = DEFAULT_CLUSTER) -> dict[str, Any]:
    return {"agent_id": node, "boot_id": "boot-1", "seq": seq, "node": node, "interval_start_ns": start_ns,
            "interval_end_ns": start_ns + HOUR_NS, "gpu_uuid": f"GPU-{node}-{gpu}", "gpu_index": gpu,
            "mig_index": -1, "model": model, "profile": None, "sharing": "exclusive", "kind": kind,
            "tenant": K.PLATFORM_TENANT if kind == K.UNALLOCATED else tenant,
            "namespace": None if kind == K.UNALLOCATED else tenant, "pod": None, "rule": rule or RULES[kind],
            "gpu_seconds": float(seconds), "energy_j": energy_j, "memory_gb_seconds": None,
            "cluster": cluster}


#: February: ml uses an H100 for an hour (2.99). March, one hour each:
#: H100 (2.99) ml busy 30 min with 1 kWh, ml idle 20 min, 10 min unallocated -> ml 2.49, platform 0.50;
#: A100 (1.29) cv busy, 1/4 of it from process samples; L4 (0.69) busy for a tenant named like a formula.
LEDGER = [
    row("ml", K.BUSY, 3600, seq=0, start_ns=FEB),
    row("ml", K.BUSY, 1800, seq=1, energy_j=3.6e6), row("ml", K.ALLOCATED_IDLE, 1200, seq=1),
    row("", K.UNALLOCATED, 600, seq=1),
    row("cv", K.BUSY, 900, seq=1, gpu=1, model=A100), row("cv", K.BUSY, 2700, seq=1, gpu=1, model=A100,
                                                          rule=K.RULE_EQUAL_PROCESSES),
    row("=cmd|' /C calc'!A0", K.BUSY, 3600, seq=0, model=L4, node="node-b"),
]


def write_ledger(store: Store, rows: list[dict[str, Any]]) -> None:
    """Append ledger rows and roll their hours up, as the attribution job does (exports read the rollups)."""
    store.append("ledger", pl.DataFrame(rows, schema=SCHEMA))
    refresh_hourly(store, [r["interval_start_ns"] for r in rows])


book_ledger = write_ledger
