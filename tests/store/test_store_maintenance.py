"""Store maintenance: compaction copies everything into a new file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuledger import wire
from gpuledger.errors import StoreError
from gpuledger.ingest.batch import decode_batch
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
