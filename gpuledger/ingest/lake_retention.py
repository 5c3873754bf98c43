"""Retention on the lake: whole day partitions of the raw tables, whole month partitions of the rollups.

The tiers and cut-offs are the DuckDB file's (:mod:`gpuledger.ingest.retention`:
UTC month starts, ``raw <= ledger <= rollups``); what goes is dropped as
whole Iceberg partitions (:func:`gpuledger.store.lake.upkeep.drop_partitions`:
no data file rewritten). The guards are the file's where the lake has the
information:

- **Raw** (``messages`` and the record tables, day partitions): a day goes
  only if every message of it is attributed. The evidence, first found wins:

  - the lake's own record (``attribute --lake``): the ``messages`` snapshot
    the last run attributed up to, on ``ledger_hourly``
    (:class:`~gpuledger.store.lake.shards.LakeShards`). A day is attributed
    when none of ``messages``' data files holding it was added after that
    snapshot (Iceberg's snapshot lineage and manifest entries, as dirty
    shards are found: no data file is read). A recorded snapshot no longer
    in the lineage, or tenancy rules whose version differs from the
    recorded one (every shard runs again), attribute nothing;
  - else the DuckDB file attribution runs on (``merge --lake`` then
    ``attribute``), when it exists: every message key of the day must be in
    its ``attributed`` table -- the file's own guard, exactly;
  - else nothing: no raw day goes (each kept, with the reason).

  ``messages`` (the commit record) is dropped first, then the record tables,
  so a run killed half-way leaves rows without their message -- what
  readers already ignore -- and the next run drops them.
- **Interval-grain ledger**: the lake has none (it lives in the DuckDB file,
  whose ``gpuledger retention --db`` keeps handling it).
- **Hourly rollups** (``ledger_hourly``, month partitions): a month goes only
  when it is closed: in the lake's metadata store
  (:class:`~gpuledger.store.lake.meta.SqlMetadata`, ``gpuledger_chargeback_closes``:
  what ``export --lake --final`` records), or in the DuckDB file's
  ``chargeback_closes``. Where the file exists, a month whose interval ledger
  it still holds is kept -- the file's chain "ledger only once closed,
  rollups only once the ledger is gone". ``work_units`` and ``queue_hourly``
  are kept, as the DuckDB file keeps them.
- ``pods`` and ``dead_letters`` are kept, as in the file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

from gpuledger.ingest.retention import _check_tiers, cutoff_ns
from gpuledger.store import Store
from gpuledger.store.lake import LakeStore
from gpuledger.store.lake.schema import DAY_COLUMN, KEYED
from gpuledger.store.lake.shards import LakeShards
from gpuledger.store.lake.upkeep import Drop, Partition, drop_partitions, partitions

__all__ = ["LakeRetention", "enforce_lake_retention"]

#: Why a day of raw samples is kept (a reason), or None: it may go. Given the day's message keys and starts.
Guard = Callable[[Partition, pa.Table], str | None]


@dataclass
class LakeRetention:
    cutoff_ns: int
    guard: str  # which evidence of attribution was used
    days_dropped: list[str] = field(default_factory=list)
    days_kept: dict[str, str] = field(default_factory=dict)  # day -> why
    drops: list[Drop] = field(default_factory=list)
    rollup_cutoff_ns: int | None = None
    rollup_months_dropped: list[str] = field(default_factory=list)
    rollup_kept: dict[str, str] = field(default_factory=dict)

    @property
    def files_removed(self) -> int:
        return sum(d.files_removed for d in self.drops)

    @property
    def rows_removed(self) -> int:
        return sum(d.rows_removed for d in self.drops)


def enforce_lake_retention(lake: LakeStore, *, months: int = 2, ledger_months: int = 13, rollup_months: int = 36,
                           store: Store | None = None, closed: set[str] | None = None,
                           rules_version: str | None = None, now_ns: int | None = None) -> LakeRetention:
    """Drop the raw days and rollup months past their tiers that the guards allow (module doc).

    ``store``: the DuckDB file attribution runs on (its ``attributed`` keys,
    closed months and ledger), or None when there is none. ``closed``: the
    months the lake's metadata store records closed (None: none known).
    ``rules_version``: the tenancy rules' version the next attribution runs
    with; one different from the lake's recorded run attributes nothing.
    """
    _check_tiers(months, ledger_months, rollup_months)
    now = time.time_ns() if now_ns is None else now_ns
    cut = cutoff_ns(now, months)
    guard, evidence = _guard(lake, store, rules_version)
    result = LakeRetention(cut, evidence)
    old = [p for p in partitions(lake, "messages") if p.end_us is not None and p.end_us * 1000 <= cut]
    doomed: list[Partition] = []
    for day in old:
        keys = lake._retrying("reading message keys", lambda d=day: _keys(lake, d))  # type: ignore[misc]
        why = guard(day, keys)
        if why:
            result.days_kept[day.label] = why
        else:
            doomed.append(day)
    result.drops.append(drop_partitions(lake, "messages", doomed))  # the commit record first
    for name in KEYED:
        if name == "messages":
            continue
        # a day the guard kept stays in every table; a day only record tables hold (rows of flushes killed before
        # their messages commit, older than any redelivery) goes with the others
        own = [p for p in partitions(lake, name) if p.end_us is not None and p.end_us * 1000 <= cut
               and p.label not in result.days_kept]
        result.drops.append(drop_partitions(lake, name, own))
    result.days_dropped = sorted({label for d in result.drops for label in d.partitions})
    if rollup_months:
        result.rollup_cutoff_ns = cutoff_ns(now, rollup_months)
        _rollups(lake, store, closed or set(), result.rollup_cutoff_ns, result)
    return result


def _keys(lake: LakeStore, day: Partition) -> pa.Table:
    table = lake.table("messages")
    expr = And(GreaterThanOrEqual(DAY_COLUMN, day.start_us), LessThan(DAY_COLUMN, day.end_us))  # type: ignore[call-arg,misc,unused-ignore]
    return table.scan(row_filter=expr, selected_fields=("agent_id", "boot_id", "seq", "interval_start_ns")).to_arrow()


def _file_guard(store: Store) -> Guard:
    def guard(day: Partition, keys: pa.Table) -> str | None:
        if keys.num_rows == 0:
            return None
        with store.registered(_day_keys=keys):
            missing = int(store.scalar("SELECT count(*) FROM _day_keys k ANTI JOIN attributed a "
                                       "ON a.agent_id = k.agent_id AND a.boot_id = k.boot_id AND a.seq = k.seq"))
        return f"{missing} messages not attributed in {store.path} (merge --lake, then attribute)" if missing else None
    return guard


def _guard(lake: LakeStore, store: Store | None, rules_version: str | None) -> tuple[Guard, str]:
    """The raw days' guard and a line saying whose evidence it reads (module doc: the lake's record first)."""
    shards = LakeShards(lake)
    run = lake._retrying("reading the attribution record of lake table ledger_hourly", shards.last_run)
    if run.messages_snapshot is not None:
        evidence = f"the lake's attribution record (messages snapshot {run.messages_snapshot})"
        if rules_version is not None and run.rules_version != rules_version:
            why = (f"tenancy rules {rules_version} differ from the last attribution run's ({run.rules_version}): "
                   "every message is attributed again by the next attribute --lake")
            return (lambda day, keys: why if keys.num_rows else None), evidence
        current = shards.messages_snapshot()
        days = shards.days_added(run.messages_snapshot, current)
        if days is None:
            why = (f"the attributed snapshot {run.messages_snapshot} is no longer in messages' history (expired or "
                   "replaced): the next attribute --lake runs every shard")
            return (lambda day, keys: why if keys.num_rows else None), evidence
        labels = {d.isoformat() for d in days}
        return (lambda day, keys: "holds messages added since the last attribution run (attribute --lake)"
                if day.label in labels else None), evidence
    if store is not None:
        return _file_guard(store), f"attributed keys of {store.path}"
    why = "no attribution run is recorded on the lake (attribute --lake) and no --db file records one"
    return (lambda day, keys: why if keys.num_rows else None), "none: no attribution recorded"


def _rollups(lake: LakeStore, store: Store | None, closed: set[str], cut: int, result: LakeRetention) -> None:
    old = [p for p in partitions(lake, "ledger_hourly") if p.end_us is not None and p.end_us * 1000 <= cut]
    doomed = []
    for month in old:
        in_file = store is not None and bool(store.scalar("SELECT 1 FROM chargeback_closes WHERE month = ?",
                                                          [month.label]))
        if month.label not in closed and not in_file:
            result.rollup_kept[month.label] = ("not closed (export --lake --final closes a month in the lake's "
                                               "metadata store)")
            continue
        if store is not None and store.scalar(
                "SELECT 1 FROM ledger WHERE interval_start_ns >= ? AND interval_start_ns < ? LIMIT 1",
                [month.start_us * 1000, month.end_us * 1000]):  # type: ignore[operator]
            result.rollup_kept[month.label] = f"its interval-grain ledger is still stored in {store.path}"
            continue
        doomed.append(month)
    drop = drop_partitions(lake, "ledger_hourly", doomed)
    result.drops.append(drop)
    result.rollup_months_dropped = drop.partitions
