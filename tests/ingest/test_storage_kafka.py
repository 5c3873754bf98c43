"""Storage layout under a running ingest: readers while it writes, N workers, merge.

Specification: a worker holds its DuckDB file only while a flush writes, so
the API answers from the file while ingest runs; two workers in one consumer
group split a topic, and when one dies the other takes its partitions; their
files merged hold every message exactly once.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gpuledger.api.app import create_app
from gpuledger.errors import StoreError
from gpuledger.store import Store
from gpuledger.transport import KafkaPublisher
from tests.support.ingest_runs import assert_same, encoded, ingest_cmd, publish, reference, snapshot, started, stream
from tests.support.live_server import serving

pytestmark = pytest.mark.kafka


def count(db: Path, timeout_s: float = 10) -> int:
    """Messages in a worker's file, opened read-only between its flushes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with Store(db, read_only=True) as store:
                return store.count("messages")
        except StoreError:
            if time.monotonic() > deadline or not db.exists():
                return 0 if not db.exists() else -1
            time.sleep(0.02)


def publish_slowly(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]], per_s: float,
                   stop: threading.Event) -> None:
    with KafkaPublisher(bootstrap, topic) as pub:
        for key, value in values:
            if stop.is_set():
                return
            pub.publish(key, value)
            pub.flush(30)
            time.sleep(1 / per_s)


@pytest.mark.slow
def test_two_workers_split_a_topic_and_the_survivor_takes_over_without_loss_or_duplicates(
    tansu: Any, tmp_path: Path
) -> None:
    topic = tansu.create_topic(partitions=2)
    messages = stream(30, nodes=8)  # 240 messages over 8 keys: both partitions get some
    values = encoded(messages)
    first, rest = values[:120], values[120:]
    dbs = [tmp_path / "w0.duckdb", tmp_path / "w1.duckdb"]
    procs = [subprocess.Popen(ingest_cmd(tansu.bootstrap, topic, "workers", db, "--batch-max", "6", "--linger", "0",
                                         "--max-idle", "4"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for db in dbs]
    stop = threading.Event()
    # The first half trickles in (10 a second) while the group forms, so neither worker can drain it
    # alone before the other is assigned a partition; the rest comes only after worker 0 died.
    trickle = threading.Thread(target=publish_slowly, args=(tansu.bootstrap, topic, first, 10.0, stop), daemon=True)
    try:
        for p in procs:
            started(p)
        trickle.start()
        deadline = time.monotonic() + 30
        while min(count(db) for db in dbs) <= 0:  # both hold a partition and have stored from it
            assert time.monotonic() < deadline, f"the workers did not split the topic: {[count(d) for d in dbs]}"
            time.sleep(0.1)
        procs[0].send_signal(signal.SIGKILL)  # worker 0 dies mid-stream
        procs[0].wait()
        died_with = count(dbs[0])
        trickle.join(60)
        publish(tansu.bootstrap, topic, rest)
        assert 0 < died_with < len(messages)
        assert procs[1].wait(90) == 0  # the survivor drains both partitions, then idles out
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    want = reference(tansu.bootstrap, topic, len(messages), tmp_path / "ref.duckdb")
    survivor = count(dbs[1])
    with Store(dbs[1], read_only=True) as store:  # the survivor read both partitions: it took over
        assert store.scalar("SELECT count(DISTINCT split_part(source, '/', 2)) FROM messages") == 2
    assert died_with + survivor >= len(messages)  # together they hold everything (perhaps some twice)
    merged = Store(tmp_path / "merged.duckdb")
    assert merged.absorb(dbs[0]) + merged.absorb(dbs[1]) == len(messages)
    assert merged.absorb(dbs[1]) == 0  # merging again changes nothing
    assert_same(snapshot(merged), want)
    merged.close()


@pytest.mark.slow
def test_the_api_answers_from_the_file_while_ingest_writes_it(kafka_broker: str, kafka_topic: str,
                                                             tmp_path: Path) -> None:
    messages = stream(45)  # 180 messages
    publish(kafka_broker, kafka_topic, encoded(messages))
    db = tmp_path / "live.duckdb"
    Store(db).close()  # the file exists before the API starts
    proc = subprocess.Popen(ingest_cmd(kafka_broker, kafka_topic, "live", db, "--batch-max", "10", "--linger",
                                       "0", "--max-idle", "3"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    statuses: list[int] = []
    seen_nodes: list[int] = []
    try:
        started(proc)
        with serving(create_app(db, auth=False, cache_ttl_s=0)) as client:
            while proc.poll() is None:
                r = client.get("/v1/fleet", params={"start": "2025-01-01T00:00:00Z", "end": "2025-01-02T00:00:00Z"})
                statuses.append(r.status_code)
                if r.status_code == 503:
                    assert r.json()["error"]["code"] == "database_busy" and "retry-after" in r.headers
                else:
                    assert r.status_code == 200, r.text
                    seen_nodes.append(r.json()["total_rows"])  # GPUs the API sees in the file so far
                time.sleep(0.05)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ok = statuses.count(200)
    assert max(seen_nodes) == 16, f"the API never saw all 4 nodes x 4 GPUs: {seen_nodes}"
    # A worker flushing back to back (10 messages per flush) holds the file about half the time; at a
    # fleet's pace (one flush per second or less) it is free most of the time.
    assert ok >= 5 and ok / len(statuses) >= 0.25, f"{ok} of {len(statuses)} requests answered while ingest ran"
    assert len(set(seen_nodes)) >= 2, f"the API did not see the data arrive: {seen_nodes}"
    with Store(db, read_only=True) as store:
        assert store.count("messages") == len(messages)  # readers cost ingest nothing but short waits


@pytest.mark.slow
def test_parquet_segments_from_the_broker_queried_in_place_equal_the_duckdb_store(
    kafka_broker: str, kafka_topic: str, tmp_path: Path
) -> None:
    from gpuledger.ingest.batch import decode_batch
    from gpuledger.ingest.consumer import Ingestor
    from gpuledger.ingest.segments import SegmentWriter
    from gpuledger.transport import KafkaSubscriber

    messages = stream(30)  # 120 messages
    publish(kafka_broker, kafka_topic, encoded(messages))
    want = reference(kafka_broker, kafka_topic, len(messages), tmp_path / "ref.duckdb")
    root = tmp_path / "segments"
    sub = KafkaSubscriber(kafka_broker, kafka_topic, "segments", max_poll_interval_ms=1000, session_timeout_ms=1000)
    try:
        Ingestor(SegmentWriter(root, "w0"), sub, batch_max=25).run(max_messages=len(messages), max_idle_s=10)
    finally:
        sub.close()
    # A second worker re-wrote a batch the first had written but not committed (a rebalance):
    SegmentWriter(root, "w1").write_arrow(decode_batch([v for _, v in encoded(messages[:30])],
                                                       [None] * 30).tables)
    assert sorted(p.name for p in (root / "devices").iterdir()) == ["day=2025-01-01"]
    assert not list(root.rglob("*.tmp"))
    store = Store.open_segments(root)
    got = snapshot(store, sources=False)
    store.close()
    for name in ("messages", "devices", "processes", "allocations", "field_errors", "pods", "ledger", "totals"):
        assert got[name].equals(snapshot_want(want)[name]), name


def snapshot_want(want: dict[str, Any]) -> dict[str, Any]:
    """The reference without where each message was read from (a re-written batch has no source)."""
    out = dict(want)
    out["messages"] = want["messages"].drop("source")
    return out
