"""Storage commands as an operator runs them: merge the lake into a file, compact, retention, lake upkeep."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gpuledger import wire
from gpuledger.ingest.batch import decode_batch
from gpuledger.store import DeadLetter, Store
from tests.support.factories import make_stream


def gpuledger(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuledger.cli", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def worker_file(path: Path, messages: int) -> Path:
    with Store(path) as store:
        store.write_arrow(decode_batch([wire.encode(m) for m in make_stream(messages)]).tables)
        store.write_dead_letters([DeadLetter("truncated", b"\x00", "gpuledger.samples.v1", 0, 3)])
    return path


@pytest.mark.parametrize("command", ["merge", "compact", "retention", "lake-maintain"])
def test_storage_commands_have_an_explaining_help(command: str) -> None:
    out = gpuledger(command, "--help")
    assert out.returncode == 0, out.stderr
    assert f"usage: gpuledger {command}" in out.stdout and len(out.stdout.split()) > 80


@pytest.mark.slow
def test_compact_copies_a_database_and_says_what_it_needs(tmp_path: Path) -> None:
    db = worker_file(tmp_path / "g.duckdb", 12)
    copy = gpuledger("compact", "--db", str(db), "--out", str(tmp_path / "g2.duckdb"))
    assert copy.returncode == 0 and "swap the files" in copy.stdout
    with Store(tmp_path / "g2.duckdb", read_only=True) as store:
        assert store.count("devices") == 24
    exists = gpuledger("compact", "--db", str(db), "--out", str(tmp_path / "g2.duckdb"))
    assert exists.returncode == 2 and "hint:" in exists.stderr
    nothing = gpuledger("compact")
    assert nothing.returncode == 2 and "--lake CATALOG_URI" in nothing.stderr
    day = gpuledger("compact", "--day", "2026-11-20", "--db", str(db), "--out", str(tmp_path / "g3.duckdb"))
    assert day.returncode == 2 and "--day is a day of the lake" in day.stderr


@pytest.mark.slow
def test_retention_reports_each_tier(tmp_path: Path) -> None:
    db = worker_file(tmp_path / "g.duckdb", 6)  # samples from 2025-01-01, long before "now"
    assert gpuledger("attribute", "--db", str(db)).returncode == 0
    out = gpuledger("retention", "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert "raw: deleted 6 messages" in out.stdout
    assert "kept ledger of 2025-01: not closed" in out.stdout  # never exported --final: the ledger stays
    bad = gpuledger("retention", "--db", str(db), "--ledger-months", "1")
    assert bad.returncode == 2 and "must nest" in bad.stderr and "hint:" in bad.stderr


@pytest.mark.slow
def test_merge_from_the_lake_copies_its_messages_once_and_attribution_runs_on_them(tmp_path: Path) -> None:
    pytest.importorskip("pyiceberg", reason="the lake extra is not installed (pip install -e '.[test]')")
    from gpuledger.store.lake import LakeConfig, LakeStore

    catalog, warehouse = f"sqlite:///{tmp_path}/catalog.db", str(tmp_path / "warehouse")
    lake = LakeStore(LakeConfig(catalog, warehouse))
    assert lake.write_arrow(decode_batch([wire.encode(m) for m in make_stream(12)]).tables) == 12
    serving = tmp_path / "gpuledger.duckdb"
    out = gpuledger("merge", "--db", str(serving), "--lake", catalog, "--warehouse", warehouse)
    assert out.returncode == 0, out.stderr
    assert "merged 12 new messages" in out.stdout and "12 new messages" in out.stderr
    nothing = gpuledger("merge", "--db", str(serving))
    assert nothing.returncode == 2 and "--lake CATALOG_URI" in nothing.stderr and "hint:" in nothing.stderr
    again = gpuledger("merge", "--db", str(serving), "--lake", catalog, "--warehouse", warehouse)
    assert again.returncode == 0 and "merged 0 new messages" in again.stdout and "(12 in all)" in again.stdout
    with Store(serving, read_only=True) as store:
        assert (store.count("messages"), store.count("devices")) == (12, 24)
    attributed = gpuledger("attribute", "--db", str(serving))
    assert attributed.returncode == 0 and "attributed 12 messages" in attributed.stdout


@pytest.mark.slow
def test_lake_upkeep_commands_compact_expire_and_keep_unattributed_days(tmp_path: Path) -> None:
    pytest.importorskip("pyiceberg", reason="the lake extra is not installed (pip install -e '.[test]')")
    from gpuledger.store.lake import LakeConfig, LakeStore
    from gpuledger.store.lake.upkeep import partitions

    catalog, warehouse = f"sqlite:///{tmp_path}/catalog.db", str(tmp_path / "warehouse")
    lake_args = ("--lake", catalog, "--warehouse", warehouse)
    lake = LakeStore(LakeConfig(catalog, warehouse))
    stream = make_stream(6)
    for part in (stream[:3], stream[3:]):  # two flushes: two files per table and day
        lake.write_arrow(decode_batch([wire.encode(m) for m in part]).tables)
    (day,) = partitions(lake, "devices")
    assert day.files == 2

    young = gpuledger("compact", *lake_args)  # the default age rule: an old day (2025), so it is compacted
    assert young.returncode == 0, young.stderr
    assert "6 table partitions compacted, 12 files -> 6" in young.stdout  # five keyed tables and pods
    assert partitions(lake, "devices")[0].files == 1

    maintained = gpuledger("lake-maintain", *lake_args, "--expire-days", "0", "--keep-snapshots", "1")
    assert maintained.returncode == 0, maintained.stderr
    assert "0 table partitions compacted" in maintained.stdout and "expired" in maintained.stdout
    assert "data files" in maintained.stdout and "stay in the warehouse" in maintained.stdout
    assert len(LakeStore(LakeConfig(catalog, warehouse)).table("devices").snapshots()) == 1

    kept = gpuledger("retention", *lake_args, "--db", str(tmp_path / "none.duckdb"))
    assert kept.returncode == 0, kept.stderr
    assert "dropped 0 days" in kept.stdout and f"kept {day.label}:" in kept.stdout
    assert "no attribution run is recorded on the lake" in kept.stdout

    bad = gpuledger("lake-maintain")
    assert bad.returncode == 2 and "hint:" in bad.stderr
