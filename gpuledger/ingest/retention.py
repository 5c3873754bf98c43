"""Retention in three tiers, each kept longer than the one it summarises.

1. **Raw samples** (``messages`` and the four record tables): the evidence
   behind every ledger line. Billing disputes concern the month just
   invoiced, so by default the current and the previous calendar month (UTC)
   are kept (``raw_retention_months = 2``). Never deleted: a message the
   ledger does not cover yet (not in ``attributed``) -- deleting it would lose
   GPU-seconds from a bill.
2. **The interval-grain ledger** (``ledger``): kept ``ledger_retention_months``
   (default 13: the current month and the twelve before it, so every line of
   the last year's invoices can still be drilled down to its GPUs and
   intervals, and a month can be compared with the same month a year ago).
   A month's ledger goes only when all of these hold, else it is kept and the
   reason reported:

   - the month is *closed* (``chargeback_closes``): its bill is stored byte
     for byte, and ``gpuledger/analytics/closing.py`` stops recomputing corrections for
     a month listed in ``ledger_retired`` (recomputing it from an empty ledger
     would credit the whole month back);
   - none of its raw samples are left (so nothing can re-attribute it);
   - every hour is rolled up: not pending in ``ledger_hourly_pending``, and
     the rollup's ``intervals`` add up to the hour's ledger rows.

   The month is recorded in ``ledger_retired`` (rows and GPU-seconds removed)
   in the same transaction.
3. **Hourly rollups** (``ledger_hourly``): kept ``rollup_retention_months``
   (default 36: three years of trends for capacity planning, the span of a
   typical GPU depreciation schedule). A month's rollups go only once it has
   no ledger rows left (they would no longer sum to it otherwise).

Cut-offs are UTC month starts; 0 months keeps a tier (ledger, rollups)
forever. Tiers must nest: raw <= ledger <= rollups. The ``dead_letters`` and
``attributed`` keys are kept. After raw retention, ``gpuledger attribute
--full`` can only re-attribute the retained months.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

from gpuledger import wire
from gpuledger.errors import GpuledgerError
from gpuledger.store import Store
from gpuledger.timeutil import HOUR_NS, from_ns, month_of, to_ns

__all__ = ["RetentionResult", "cutoff_ns", "enforce_retention"]


@dataclass
class RetentionResult:
    cutoff_ns: int  # raw intervals starting before this (UTC month start) were eligible
    messages_deleted: int
    rows_deleted: int  # record-table rows
    kept_unattributed: int  # eligible by age, kept because the ledger lacks them
    ledger_cutoff_ns: int | None = None  # None: the ledger is kept forever
    ledger_months_retired: list[str] = field(default_factory=list)
    ledger_rows_deleted: int = 0
    ledger_kept: dict[str, str] = field(default_factory=dict)  # month -> why its ledger was kept
    rollup_cutoff_ns: int | None = None
    rollup_rows_deleted: int = 0
    rollup_kept: dict[str, str] = field(default_factory=dict)


def cutoff_ns(now_ns: int, months: int) -> int:
    """Start (ns since the epoch, UTC) of the oldest kept month: ``months`` counts the current one."""
    if months < 1:
        raise ValueError("raw_retention_months must be >= 1 (the current month is always kept)")
    now = from_ns(now_ns)
    index = now.year * 12 + now.month - 1 - (months - 1)
    return to_ns(dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC))


def _check_tiers(raw: int, ledger: int, rollup: int) -> None:
    forever = 10**9
    lm, rm = ledger or forever, rollup or forever
    if raw < 1 or ledger < 0 or rollup < 0 or not raw <= lm <= rm:
        raise GpuledgerError(
            f"retention months must nest (raw {raw} <= ledger {ledger or 'forever'} <= rollups {rollup or 'forever'})",
            hint="raw >= 1; ledger and rollups >= raw, or 0 to keep them forever; each tier summarises the one "
            "before it, so it must outlive it")


def enforce_retention(store: Store, months: int = 2, now_ns: int | None = None, *,
                      ledger_months: int = 13, rollup_months: int = 36) -> RetentionResult:
    """Apply the three tiers (see the module docstring); one transaction per step."""
    _check_tiers(months, ledger_months, rollup_months)
    now = time.time_ns() if now_ns is None else now_ns
    result = _raw(store, cutoff_ns(now, months))
    if ledger_months:
        result.ledger_cutoff_ns = cutoff_ns(now, ledger_months)
        _ledger(store, result.ledger_cutoff_ns, result)
    if rollup_months:
        result.rollup_cutoff_ns = cutoff_ns(now, rollup_months)
        _rollups(store, result.rollup_cutoff_ns, result)
    return result


def _raw(store: Store, cut: int) -> RetentionResult:
    with store.transaction() as tx:
        tx.execute("CREATE TEMP TABLE _expired AS SELECT agent_id, boot_id, seq FROM messages "
                   "SEMI JOIN attributed USING (agent_id, boot_id, seq) WHERE interval_start_ns < ?", [cut])
        kept = int(tx.scalar("SELECT count(*) FROM messages ANTI JOIN attributed USING (agent_id, boot_id, seq) "
                             "WHERE interval_start_ns < ?", [cut]))
        n_messages = int(tx.scalar("SELECT count(*) FROM _expired"))
        rows = 0
        for table in wire.RECORD_TABLES:
            rows += int(tx.scalar(f"SELECT count(*) FROM {table} SEMI JOIN _expired USING (agent_id, boot_id, seq)"))
            tx.execute(f"DELETE FROM {table} WHERE (agent_id, boot_id, seq) IN (SELECT (agent_id, boot_id, seq) FROM _expired)")
        tx.execute("DELETE FROM messages WHERE (agent_id, boot_id, seq) IN (SELECT (agent_id, boot_id, seq) FROM _expired)")
        tx.execute("DROP TABLE _expired")
    return RetentionResult(cut, n_messages, rows, kept)


def _months(store: Store, table: str, column: str, cut: int) -> list[tuple[str, int, int]]:
    """The UTC months (name, start, end) with rows in ``table`` before ``cut``, oldest first."""
    lo = store.scalar(f"SELECT min({column}) FROM {table} WHERE {column} < ?", [cut])
    out: list[tuple[str, int, int]] = []
    while lo is not None and lo < cut:
        month = month_of(int(lo))
        if store.scalar(f"SELECT 1 FROM {table} WHERE {column} >= ? AND {column} < ? LIMIT 1", month[1:]):
            out.append(month)
        lo = month[2]
    return out


def _closed(store: Store) -> set[str]:
    return set(store.query("SELECT month FROM chargeback_closes")["month"].to_list())


def _ledger(store: Store, cut: int, result: RetentionResult) -> None:
    closed = _closed(store)
    for month, lo, hi in _months(store, "ledger", "interval_start_ns", cut):
        span = [lo, hi]
        if month not in closed:
            result.ledger_kept[month] = "not closed (export --final, or serve --close-months, closes a month)"
            continue
        if store.scalar("SELECT 1 FROM messages WHERE interval_start_ns >= ? AND interval_start_ns < ? LIMIT 1", span):
            result.ledger_kept[month] = "raw samples of it are still stored (not yet attributed?)"
            continue
        unrolled = store.scalar(
            f"WITH l AS (SELECT interval_start_ns - interval_start_ns % {HOUR_NS} AS h, count(*) AS n FROM ledger "
            "WHERE interval_start_ns >= ? AND interval_start_ns < ? GROUP BY h), "
            "r AS (SELECT hour_start_ns AS h, sum(intervals) AS n FROM ledger_hourly "
            "WHERE hour_start_ns >= ? AND hour_start_ns < ? GROUP BY h) "
            "SELECT count(*) FROM l LEFT JOIN r USING (h) WHERE r.n IS DISTINCT FROM l.n "
            "OR h IN (SELECT hour_start_ns FROM ledger_hourly_pending)", span + span)
        if unrolled:
            result.ledger_kept[month] = f"{unrolled} hours not rolled up (run `gpuledger attribute`)"
            continue
        with store.transaction() as tx:
            rows, secs = tx.query("SELECT count(*) AS n, sum(gpu_seconds) AS s FROM ledger "
                                  "WHERE interval_start_ns >= ? AND interval_start_ns < ?", span).row(0)
            tx.execute("INSERT INTO ledger_retired (month, start_ns, end_ns, ledger_rows, gpu_seconds) "
                       "VALUES (?, ?, ?, ?, ?) ON CONFLICT (month) DO UPDATE SET "
                       "ledger_rows = ledger_retired.ledger_rows + excluded.ledger_rows, "
                       "gpu_seconds = ledger_retired.gpu_seconds + excluded.gpu_seconds", [month, lo, hi, rows, secs])
            tx.execute("DELETE FROM ledger WHERE interval_start_ns >= ? AND interval_start_ns < ?", span)
        result.ledger_months_retired.append(month)
        result.ledger_rows_deleted += int(rows)


def _rollups(store: Store, cut: int, result: RetentionResult) -> None:
    for month, lo, hi in _months(store, "ledger_hourly", "hour_start_ns", cut):
        if store.scalar("SELECT 1 FROM ledger WHERE interval_start_ns >= ? AND interval_start_ns < ? LIMIT 1", [lo, hi]):
            result.rollup_kept[month] = "its interval-grain ledger is still stored"
            continue
        with store.transaction() as tx:
            result.rollup_rows_deleted += int(tx.scalar(
                "SELECT count(*) FROM ledger_hourly WHERE hour_start_ns >= ? AND hour_start_ns < ?", [lo, hi]))
            tx.execute("DELETE FROM ledger_hourly WHERE hour_start_ns >= ? AND hour_start_ns < ?", [lo, hi])
            tx.execute("DELETE FROM ledger_hourly_pending WHERE hour_start_ns >= ? AND hour_start_ns < ?", [lo, hi])
