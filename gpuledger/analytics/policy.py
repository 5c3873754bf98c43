"""Idle policy: who pays for idle capacity. Applied to ledger rows at reporting time.

The ledger itself is policy-free: it books every GPU-second once, as ``busy``
(the process's tenant), ``allocated_idle`` (the holder), ``unmeasured`` (the
holder) or ``unallocated`` (``platform``). A policy only moves idle lines
between tenants inside a *scope* (default: cluster and GPU model -- so a
moved GPU-second keeps its price and its cluster), never changes their sum:

``holder`` (default)
    allocated idle stays with the holder; unallocated stays on ``platform``.
``share_unallocated``
    like OpenCost's ``shareIdle``: each scope's unallocated GPU-seconds (and
    joules) are spread over the tenants in proportion to what they were
    charged in that scope (busy + allocated idle + unmeasured). Rule
    ``shared_unallocated``. A scope where no tenant was charged keeps its
    unallocated time on ``platform``.
``platform``
    tenants pay only for what ran (busy, and unmeasured held time, whose busy
    share is unknown); allocated idle moves to ``platform`` (rule
    ``idle_kept_on_platform``).

Worked example (one H100 hour, scope = model): vision busy 0.60 h, nlp busy
0.20 h, vision and nlp allocated idle 0.05 h each, unallocated 0.10 h.
``share_unallocated`` gives vision 0.10 x 0.65/0.90 = 0.0722 h and nlp
0.10 x 0.25/0.90 = 0.0278 h more; ``platform`` moves the 2 x 0.05 h to
platform (0.20 h in all). Each column still sums to 1.00 h.
"""

from __future__ import annotations

from typing import Literal

import polars as pl

from gpuledger.analytics import kinds as K
from gpuledger.analytics.exact import exact, measure

Policy = Literal["holder", "share_unallocated", "platform"]
POLICIES: tuple[Policy, ...] = ("holder", "share_unallocated", "platform")
RULE_SHARED_UNALLOCATED = "shared_unallocated"
RULE_IDLE_ON_PLATFORM = "idle_kept_on_platform"
LINE_KEYS = ["tenant", "kind", "rule"]
#: The default scope: a cluster's idle capacity of one GPU model is spread over that cluster's tenants only.
SCOPE = ("cluster", "model")
__all__ = [
    "apply_idle_policy_sql","POLICIES", "Policy", "apply_idle_policy", "apply_idle_policy_to_rows"]


def apply_idle_policy(ledger: pl.LazyFrame, policy: Policy = "holder",
                      scope: tuple[str, ...] = SCOPE) -> pl.LazyFrame:
    """Ledger rows -> lines (``*scope, tenant, kind, rule, gpu_seconds, energy_j, gpu_ps, energy_nj``) under ``policy``.

    Summed as exact integers (``gpu_ps``, ``energy_nj``: ``analytics/exact.py``), the floats computed from
    them, so a line does not depend on the rows' order. ``Σ gpu_ps`` per scope is unchanged (a spread line
    is its share rounded to the picosecond); energy likewise where known (null energy stays null: it is
    not spread as zero).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown idle policy {policy!r}; choose one of {', '.join(POLICIES)}")
    keys = [*scope, *LINE_KEYS]
    known_nj = pl.when(pl.col("energy_nj").is_not_null().any()).then(pl.col("energy_nj").cast(pl.Int128).sum())
    sums = {"gpu_ps": pl.col("gpu_ps").cast(pl.Int128).sum(), "energy_nj": known_nj}
    lines = ledger.with_columns(exact("gpu_seconds"), exact("energy_j")).group_by(keys).agg(**sums)
    if policy == "platform":
        moved = pl.col("kind") == K.ALLOCATED_IDLE
        lines = lines.with_columns(
            tenant=pl.when(moved).then(pl.lit(K.PLATFORM_TENANT)).otherwise(pl.col("tenant")),
            rule=pl.when(moved).then(pl.lit(RULE_IDLE_ON_PLATFORM)).otherwise(pl.col("rule")),
        ).group_by(keys).agg(**sums)
    elif policy == "share_unallocated":
        scope_l = list(scope)
        is_unalloc = pl.col("kind") == K.UNALLOCATED
        charged = lines.filter(~is_unalloc).group_by([*scope_l, "tenant"]).agg(w=pl.col("gpu_ps").sum())
        charged = charged.filter(pl.col("w") > 0).with_columns(
            w=pl.col("w").cast(pl.Float64) / pl.col("w").sum().over(scope_l).cast(pl.Float64))
        pool = lines.filter(is_unalloc).group_by(scope_l).agg(pool_ps=pl.col("gpu_ps").sum(), pool_nj=known_nj)
        spread = pool.join(charged, on=scope_l, how="inner").select(
            *scope_l, "tenant", kind=pl.lit(K.UNALLOCATED), rule=pl.lit(RULE_SHARED_UNALLOCATED),
            gpu_ps=(pl.col("pool_ps").cast(pl.Float64) * pl.col("w")).round(0).cast(pl.Int128),
            energy_nj=(pl.col("pool_nj").cast(pl.Float64) * pl.col("w")).round(0).cast(pl.Int128),
        )
        kept = lines.filter(is_unalloc).join(charged.select(scope_l).unique(), on=scope_l, how="anti")
        lines = pl.concat([lines.filter(~is_unalloc), kept, spread], how="vertical_relaxed")
    return lines.with_columns(measure("gpu_seconds"), measure("energy_j"))


def apply_idle_policy_to_rows(ledger: pl.LazyFrame, policy: Policy = "holder",
                              scope: tuple[str, ...] = SCOPE) -> pl.LazyFrame:
    """Ledger (or rollup) rows -> the same columns, re-booked under ``policy``, for pricing.

    Unlike :func:`apply_idle_policy` the rows keep their GPU interval keys, so
    a pool's capacity (priced per physical GPU interval) is unchanged: under
    ``platform`` an allocated-idle row moves to ``platform`` (rule
    ``idle_kept_on_platform``); under ``share_unallocated`` each unallocated
    row becomes one row per tenant charged in its scope over the whole frame
    (the billing month), its GPU-seconds and joules times that tenant's
    weight (rule ``shared_unallocated``, kind still ``unallocated``); a scope
    with no charged tenant keeps its rows on ``platform``. ``Σ gpu_seconds``
    per GPU interval is unchanged up to float rounding.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown idle policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if policy == "holder":
        return ledger
    columns = ledger.collect_schema().names()
    if policy == "platform":
        moved = pl.col("kind") == K.ALLOCATED_IDLE
        return ledger.with_columns(
            tenant=pl.when(moved).then(pl.lit(K.PLATFORM_TENANT)).otherwise(pl.col("tenant")),
            rule=pl.when(moved).then(pl.lit(RULE_IDLE_ON_PLATFORM)).otherwise(pl.col("rule")),
        ).select(columns)
    scope_l = list(scope)
    is_unalloc = pl.col("kind") == K.UNALLOCATED
    # Weights from exact sums (analytics/exact.py): the same bits whatever the rows' order.
    weights = (ledger.filter(~is_unalloc).group_by([*scope_l, "tenant"])
               .agg(w=exact("gpu_seconds").cast(pl.Int128).sum())
               .filter(pl.col("w") > 0)
               .with_columns(w=pl.col("w").cast(pl.Float64) / pl.col("w").sum().over(scope_l).cast(pl.Float64))
               .rename({"tenant": "_to"}))
    unalloc = ledger.filter(is_unalloc)
    spread = unalloc.join(weights, on=scope_l, how="inner").with_columns(
        tenant=pl.col("_to"), rule=pl.lit(RULE_SHARED_UNALLOCATED),
        gpu_seconds=pl.col("gpu_seconds") * pl.col("w"), energy_j=pl.col("energy_j") * pl.col("w"),
    ).select(columns)
    kept = unalloc.join(weights.select(scope_l).unique(), on=scope_l, how="anti").select(columns)
    return pl.concat([ledger.filter(~is_unalloc), kept, spread], how="vertical_relaxed")


