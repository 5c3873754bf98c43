"""``gpuledger attribute --shards`` as an operator runs it: shards run once, a re-run finds none, a late
message re-runs its shard, and a mistake says what to do."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gpuledger import wire
from gpuledger.ingest.batch import decode_batch
from gpuledger.store import Store
from tests.support.factories import EPOCH_NS, make_message

MINUTE_NS = 60 * 10**9


def gpuledger(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuledger.cli", *args], capture_output=True, text=True, timeout=300,
                          check=False)


def write(path: Path, messages: list[wire.Message]) -> None:
    with Store(path) as store:
        store.write_arrow(decode_batch([wire.encode(m) for m in messages]).tables)


def tick(seq: int, minutes: float, node: str) -> wire.Message:
    """A 10-minute interval of ``node`` starting ``minutes`` after the factories' epoch."""
    return make_message(seq=seq, start_ns=EPOCH_NS + int(minutes * MINUTE_NS), tick_ns=10 * MINUTE_NS,  # type: ignore[arg-type]
                        node=node, agent_id=f"agent-{node}")


@pytest.mark.slow
def test_shards_run_once_and_a_late_message_reruns_only_its_shard(tmp_path: Path) -> None:
    db = tmp_path / "g.duckdb"
    write(db, [tick(i, 10 * i, node) for node in ("n0", "n1", "n2", "n3") for i in range(12) if (node, i) != ("n1", 8)])
    first = gpuledger("attribute", "--db", str(db), "--shards", "--node-groups", "2")
    assert first.returncode == 0, first.stderr
    assert "attributed 4 shards (2 node groups per hour) in this process: 47 messages" in first.stdout
    again = gpuledger("attribute", "--db", str(db), "--shards", "--node-groups", "2")
    assert again.returncode == 0 and "attributed 0 shards" in again.stdout
    write(db, [tick(8, 80, "n1")])  # n1's interval of hour 1 arrives late; n1 shares its group with n3
    late = gpuledger("attribute", "--db", str(db), "--shards", "--node-groups", "2")
    assert late.returncode == 0 and "attributed 1 shards" in late.stdout
    with Store(db, read_only=True) as store:
        assert store.count("attributed") == 48
        assert store.scalar("SELECT sum(intervals) FROM ledger_hourly WHERE node = 'n1'") == \
            store.scalar("SELECT count(*) FROM ledger WHERE node = 'n1'")


@pytest.mark.slow
def test_an_unreachable_ray_cluster_is_an_error_with_a_hint_and_books_nothing(tmp_path: Path) -> None:
    db = tmp_path / "g.duckdb"
    write(db, [tick(0, 0, "n0")])
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = gpuledger("attribute", "--db", str(db), "--ray", f"127.0.0.1:{port}")
    assert out.returncode == 2, out.stderr
    assert f"error: cannot reach the Ray cluster at 127.0.0.1:{port}" in out.stderr and "hint:" in out.stderr
    bad = gpuledger("attribute", "--db", str(db), "--ray", "head-without-port")
    assert bad.returncode == 2 and "is not a Ray address" in bad.stderr and "hint: ray://" in bad.stderr
    with Store(db, read_only=True) as store:
        assert store.count("attributed") == 0


@pytest.mark.slow
def test_attribute_on_the_lake_reruns_a_late_shard_and_books_what_the_file_books(tmp_path: Path) -> None:
    pytest.importorskip("pyiceberg", reason="the lake extra is not installed")
    from gpuledger.analytics.job import run_attribution
    from gpuledger.store.lake import LakeConfig, LakeStore, scan

    lake = ["--lake", f"sqlite:///{tmp_path}/catalog.db", "--warehouse", str(tmp_path / "warehouse")]
    store = LakeStore(LakeConfig(lake[1], lake[3]))
    on_time = [tick(i, 10 * i, node) for node in ("n0", "n1", "n2", "n3") for i in range(12) if (node, i) != ("n1", 8)]
    store.write_messages(on_time)
    first = gpuledger("attribute", *lake, "--node-groups", "2")
    assert first.returncode == 0, first.stderr
    assert "attributed 4 shards (2 node groups per hour) in this process from the lake" in first.stdout
    assert "47 messages" in first.stdout
    store.write_messages([tick(8, 80, "n1")])  # late: n1's interval of hour 1, in the shard it shares with n3
    late = gpuledger("attribute", *lake, "--node-groups", "2")  # (nothing new: tests/analytics/test_shards_lake.py)
    assert late.returncode == 0 and "attributed 1 shards" in late.stdout and "12 messages" in late.stdout
    with Store(tmp_path / "g.duckdb") as file:  # the same messages through the embedded path
        file.write_messages([*on_time, tick(8, 80, "n1")])
        run_attribution(file)
        want = file.query("SELECT node, sum(capacity_ns)::BIGINT AS c, sum(gpu_ps)::BIGINT AS p FROM ledger_hourly "
                          "GROUP BY ALL ORDER BY ALL").rows()
    rows = scan(store, "ledger_hourly").group_by("node").aggregate([("capacity_ns", "sum"), ("gpu_ps", "sum")])
    assert sorted(zip(*(rows[c].to_pylist() for c in ("node", "capacity_ns_sum", "gpu_ps_sum")), strict=True)) == want


def test_attribute_on_the_lake_refuses_db_only_options_with_a_hint(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("pyiceberg", reason="the lake extra is not installed")
    from gpuledger.cli import main

    lake = ["--lake", f"sqlite:///{tmp_path}/catalog.db", "--warehouse", str(tmp_path / "warehouse")]
    for extra, says in ((["--db", str(tmp_path / "g.duckdb")], "--lake and --db do not go together"),
                        (["--ledger-window-days", "3"], "--lake and --ledger-window-days do not go together"),
                        (["--every", "60"], "--every is not built for the lake yet"),
                        (["--warehouse", ""], "the lake needs both a catalog and a warehouse")):
        assert main(["attribute", *lake, *extra]) == 2
        err = capsys.readouterr().err
        assert f"error: {says}" in err and "hint:" in err, err
    assert not (tmp_path / "g.duckdb").exists() and not (tmp_path / "catalog.db").exists()  # nothing opened
