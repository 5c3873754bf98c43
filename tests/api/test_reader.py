"""The API's result cache: keyed by the database file's version, one computation per key at a time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from gpuledger.api.reader import Database
from gpuledger.store import Store


def test_a_commit_changes_the_version_and_misses_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "v.duckdb"
    Store(path).close()
    db = Database(path, None)
    calls: list[int] = []
    assert db.cached("k", lambda: calls.append(1) or len(calls)) == 1
    assert db.cached("k", lambda: calls.append(1) or len(calls)) == 1  # same version: cached
    with Store(path) as store:
        store.execute("CREATE TABLE t (x INTEGER)")
        store.execute("INSERT INTO t VALUES (1)")
    assert db.cached("k", lambda: calls.append(1) or len(calls)) == 2  # a writer committed: recomputed


def test_concurrent_callers_share_one_computation_and_errors_are_not_cached(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    Store(path).close()
    db = Database(path, None)
    calls: list[int] = []

    def slow() -> int:
        calls.append(1)
        time.sleep(0.2)
        return 42

    out: list[int] = []
    threads = [threading.Thread(target=lambda: out.append(db.cached("k", slow))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [42] * 8 and len(calls) == 1

    def boom() -> int:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        db.cached("e", boom)
    assert db.cached("e", lambda: 7) == 7


def test_an_open_store_is_never_cached() -> None:
    store = Store(":memory:")
    db = Database(None, store)
    n = iter(range(10))
    assert (db.cached("k", lambda: next(n)), db.cached("k", lambda: next(n))) == (0, 1)
    store.close()
