"""Retention of raw samples: keep the billing months a dispute can reach.

Raw rows (``messages`` and the four record tables) are the evidence behind
every ledger line. Billing disputes concern the month just invoiced, so by
default raw data of the current and the previous calendar month (UTC) is
kept (``raw_retention_months = 2``) and older raw data is deleted. The ledger
(attribution output: per GPU, interval, tenant and kind, far smaller than raw
samples) and ``dead_letters`` are kept; aggregate them further or export them
for longer horizons.

Never deleted: a message the ledger does not cover yet (not in
``attributed``) -- deleting it would lose GPU-seconds from a bill. The job
reports how many such messages it kept. After retention, ``gpuledger
attribute --full`` can only re-attribute the retained months.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from gpuledger.store import Store

__all__ = ["RetentionResult", "cutoff_ns", "enforce_retention"]

RAW_TABLES = ("devices", "processes", "allocations", "field_errors")


@dataclass
class RetentionResult:
    cutoff_ns: int  # raw intervals starting before this (UTC month start) were eligible
    messages_deleted: int
    rows_deleted: int  # record-table rows
    kept_unattributed: int  # eligible by age, kept because the ledger lacks them


def cutoff_ns(now_ns: int, months: int) -> int:
    """Start (ns since the epoch, UTC) of the oldest kept month: ``months`` counts the current one."""
    if months < 1:
        raise ValueError("raw_retention_months must be >= 1 (the current month is always kept)")
    now = dt.datetime.fromtimestamp(now_ns / 1e9, tz=dt.UTC)
    index = now.year * 12 + now.month - 1 - (months - 1)
    start = dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)
    return int(start.timestamp()) * 10**9


def enforce_retention(store: Store, months: int = 2, now_ns: int | None = None) -> RetentionResult:
    """Delete attributed raw data older than the retained months, in one transaction."""
    cut = cutoff_ns(time.time_ns() if now_ns is None else now_ns, months)
    with store.transaction() as tx:
        tx.execute("CREATE TEMP TABLE _expired AS SELECT agent_id, boot_id, seq FROM messages "
                   "SEMI JOIN attributed USING (agent_id, boot_id, seq) WHERE interval_start_ns < ?", [cut])
        kept = int(tx.scalar("SELECT count(*) FROM messages ANTI JOIN attributed USING (agent_id, boot_id, seq) "
                             "WHERE interval_start_ns < ?", [cut]))
        n_messages = int(tx.scalar("SELECT count(*) FROM _expired"))
        rows = 0
        for table in RAW_TABLES:
            rows += int(tx.scalar(f"SELECT count(*) FROM {table} SEMI JOIN _expired USING (agent_id, boot_id, seq)"))
            tx.execute(f"DELETE FROM {table} WHERE (agent_id, boot_id, seq) IN (SELECT (agent_id, boot_id, seq) FROM _expired)")
        tx.execute("DELETE FROM messages WHERE (agent_id, boot_id, seq) IN (SELECT (agent_id, boot_id, seq) FROM _expired)")
        tx.execute("DROP TABLE _expired")
    return RetentionResult(cut, n_messages, rows, kept)
