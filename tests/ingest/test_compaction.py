"""Parquet segments: compaction (one file per table and day; readers see exactly
the same rows before, after, and at every file-system step in between), merging
into the serving DuckDB file, and retention of merged, attributed days."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from gpuledger import wire
from gpuledger.analytics.job import run_attribution
from gpuledger.ingest.batch import decode_batch
from gpuledger.ingest.segment_merge import merge_segments, retire_segments
from gpuledger.ingest.segments import SegmentWriter, compact_segments
from gpuledger.store import DeadLetter, Store
from tests.support.factories import make_stream

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


@pytest.mark.slow
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


@pytest.mark.slow
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


def in_file(store: Store) -> dict[str, pl.DataFrame]:
    """``seen`` for a DuckDB file: every table and the attributed totals."""
    out = {t: store.query(f"SELECT * FROM {t} ORDER BY ALL") for t in TABLES}
    run_attribution(store)
    out["ledger"] = store.query("SELECT tenant, kind, sum(gpu_seconds) AS s, sum(energy_j) AS e "
                                "FROM ledger GROUP BY ALL ORDER BY ALL")
    return out


@pytest.mark.slow
def test_merging_segments_gives_the_serving_file_what_readers_see_once(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    overlapping_segments(root)
    want = seen(root)
    with Store(tmp_path / "serving.duckdb") as store:
        res = merge_segments(store, root, files_per_step=3)  # several transactions
        assert (res.messages, res.dead_letters) == (40, 2)
        assert res.segments == len(list(root.glob("messages/*/*.parquet")))
        assert_same(in_file(store), want)
        again = merge_segments(store, root)  # each segment is read once
        assert (again.segments, again.dead_letter_files, again.messages) == (0, 0, 0)
        # A compaction rewrites the files: read once more, nothing new, the record follows the files.
        compact_segments(root, before=FUTURE, min_age_s=0, orphan_age_s=0, settle_s=0)
        after = merge_segments(store, root)
        assert after.segments == 1 and after.messages == after.dead_letters == 0
        assert_same(in_file(store), want)
        listed = {p.relative_to(root).as_posix() for p in root.glob("*/*/*.parquet")}
        assert set(store.query("SELECT file FROM merged_segments")["file"]) <= listed
        # Late data in a new segment: only it is read.
        values = [wire.encode(m) for m in make_stream(46)]
        SegmentWriter(root, "w3").write_arrow(decode_batch(values[38:46]).tables)  # 6 new, 2 known
        late = merge_segments(store, root)
        assert (late.segments, late.messages) == (1, 6)
        assert store.count("messages") == 46


def test_retention_deletes_segment_days_only_once_merged_and_attributed(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    overlapping_segments(root)
    cutoff = 1_738_368_000 * 10**9  # 2025-02-01: the samples' day (2025-01-01) is before it
    with Store(tmp_path / "serving.duckdb") as store:
        kept = retire_segments(store, root, cutoff)
        assert kept.days_deleted == [] and "not merged" in kept.kept["2025-01-01"]
        merge_segments(store, root)
        kept = retire_segments(store, root, cutoff)
        assert kept.days_deleted == [] and "40 messages not attributed" in kept.kept["2025-01-01"]
        run_attribution(store)
        bill = store.query("SELECT tenant, sum(gpu_seconds) AS s FROM ledger GROUP BY ALL ORDER BY ALL")
        events: list[str] = []
        res = retire_segments(store, root, cutoff, observer=events.append)
        assert res.days_deleted == ["2025-01-01"] and res.files_deleted > 0 and not res.kept
        assert events[0] == "deleted messages/day=2025-01-01"  # readers stop choosing the day first
        assert not list(root.glob("*/day=2025-01-01"))
        assert list(root.glob("dead_letters/*/*.parquet"))  # arrival day (today): not before the cut-off
        assert store.query("SELECT tenant, sum(gpu_seconds) AS s FROM ledger GROUP BY ALL ORDER BY ALL").equals(bill)
        assert merge_segments(store, root).messages == 0


def test_a_pods_file_filed_a_day_before_its_messages_waits_for_their_merge(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    overlapping_segments(root)
    pods = sorted(root.glob("pods/day=2025-01-01/w0-*.parquet"))[0]
    earlier = root / "pods" / "day=2024-12-31"
    earlier.mkdir()
    pods.rename(earlier / pods.name)  # last seen before midnight, its messages' interval after
    cutoff = 1_735_689_600 * 10**9  # 2025-01-01: only the pods day is before it
    with Store(tmp_path / "serving.duckdb") as store:
        kept = retire_segments(store, root, cutoff)
        assert kept.days_deleted == [] and "not merged" in kept.kept["2024-12-31"]
        merge_segments(store, root)
        assert retire_segments(store, root, cutoff).days_deleted == ["2024-12-31"]
