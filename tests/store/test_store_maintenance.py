"""Store maintenance: compaction copies everything, merges are idempotent, segments read in place."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuledger import wire
from gpuledger.errors import StoreError
from gpuledger.ingest.batch import decode_batch
from gpuledger.ingest.segments import SegmentWriter
from gpuledger.store import DeadLetter, Store
from tests.support.factories import make_stream

TABLES = ("messages", "devices", "processes", "allocations", "field_errors", "pods", "dead_letters")


def contents(store: Store) -> dict[str, object]:
    return {t: store.query(f"SELECT * FROM {t} ORDER BY ALL") for t in TABLES}


def filled(path: Path, messages: int = 12) -> Store:
    store = Store(path)
    store.write_arrow(decode_batch([wire.encode(m) for m in make_stream(messages)]).tables)
    store.write_dead_letters([DeadLetter("bad", b"x", "t", 0, 5)])
    return store


def test_a_compacted_copy_holds_exactly_the_same_tables(tmp_path: Path) -> None:
    store = filled(tmp_path / "a.duckdb")
    assert store.compact_into(tmp_path / "b.duckdb") > 0
    with Store(tmp_path / "b.duckdb", read_only=True) as copy:
        got = contents(copy)
    want = contents(store)
    assert all(got[t].equals(want[t]) for t in TABLES)  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="exists"):
        store.compact_into(tmp_path / "b.duckdb")
    store.close()


def test_absorb_adds_only_what_is_missing_and_twice_changes_nothing(tmp_path: Path) -> None:
    filled(tmp_path / "w0.duckdb", 12).close()
    filled(tmp_path / "w1.duckdb", 20).close()  # the first 12 again (a rebalance), and 8 more
    with Store(tmp_path / "serving.duckdb") as serving:
        assert serving.absorb(tmp_path / "w0.duckdb") == 12
        assert serving.absorb(tmp_path / "w1.duckdb") == 8
        assert serving.absorb(tmp_path / "w1.duckdb") == 0
        assert (serving.count("messages"), serving.count("devices"), serving.count("dead_letters")) == (20, 40, 1)


def test_segments_of_two_writers_read_as_one_copy_per_message(tmp_path: Path) -> None:
    values = [wire.encode(m) for m in make_stream(10)]
    SegmentWriter(tmp_path, "w0").write_arrow(decode_batch(values).tables)
    SegmentWriter(tmp_path, "w1").write_arrow(decode_batch(values[4:]).tables)
    SegmentWriter(tmp_path, "w1").write_dead_letters([DeadLetter("bad", b"x", "t", 0, 5)] * 2)
    with Store.open_segments(tmp_path) as store:
        assert (store.count("messages"), store.count("devices"), store.count("dead_letters")) == (10, 20, 1)
        assert store.count("pods") == 2


def test_an_empty_segment_directory_reads_as_empty_tables(tmp_path: Path) -> None:
    with Store.open_segments(tmp_path) as store:
        assert store.count("messages") == 0