def apply_idle_policy_sql(rows_sql: str, policy: Policy = "holder", scope: tuple[str, ...] = SCOPE, *,
                          exact: bool = False) -> str:
    """:func:`apply_idle_policy_to_rows` in DuckDB SQL: ``rows_sql``'s rows re-booked under ``policy``.

    For bills summed in DuckDB (``chargeback.read_usage``): the same rows, the
    same weights (each tenant's share of the scope's charged GPU-seconds over
    all of ``rows_sql``), so the same lines as the Polars path (tested).
    ``exact``: the rows carry the exact ``gpu_ps`` and ``energy_nj``
    (``analytics/exact.py``): weights come from their integer sums and a
    spread row's integers are its row's times the weight, rounded (the same
    bits whatever the rows' order).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown idle policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if policy == "holder":
        return rows_sql
    if policy == "platform":
        return (f"SELECT * REPLACE (CASE WHEN kind = '{K.ALLOCATED_IDLE}' THEN '{K.PLATFORM_TENANT}' ELSE tenant END "
                f"AS tenant, CASE WHEN kind = '{K.ALLOCATED_IDLE}' THEN '{RULE_IDLE_ON_PLATFORM}' ELSE rule END AS rule) "
                f"FROM ({rows_sql})")
    on = ", ".join(scope)
    seconds = "gpu_ps" if exact else "gpu_seconds"
    spread_exact = (", round(r.gpu_ps * w.w)::BIGINT AS gpu_ps, round(r.energy_nj * w.w)::BIGINT AS energy_nj"
                    if exact else "")
    return f"""
        WITH r AS ({rows_sql}),
        c AS (SELECT {on}, tenant, sum({seconds}) AS s FROM r WHERE kind <> '{K.UNALLOCATED}'
              GROUP BY ALL HAVING sum({seconds}) > 0),
        w AS (SELECT {on}, tenant AS _to, s::DOUBLE / (sum(s) OVER (PARTITION BY {on}))::DOUBLE AS w FROM c)
        SELECT * FROM r WHERE kind <> '{K.UNALLOCATED}'
        UNION ALL SELECT r.* FROM r ANTI JOIN (SELECT DISTINCT {on} FROM w) USING ({on})
            WHERE kind = '{K.UNALLOCATED}'
        UNION ALL SELECT r.* REPLACE (w._to AS tenant, '{RULE_SHARED_UNALLOCATED}' AS rule,
                                      r.gpu_seconds * w.w AS gpu_seconds, r.energy_j * w.w AS energy_j{spread_exact})
            FROM r JOIN w USING ({on}) WHERE kind = '{K.UNALLOCATED}'"""
