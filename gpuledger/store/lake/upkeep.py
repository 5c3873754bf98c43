"""Keeping the lake small: dropping whole partitions, compacting a partition's files, expiring snapshots.

Three Iceberg operations through pyiceberg (0.12), each one catalog commit:

- :func:`drop_partitions` deletes every row of a time range aligned to the
  table's partitions (whole UTC days of the raw tables, whole months of the
  product tables). Iceberg then drops the partitions' data files from the
  manifests and rewrites none: the snapshot's summary lists deleted files and
  records, and no added file (checked here; a partial-partition range, which
  would rewrite files, is refused).
- :func:`compact_partition` rewrites one partition's many small files (each
  ingest flush adds one per table and day) as one file: a transaction that
  deletes the partition and appends the same rows, committed at once (readers
  see the old files or the new one, never both or neither).
- :func:`expire_snapshots` removes old snapshots from the table metadata
  (``table.maintenance.expire_snapshots()``), keeping the newest ones.

**Concurrent ingest.** Every gpuledger table is created with pyiceberg's own
commit retry off (``commit.retry.num-retries = 0``, see
:mod:`~gpuledger.store.lake.writer`), and a delete or append carries the
requirement that the branch still points at the snapshot it was planned
from; the SQL catalog's swap is also conditional on the metadata location. A
worker appending between our read and our commit therefore makes our commit
fail with ``CommitFailedException``: the table is re-read, the work planned
again from what it now holds, and committed again (up to ``conflict_retries``
times, jittered backoff). Rows are never read from one snapshot and
committed over another, so none is lost or doubled.

**What expiry does not do.** pyiceberg 0.12's ``ExpireSnapshots`` edits the
metadata only: the data and manifest files that only expired snapshots
referenced (the small files a compaction replaced, the files of dropped
partitions) stay in the warehouse. pyiceberg 0.12 has no orphan-file removal;
:func:`unreferenced_bytes` measures what they hold. Deleting them needs an
engine that implements it (Spark's ``remove_orphan_files`` /
``expire_snapshots`` procedures) or an object-store lifecycle rule
(docs/lake.md#snapshot-expiry).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, GreaterThanOrEqual, LessThan, Or
from pyiceberg.table import Table, Transaction
from pyiceberg.table.update import AddSnapshotUpdate

from gpuledger.errors import StoreError
from gpuledger.store.lake.schema import DAY_COLUMN, HOUR_COLUMN, KEYED, ROLLUP_TABLES
from gpuledger.store.lake.writer import LakeStore

log = logging.getLogger(__name__)

__all__ = ["Compaction", "Drop", "Expiry", "Partition", "compact_partition", "drop_partitions", "expire_snapshots",
           "partitions", "unreferenced_bytes"]

T = TypeVar("T")
DAY_US = 86_400 * 10**6


@dataclass(frozen=True)
class Partition:
    """One partition of a table: its range ``[start_us, end_us)`` of the partition column, files and rows."""

    table: str
    label: str  # "2026-11-03" (day) or "2026-11" (month) or "-" (unpartitioned)
    start_us: int | None
    end_us: int | None
    files: int
    rows: int
    bytes: int


@dataclass
class Drop:
    """What :func:`drop_partitions` removed from one table."""

    table: str
    partitions: list[str] = field(default_factory=list)
    files_removed: int = 0
    rows_removed: int = 0
    conflicts: int = 0


@dataclass
class Compaction:
    """One table-partition rewritten: files before -> after, rows (the same before and after)."""

    table: str
    partition: str
    files_before: int
    files_after: int
    rows: int
    bytes_before: int
    bytes_after: int
    conflicts: int = 0


@dataclass
class Expiry:
    table: str
    expired: int
    kept: int


def column_of(name: str) -> str | None:
    """The column a table is partitioned on (its time column), or None for an unpartitioned table."""
    if name in KEYED:
        return DAY_COLUMN
    if name in ROLLUP_TABLES:
        return HOUR_COLUMN
    if name == "dead_letters":
        return "received_at"
    return None


def partitions(lake: LakeStore, name: str) -> list[Partition]:
    """The partitions of lake table ``name`` with their file and row counts, oldest first (metadata only)."""
    table = lake._retrying(f"reading the partitions of lake table {name}", lambda: lake.table(name).refresh())
    lake._tables[name] = table
    if table.current_snapshot() is None:
        return []
    rows = lake._retrying(f"reading the partitions of lake table {name}", lambda: table.inspect.partitions().to_pylist())
    out = []
    for row in rows:
        value = (row.get("partition") or {})
        day, month = value.get("day"), value.get("month")
        if isinstance(day, dt.date):
            start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 10**6
            out.append(Partition(name, day.isoformat(), start, start + DAY_US, row["file_count"], row["record_count"],
                                 row["total_data_file_size_in_bytes"]))
        elif month is not None:  # months since 1970-01
            year, mon = 1970 + int(month) // 12, int(month) % 12 + 1
            start = int(dt.datetime(year, mon, 1, tzinfo=dt.UTC).timestamp()) * 10**6
            nxt = dt.datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=dt.UTC)
            out.append(Partition(name, f"{year:04d}-{mon:02d}", start, int(nxt.timestamp()) * 10**6,
                                 row["file_count"], row["record_count"], row["total_data_file_size_in_bytes"]))
        else:
            out.append(Partition(name, "-", None, None, row["file_count"], row["record_count"],
                                 row["total_data_file_size_in_bytes"]))
    return sorted(out, key=lambda p: (p.start_us is not None, p.start_us or 0))


def _range(name: str, start_us: int | None, end_us: int | None) -> BooleanExpression:
    column = column_of(name)
    if column is None or start_us is None or end_us is None:
        return AlwaysTrue()
    return And(GreaterThanOrEqual(column, start_us), LessThan(column, end_us))  # type: ignore[call-arg,misc,unused-ignore]


def drop_partitions(lake: LakeStore, name: str, doomed: list[Partition]) -> Drop:
    """Delete the rows of the whole partitions ``doomed`` of table ``name``: one commit, no data file rewritten.

    Retried on a concurrent commit (the deletion is planned again on the new
    snapshot). Raises ``StoreError`` if Iceberg would have rewritten a file --
    it cannot for a range aligned to the partitions, which this module only
    builds -- after nothing was committed.
    """
    result = Drop(name, [p.label for p in doomed])
    if not doomed:
        return result
    expr: BooleanExpression = _range(name, doomed[0].start_us, doomed[0].end_us)
    for p in doomed[1:]:
        expr = Or(expr, _range(name, p.start_us, p.end_us))  # type: ignore[call-arg,misc,unused-ignore]

    removed: dict[str, int] = {}

    def once(table: Table) -> None:
        with table.transaction() as tx:
            tx.delete(expr)
            summaries = _staged_summaries(tx)
            if any(int(p.get("added-data-files", 0)) for p in summaries):
                # a file straddles the range: Iceberg would rewrite it. Leave the table as it is.
                raise StoreError(f"lake table {name}: dropping {', '.join(result.partitions)} would rewrite data "
                                 "files (a range not aligned to the partitions)", hint="this is a bug; report it")
            removed["files"] = sum(int(p.get("deleted-data-files", 0)) for p in summaries)
            removed["rows"] = sum(int(p.get("deleted-records", 0)) for p in summaries)

    result.conflicts = _committing(lake, name, once)
    result.files_removed, result.rows_removed = removed["files"], removed["rows"]
    return result


def compact_partition(lake: LakeStore, part: Partition, *, sort_by: tuple[str, ...] = ("agent_id", "interval_start_ns"),
                      observer: Callable[[str], None] | None = None) -> Compaction:
    """Rewrite partition ``part`` of its table as one data file, atomically (one transaction: delete + append).

    Each try reads the partition's rows from the current snapshot and commits
    the rewrite on top of that same snapshot; a writer that appended to the
    partition meanwhile makes the commit fail, and the partition is read again
    (its rows included). ``observer`` is called with ``"read"`` after the rows
    are read (tests append there, as a concurrent ingest would).
    """
    name = part.table
    expr = _range(name, part.start_us, part.end_us)
    done: dict[str, int] = {}

    def once(table: Table) -> None:
        files = list(table.scan(row_filter=expr).plan_files())
        done["files_before"] = len(files)
        done["bytes_before"] = sum(f.file.file_size_in_bytes for f in files)
        if len(files) <= 1:
            done["rows"] = sum(f.file.record_count for f in files)
            done["files_after"] = len(files)
            done["bytes_after"] = done["bytes_before"]
            return
        rows = table.scan(row_filter=expr).to_arrow()
        keys = [(c, "ascending") for c in sort_by if c in rows.column_names]
        if keys:
            rows = rows.sort_by(keys)  # clustered by agent: the key reads of ingest prune by file statistics
        if observer is not None:
            observer("read")
        with table.transaction() as tx:
            tx.overwrite(rows, overwrite_filter=expr)
            summaries = _staged_summaries(tx)
        done["rows"] = rows.num_rows
        done["files_after"] = sum(int(p.get("added-data-files", 0)) for p in summaries)
        done["bytes_after"] = sum(int(p.get("added-files-size", 0)) for p in summaries)

    conflicts = _committing(lake, name, once)
    return Compaction(name, part.label, done["files_before"], done["files_after"], done["rows"], done["bytes_before"],
                      done["bytes_after"], conflicts)


def expire_snapshots(lake: LakeStore, name: str, older_than: dt.datetime, keep_last: int) -> Expiry:
    """Remove the snapshots of ``name`` taken before ``older_than``, except the newest ``keep_last`` (>= 1)
    and every branch or tag head. Metadata only: no file is deleted (see the module doc)."""
    if keep_last < 1:
        raise StoreError("keep at least the newest snapshot", hint="--keep-snapshots 1 or more")
    cut_ms = int(older_than.timestamp() * 1000)
    counts: dict[str, int] = {}

    def once(table: Table) -> None:
        snaps = sorted(table.snapshots(), key=lambda s: (s.timestamp_ms, s.sequence_number or 0))
        protected = {ref.snapshot_id for ref in table.metadata.refs.values()}
        newest = {s.snapshot_id for s in snaps[-keep_last:]}
        doomed = [s.snapshot_id for s in snaps
                  if s.timestamp_ms < cut_ms and s.snapshot_id not in newest and s.snapshot_id not in protected]
        counts["expired"], counts["kept"] = len(doomed), len(snaps) - len(doomed)
        if doomed:
            table.maintenance.expire_snapshots().by_ids(doomed).commit()

    _committing(lake, name, once)
    return Expiry(name, counts["expired"], counts["kept"])


def unreferenced_bytes(lake: LakeStore, name: str) -> tuple[int, int]:
    """(files, bytes) of data files in the warehouse under table ``name``'s data location that no snapshot
    references any more: what expiry leaves behind. A local warehouse only; (-1, -1) for object storage."""
    from pathlib import Path
    from urllib.parse import unquote, urlparse

    table = lake.table(name).refresh()
    location = urlparse(table.location())
    if location.scheme not in ("", "file"):
        return -1, -1
    referenced = set()
    for snap in table.snapshots():
        for manifest in snap.manifests(table.io):
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                referenced.add(unquote(urlparse(entry.data_file.file_path).path))
    data = Path(unquote(location.path)) / "data"
    files = [p for p in data.rglob("*.parquet")] if data.is_dir() else []
    stale = [p for p in files if str(p) not in referenced]
    return len(stale), sum(p.stat().st_size for p in stale)


def _staged_summaries(tx: Transaction) -> list[dict[str, str]]:
    """The summaries of the snapshots a transaction will commit (pyiceberg 0.12 stages them in ``_updates``;
    tests/store/test_lake_upkeep.py and test_lake_retention.py check what they say against the committed table)."""
    return [u.snapshot.summary.additional_properties for u in tx._updates
            if isinstance(u, AddSnapshotUpdate) and u.snapshot.summary is not None]


def _committing(lake: LakeStore, name: str, once: Callable[[Table], None]) -> int:
    """Run ``once`` on the current table until its commit is not refused by a concurrent one; returns the
    conflicts met. The catalog or object store not answering is retried as the writer retries it."""
    backoff, conflicts = 0.05, 0
    for _ in range(lake.conflict_retries + 1):
        def attempt() -> bool:
            table = lake.table(name).refresh()
            lake._tables[name] = table
            try:
                once(table)
            except CommitFailedException as exc:
                log.info("lake table %s: a concurrent commit came first (%s); reading it again", name, exc)
                return False
            return True

        if lake._retrying(f"maintaining lake table {name}", attempt):
            lake._tables[name] = lake.table(name).refresh()
            return conflicts
        conflicts += 1
        lake.conflicts += 1
        lake.sleep(backoff * (0.5 + random.random()))
        backoff = min(backoff * 2, 2.0)
    raise StoreError(f"lake table {name}: {lake.conflict_retries + 1} tries in a row lost to concurrent commits",
                     hint="ingest commits to this partition all the time: compact older days (--older-than-hours)")

