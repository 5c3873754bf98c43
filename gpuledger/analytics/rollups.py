"""Per-tenant lines for a period: GPU-seconds by kind, energy, memory, coverage.

``tenant_lines`` is what a showback row says about one tenant over one
period, under an idle policy (``gpuledger/analytics/policy.py``):

- ``busy_s``, ``allocated_idle_s``, ``unmeasured_s``, ``unallocated_s``: GPU-seconds by kind
  (``unallocated_s`` is ``platform``'s, or a share of it under ``share_unallocated``);
- ``total_s``: their sum -- what the tenant is charged for;
- ``energy_j``: joules by the same split (null when no energy was known);
- ``memory_gb_h``: GPU memory held by the tenant's processes, GB-hours (1 GB = 1e9 B);
- ``coverage``: the share of ``busy_s`` attributed from direct per-process
  evidence (rule ``process_samples``); null when the tenant had no busy time.
  The rest came from fallbacks (equal split, allocation share) -- see ``explain``.
"""

from __future__ import annotations

import polars as pl

from gpuledger.analytics import kinds as K
from gpuledger.analytics.exact import exact, measure
from gpuledger.analytics.policy import SCOPE, Policy, apply_idle_policy


def in_period(ledger: pl.LazyFrame, start_ns: int | None, end_ns: int | None) -> pl.LazyFrame:
    """Ledger rows whose interval starts in [start_ns, end_ns) (ns since the epoch; None = open)."""
    if start_ns is not None:
        ledger = ledger.filter(pl.col("interval_start_ns") >= start_ns)
    if end_ns is not None:
        ledger = ledger.filter(pl.col("interval_start_ns") < end_ns)
    return ledger


def tenant_lines(ledger: pl.LazyFrame, policy: Policy = "holder", scope: tuple[str, ...] = SCOPE,
                 start_ns: int | None = None, end_ns: int | None = None) -> pl.LazyFrame:
    """One row per tenant (see the module docstring), sorted by tenant."""
    rows = in_period(ledger, start_ns, end_ns)
    lines = apply_idle_policy(rows, policy, scope)
    # Exact integer sums (analytics/exact.py), then the floats: a tenant's line does not depend on row order.
    by_kind = lines.group_by("tenant").agg(
        *[pl.col("gpu_ps").filter(pl.col("kind") == k).sum().alias(f"{k}_s") for k in K.KINDS],
        total_s=pl.col("gpu_ps").sum(),
        energy_nj=pl.when(pl.col("energy_nj").is_not_null().any()).then(pl.col("energy_nj").sum()),
    ).with_columns(*(measure("gpu_seconds", c).alias(c) for c in [*(f"{k}_s" for k in K.KINDS), "total_s"]),
                   measure("energy_j")).drop("energy_nj")
    ps = exact("gpu_seconds").cast(pl.Int128)
    memory = exact("memory_gb_seconds").cast(pl.Int128)
    busy = rows.filter(pl.col("kind") == K.BUSY).group_by("tenant").agg(
        direct_s=ps.filter(pl.col("rule").is_in(list(K.DIRECT_RULES))).sum(),
        busy_all_s=ps.sum(),
        memory_byte_seconds=pl.when(memory.is_not_null().any()).then(memory.sum()),
    ).with_columns(memory_gb_h=measure("memory_gb_seconds") / 3600.0)
    return (
        by_kind.join(busy, on="tenant", how="left")
        .with_columns(coverage=pl.when(pl.col("busy_all_s") > 0)
                      .then(pl.col("direct_s").cast(pl.Float64) / pl.col("busy_all_s").cast(pl.Float64)))
        .drop("direct_s", "busy_all_s", "memory_byte_seconds")
        .sort("tenant")
    )
