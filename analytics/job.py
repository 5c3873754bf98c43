"""The attribution job: IO around the pure ledger function.

Incremental by default: only messages not yet in ``attributed`` are read,
attributed and appended to ``ledger`` in one transaction with their keys, so a
crash never leaves half an interval booked. ``full=True`` re-attributes
everything (after a tenancy-rule or price change). Work is chunked by message
so memory stays bounded on a large store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from gpuledger.analytics.ledger import LEDGER_COLUMNS, attribute
from gpuledger.analytics.tenancy import SLURM_PREFIX, TenancyRules
from gpuledger.store import Store

_PENDING = """
SELECT m.agent_id, m.boot_id, m.seq FROM messages m
ANTI JOIN attributed a USING (agent_id, boot_id, seq)
ORDER BY m.interval_start_ns, m.agent_id, m.seq
"""


@dataclass
class JobResult:
    messages: int = 0
    ledger_rows: int = 0


def run_attribution(
    store: Store,
    rules: TenancyRules | None = None,
    *,
    full: bool = False,
    chunk_messages: int = 5000,
    progress: Callable[[int, int], None] | None = None,
) -> JobResult:
    """Attribute pending messages (all of them with ``full``); returns counts."""
    rules = rules or TenancyRules()
    if full:
        with store.transaction() as tx:
            tx.execute("DELETE FROM ledger")
            tx.execute("DELETE FROM attributed")
    pending = store.query(_PENDING)
    result = JobResult()
    jobs = store.query("SELECT DISTINCT slurm_job FROM processes WHERE slurm_job IS NOT NULL ORDER BY 1")
    tenants = rules.tenant_table(store.query("SELECT pod_uid, namespace, labels, name FROM pods"),
                                 jobs["slurm_job"].to_list()).lazy()
    total = pending.height
    for start in range(0, total, chunk_messages):
        keys = pending.slice(start, chunk_messages)
        ledger = _attribute_chunk(store, keys, tenants)
        with store.transaction() as tx:
            tx.append("ledger", ledger)
            tx.append("attributed", keys)
        result.messages += keys.height
        result.ledger_rows += ledger.height
        if progress:
            progress(result.messages, total)
    return result


def _attribute_chunk(store: Store, keys: pl.DataFrame, tenants: pl.LazyFrame) -> pl.DataFrame:
    store.con.register("_chunk", keys.to_arrow())
    try:
        frames = {
            table: store.query(f"SELECT t.* FROM {table} t SEMI JOIN _chunk k USING (agent_id, boot_id, seq)").lazy()
            for table in ("devices", "allocations")
        }
        # A Slurm process (no pod) is owned by its job: key it like a pod, "slurm:<job id>".
        frames["processes"] = store.query(
            f"SELECT t.* REPLACE (coalesce(t.pod_uid, '{SLURM_PREFIX}' || t.slurm_job) AS pod_uid) "
            "FROM processes t SEMI JOIN _chunk k USING (agent_id, boot_id, seq) "
            "ORDER BY agent_id, boot_id, seq, gpu_index, mig_index, pid"
        ).lazy()
    finally:
        store.con.unregister("_chunk")
    return attribute(frames["devices"], frames["processes"], frames["allocations"], tenants).select(
        LEDGER_COLUMNS
    ).collect()
