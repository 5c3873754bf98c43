"""Segment compaction: one file per table and day, and readers see exactly the
same rows before, after, and at every file-system step in between."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from factories import make_stream
from gpuledger.analytics.job import run_attribution
from gpuledger.ingest.batch import decode_batch
from gpuledger.ingest.segments import SegmentWriter, compact_segments

from gpuledger import wire
from gpuledger.store import DeadLetter, Store

TABLES = ("messages", "devices", "processes", "allocations", "field_errors", "pods", "dead_letters")
FUTURE = "2100-01-01"  # compact every day, today's included


def seen(root: Path, ledger: bool = True) -> dict[str, pl.DataFrame]:
    """What a reader sees: every table and (with ``ledger``) the attributed totals."""
    with Store.open_segments(root) as store:
        out = {t: store.query(f"SELECT * FROM {t} ORDER BY ALL") for t in TABLES}
        if not ledger:
            return out
        run_attribution(store)
        out["ledger"] = store.query("SELECT tenant, kind, sum(gpu_seconds) AS s, sum(energy_j) AS e "
                                    "FROM ledger GROUP BY ALL ORDER BY ALL")
    return out


def assert_same(got: dict[str, pl.DataFrame], want: dict[str, pl.DataFrame], when: str = "") -> None:
    for name, frame in got.items():
        assert frame.equals(want[name]), f"{name} differs {when}"


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def overlapping_segments(root: Path) -> None:
    """Two workers' flushes over one stream, overlapping as after a rebalance; a killed flush; dead letters twice."""
    values = [wire.encode(m) for m in make_stream(40)]
    for i in range(0, 30, 5):
        SegmentWriter(root, "w0").write_arrow(decode_batch(values[i:i + 5]).tables)
    SegmentWriter(root, "w1").write_arrow(decode_batch(values[22:40]).tables)  # 22..29 stored twice
    SegmentWriter(root, "w1").write_arrow(decode_batch(values[0:3]).tables)  # an old batch again, later
    killed = SegmentWriter(root, "w2")
    killed.write_arrow(decode_batch(values[10:12]).tables)
    for path in root.glob("messages/*/w2-*.parquet"):  # killed before its commit record: never visible
        path.unlink()
    SegmentWriter(root, "w0").write_dead_letters([DeadLetter("truncated", b"\x00", "t", 0, 7)] * 2)
    SegmentWriter(root, "w1").write_dead_letters([DeadLetter("truncated", b"\x00", "t", 0, 7),
                                                  DeadLetter("bad version", b"\x01", "t", 1, 3)])


def test_compaction_keeps_what_readers_see_at_every_step(tmp_path: Path) -> None:
    overlapping_segments(tmp_path)
    before = seen(tmp_path)
    assert before["messages"].height == 40 and before["dead_letters"].height == 2
    steps: list[str] = []

    def check(event: str) -> None:
        steps.append(event)
        assert_same(seen(tmp_path, ledger=False), before, f"after {event}")

    res = compact_segments(tmp_path, before=FUTURE, min_age_s=0, orphan_age_s=0, settle_s=0, observer=check)

    assert_same(seen(tmp_path), before)
    assert res.orphans_deleted == 4  # the killed flush's devices, processes, allocations, field_errors
    assert res.duplicate_rows_dropped > 0 and res.files_after == len(parquet_files(tmp_path))
    for table in TABLES:  # one file per table and day
        for day in (tmp_path / table).iterdir():
            assert len(list(day.glob("*.parquet"))) == 1, day
    assert any(s.startswith("renamed messages/") for s in steps)
    order = [(s.split()[0], s.split()[1].split("/")[0]) for s in steps if "day=2025-01-01" in s]
    # New files go in place with messages (the commit record) last; then the old messages files go
    # first, the other tables' after them.
    assert order[:6] == [("renamed", t) for t in ("devices", "processes", "allocations", "field_errors", "pods",
                                                  "messages")]
    deletes = [t for action, t in order[6:] if action == "deleted"]
    assert len(deletes) == len(order) - 6
    n = deletes.index("devices")
    assert set(deletes[:n]) == {"messages"} and "messages" not in deletes[n:]
    # Compacted data carries no duplicate keys any more, so DuckDB and Polars agree without dedup.
    keys = pl.concat([pl.read_parquet(p, hive_partitioning=False) for p in tmp_path.glob("messages/*/*.parquet")])
    assert keys.select("agent_id", "boot_id", "seq").is_duplicated().sum() == 0
    # Idempotent: nothing left to do.
    again = compact_segments(tmp_path, before=FUTURE, min_age_s=0, orphan_age_s=0, settle_s=0)
    assert again.days == [] and again.files_before == 0


def test_late_segments_after_a_compaction_are_merged_by_the_next_one(tmp_path: Path) -> None:
    overlapping_segments(tmp_path)
    compact_segments(tmp_path, before=FUTURE, min_age_s=0, orphan_age_s=0, settle_s=0)
    values = [wire.encode(m) for m in make_stream(45)]
    SegmentWriter(tmp_path, "w3").write_arrow(decode_batch(values[35:45]).tables)  # 5 late, 5 known again
    before = seen(tmp_path)
    assert before["messages"].height == 45
    compact_segments(tmp_path, before=FUTURE, min_age_s=0, orphan_age_s=0, settle_s=0,
                     observer=lambda event: assert_same(seen(tmp_path, ledger=False), before, f"after {event}"))
    assert_same(seen(tmp_path), before)
    assert len(list(tmp_path.glob("messages/*/*.parquet"))) == 1


def test_fresh_files_and_today_are_left_alone(tmp_path: Path) -> None:
    overlapping_segments(tmp_path)
    files = parquet_files(tmp_path)
    assert compact_segments(tmp_path, before=FUTURE, settle_s=0).days == []  # all younger than min_age_s
    # Segment days are the samples' (2025-01-01) and the dead letters' arrival day (today): by default
    # only days before today are compacted.
    res = compact_segments(tmp_path, min_age_s=0, orphan_age_s=0, settle_s=0)
    assert res.days == ["2025-01-01"]
    assert [p for p in files if p.exists() and "dead_letters" in str(p)] == [
        p for p in files if "dead_letters" in str(p)]


def test_a_killed_flush_is_not_an_orphan_until_it_is_old(tmp_path: Path) -> None:
    overlapping_segments(tmp_path)
    res = compact_segments(tmp_path, before=FUTURE, min_age_s=0, settle_s=0)  # orphan_age_s: an hour
    assert res.orphans_deleted == 0
    assert len(list(tmp_path.glob("devices/*/w2-*.parquet"))) == 1  # could still be a flush being written


def test_one_compaction_at_a_time(tmp_path: Path) -> None:
    import fcntl

    from gpuledger.errors import GpuledgerError

    overlapping_segments(tmp_path)
    with (tmp_path / ".compact.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(GpuledgerError, match="another compaction"):
            compact_segments(tmp_path, before=FUTURE, min_age_s=0, settle_s=0)
    assert compact_segments(tmp_path, before=FUTURE, min_age_s=0, settle_s=0).days
