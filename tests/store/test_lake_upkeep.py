"""Lake upkeep on real Iceberg tables (SQLite catalog, local warehouse): compaction and snapshot expiry.

Compaction rewrites a day's small files (one per flush) as one, atomically,
and a writer appending to that day meanwhile costs a retry, never a row;
expiry removes old snapshots from the metadata and -- pyiceberg 0.12 -- leaves
their files in the warehouse (measured, so the docs can say it). Retention's
partition drops: tests/ingest/test_lake_retention.py; compaction against
PostgreSQL + S3 with a writer thread: tests/ingest/test_lake_upkeep_pg.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

pytest.importorskip("pyiceberg", reason="the lake extra is not installed (pip install -e '.[test]')")

from gpuledger.store.lake import LakeConfig, LakeStore, scan  # noqa: E402
from gpuledger.store.lake.upkeep import (  # noqa: E402
    compact_partition,
    expire_snapshots,
    partitions,
    unreferenced_bytes,
)
from tests.support.factories import make_message  # noqa: E402

DAY_NS = 86_400 * 10**9
T0 = int(dt.datetime(2026, 11, 3, tzinfo=dt.UTC).timestamp()) * 10**9


def lake_at(tmp: Path) -> LakeStore:
    return LakeStore(LakeConfig(f"sqlite:///{tmp}/catalog.db", str(tmp / "warehouse")))


def flush(lake: LakeStore, first: int, n: int, day: int = 0, agent: str = "a") -> None:
    lake.write_messages([make_message(agent_id=agent, seq=s, start_ns=T0 + day * DAY_NS + s * 10**10)
                         for s in range(first, first + n)])


def keys(lake: LakeStore, table: str) -> list[tuple[str, int, int]]:
    rows = scan(lake, table).select(["agent_id", "seq", "gpu_index"] if table == "devices" else ["agent_id", "seq"])
    return sorted(tuple(r.values()) for r in rows.to_pylist())  # type: ignore[misc]


def test_a_days_small_files_become_one_file_with_the_same_rows_and_other_days_untouched(tmp_path: Path) -> None:
    lake = lake_at(tmp_path)
    for i in range(3):
        flush(lake, i * 2, 2)  # three flushes into day 0: three files per table
    flush(lake, 0, 2, day=1)
    before = {t: keys(lake, t) for t in ("messages", "devices")}
    day0, day1 = partitions(lake, "devices")
    assert (day0.label, day0.files, day1.files) == ("2026-11-03", 3, 1)

    done = compact_partition(lake, day0)
    assert (done.files_before, done.files_after, done.rows, done.conflicts) == (3, 1, 12, 0)
    snap = lake.table("devices").current_snapshot()
    assert snap is not None and snap.summary is not None
    # one transaction: a DELETE of the three files, then an APPEND of one; readers never see a half of it
    ops = [s.summary.operation.value for s in lake.table("devices").snapshots()[-2:] if s.summary]
    assert ops == ["delete", "append"]
    assert snap.summary.additional_properties["added-data-files"] == "1"
    assert [p.files for p in partitions(lake, "devices")] == [1, 1]
    assert keys(lake, "devices") == before["devices"]  # the same rows: none lost, none doubled
    assert keys(lake, "messages") == before["messages"]  # another table: not touched
    assert compact_partition(lake, partitions(lake, "devices")[0]).files_after == 1  # nothing more to do
    assert len(lake.table("devices").snapshots()) == len(lake.table("devices").refresh().snapshots())


def test_a_writer_appending_to_the_day_during_compaction_costs_a_retry_not_a_row(tmp_path: Path) -> None:
    lake, writer = lake_at(tmp_path), lake_at(tmp_path)
    flush(lake, 0, 2)
    flush(lake, 2, 2)
    appended: list[int] = []

    def append_meanwhile(event: str) -> None:
        if event == "read" and not appended:  # after compaction read the day, before it commits
            flush(writer, 4, 2, agent="b")
            appended.append(1)

    done = compact_partition(lake, partitions(lake, "devices")[0], observer=append_meanwhile)
    assert done.conflicts == 1  # its first commit was refused; the day was read again, the new rows with it
    assert done.rows == 12 and done.files_after == 1
    want = sorted([("a", s, g) for s in range(4) for g in range(2)] + [("b", s, g) for s in range(4, 6) for g in range(2)])
    assert keys(lake, "devices") == want
    # ingest's idempotence still holds on the compacted day: a redelivered flush adds nothing
    assert writer.write_messages([make_message(agent_id="b", seq=s, start_ns=T0 + s * 10**10) for s in (4, 5)]) == 0


def test_expiry_removes_old_snapshots_keeps_the_newest_and_deletes_no_file(tmp_path: Path) -> None:
    lake = lake_at(tmp_path)
    for i in range(3):
        flush(lake, i, 1)
    compact_partition(lake, partitions(lake, "devices")[0])
    table = lake.table("devices")
    n = len(table.snapshots())
    assert n == 5  # three appends, the compaction's delete and append
    assert unreferenced_bytes(lake, "devices") == (0, 0)  # every file is still in some snapshot

    kept = expire_snapshots(lake, "devices", dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1), keep_last=2)
    assert (kept.expired, kept.kept) == (3, 2)
    table = lake.table("devices")
    assert len(table.snapshots()) == 2
    assert keys(lake, "devices") == [("a", s, g) for s in range(3) for g in range(2)]  # the current rows unchanged
    files, size = unreferenced_bytes(lake, "devices")
    assert files == 3 and size > 0  # pyiceberg 0.12 expiry edits metadata only: the replaced files stay

    nothing = expire_snapshots(lake, "devices", dt.datetime.now(dt.UTC) - dt.timedelta(days=7), keep_last=1)
    assert nothing.expired == 0  # none older than seven days


def test_an_unpartitioned_table_compacts_whole(tmp_path: Path) -> None:
    lake = lake_at(tmp_path)
    flush(lake, 0, 1)
    flush(lake, 1, 1)
    (pods,) = partitions(lake, "pods")
    assert (pods.label, pods.files) == ("-", 2)
    done = compact_partition(lake, pods, sort_by=("pod_uid",))
    assert (done.files_after, done.rows) == (1, scan(lake, "pods").num_rows)
    assert isinstance(scan(lake, "pods"), pa.Table)
