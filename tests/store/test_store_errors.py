"""The store's typed errors: each raised where it happens, and no DuckDB exception gets past the Store."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest

from gpuledger.errors import StoreCorrupt, StoreError, StoreLocked, StoreMissingTable
from gpuledger.ingest.opener import FileOpener
from gpuledger.store import DeadLetter, Store
from tests.support.factories import make_message


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A file another process holds open for writing (as a worker with --hold-db, or mid-flush)."""
    path = tmp_path_factory.mktemp("held") / "g.duckdb"
    Store(path).close()
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom gpuledger.store import Store\ns = Store(sys.argv[1])\n"
         "print('ready', flush=True)\nsys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
        yield path
    finally:
        if writer.stdin is not None:
            writer.stdin.close()
        writer.wait(10)


@pytest.mark.parametrize("read_only", [False, True], ids=["second-writer", "reader"])
def test_a_file_held_by_a_writer_raises_store_locked_with_a_hint(held: Path, read_only: bool) -> None:
    with pytest.raises(StoreLocked) as caught:
        Store(held, read_only=read_only)
    assert str(held) in str(caught.value) and "read_only=True" in caught.value.hint


def test_the_ingest_opener_waits_for_a_held_file_then_gives_up_with_store_locked(held: Path) -> None:
    pauses: list[float] = []
    with pytest.raises(StoreLocked):
        FileOpener(held, lock_wait_s=0.2, sleep=pauses.append)
    assert pauses  # it waited (and retried) before giving up


def test_a_file_that_is_not_a_database_raises_store_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "notes.duckdb"
    path.write_bytes(b"not a database" * 1000)
    with pytest.raises(StoreCorrupt) as caught:
        Store(path)
    assert "not a gpuledger DuckDB database" in caught.value.hint


def test_a_missing_table_raises_store_missing_table(tmp_path: Path) -> None:
    path = tmp_path / "g.duckdb"
    with Store(path) as store:
        store.execute("DROP TABLE ledger")
    with Store(path, read_only=True) as store:
        with pytest.raises(StoreMissingTable, match="ledger"):
            store.query("SELECT * FROM ledger")
        with pytest.raises(StoreMissingTable):
            store.count("ledger")


def _in_transaction(store: Store) -> None:
    with store.transaction() as tx:
        tx.execute("INSERT INTO merged_segments (file) VALUES ('x')")


def _calls(store: Store) -> dict[str, Callable[[], object]]:
    frame = pl.DataFrame({"file": ["x"]})
    return {
        "execute": lambda: store.execute("INSERT INTO merged_segments (file) VALUES ('x')"),
        "append": lambda: store.append("merged_segments", frame),
        "write_messages": lambda: store.write_messages([make_message(seq=1)]),
        "write_dead_letters": lambda: store.write_dead_letters([DeadLetter("bad", b"x", "t", 0, 1)]),
        "transaction": lambda: _in_transaction(store),
        "query": lambda: store.query("SELECT nope FROM messages"),
        "scalar": lambda: store.scalar("SELECT nope FROM messages"),
        "compact_into": lambda: store.compact_into(Path(store.path).with_name("copy.duckdb")),
    }


METHODS = ("execute", "append", "write_messages", "write_dead_letters", "transaction", "query", "scalar",
           "compact_into")


@pytest.mark.parametrize("method", METHODS)
def test_every_store_method_raises_store_error_not_duckdbs_own(tmp_path: Path, method: str) -> None:
    path = tmp_path / "g.duckdb"
    Store(path).close()
    with Store(path, read_only=True) as store:  # every write is refused; the bad queries fail to bind
        with pytest.raises(StoreError):
            _calls(store)[method]()
