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
