"""Ingest under failure, against a real Kafka-protocol broker (tansu).

Specification: whatever happens to the ingest process or the broker, the store
ends up holding exactly what an uninterrupted run stores -- every row once,
every attributed total the same -- and bad input is set aside with its
coordinates and a reason without stopping the partition.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuledger import wire
from gpuledger.analytics.job import run_attribution
from gpuledger.ingest.clock import ClockCheck
from gpuledger.ingest.consumer import Ingestor
from gpuledger.store import Store
from gpuledger.transport import KafkaSubscriber
from tests.support.factories import EPOCH_NS, make_message
from tests.support.ingest_runs import (
    assert_same,
    encoded,
    ingest_cmd,
    publish,
    reference,
    snapshot,
    started,
    stream,
)
from tests.support.kafka import KAFKA_GROUP_TIMING
from tests.support.system import wait_until
from tests.support.wire_frames import join, split

pytestmark = pytest.mark.kafka


def stored(db: Path) -> int:
    with Store(db, read_only=True) as store:
        return store.count("messages")


@pytest.mark.slow
def test_kill_9_at_random_points_then_restart_stores_what_an_uninterrupted_run_stores(
    kafka_broker: str, kafka_topic: str, tmp_path: Path
) -> None:
    messages = stream(100)  # 400 messages, 3 partitions
    publish(kafka_broker, kafka_topic, encoded(messages))
    want = reference(kafka_broker, kafka_topic, len(messages), tmp_path / "ref.duckdb")

    db = tmp_path / "killed.duckdb"
    seed = int(os.environ.get("KILL_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    cmd = ingest_cmd(kafka_broker, kafka_topic, "killed", db, "--batch-max", "7", "--linger", "0")
    counts = []
    for _ in range(5):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started(proc)
        time.sleep(rng.uniform(0.8, 2.0))  # the group join takes ~1 s, then anywhere in the stream
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        counts.append(stored(db) if db.exists() else 0)
    mid_stream = [c for c in counts if 0 < c < len(messages)]
    assert len(mid_stream) >= 2, f"kills did not land mid-stream (seed {seed}): stored after each kill {counts}"
    assert counts == sorted(counts), f"a kill lost committed rows (seed {seed}): {counts}"

    done = subprocess.run([*cmd, "--max-idle", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same(snapshot(db), want)


def test_broker_restart_mid_stream_ingest_reconnects_and_catches_up(private_tansu: Any, tmp_path: Path) -> None:
    bootstrap = private_tansu.bootstrap
    topic = private_tansu.create_topic(partitions=2)
    messages = stream(40)  # 160 messages
    first = messages[:80]
    publish(bootstrap, topic, encoded(first))

    store = Store(tmp_path / "g.duckdb")
    sub = KafkaSubscriber(bootstrap, topic, "restart", **KAFKA_GROUP_TIMING)
    stop = threading.Event()
    worker = threading.Thread(target=lambda: Ingestor(store, sub).run(stop, retry_max_s=1.0), daemon=True)
    worker.start()
    try:
        wait_until(lambda: store.count("messages") == 80, 30, "the first half stored")
        private_tansu.restart()  # comes back empty: no topic, no committed offsets
        # The agents' spools hold everything not acknowledged by the new broker: they re-send it all.
        # (The ingest worker's consumer may auto-create the topic first, polling the empty broker.)
        private_tansu.create_topic(topic, partitions=2, exist_ok=True)
        publish(bootstrap, topic, encoded(messages))
        wait_until(lambda: store.count("messages") == len(messages), 60, "all messages after the restart")
    finally:
        stop.set()
        worker.join(15)
        sub.close()
    assert not worker.is_alive()
    assert store.scalar("SELECT count(DISTINCT (agent_id, boot_id, seq)) FROM messages") == len(messages)
    assert store.count("devices") == 4 * len(messages)
    assert store.count("dead_letters") == 0
    store.close()


# --- poison, clocks and late data ------------------------------------------------

NOW_NS = EPOCH_NS + 3 * 86400 * 10**9  # "now" for the clock check: three days after the test data starts


def poison_set(data: st.DataObject) -> dict[str, bytes]:
    good = wire.encode(make_message(agent_id="p", seq=10**6))
    header, counts, tables = split(good)
    return {
        "random bytes": data.draw(st.binary(min_size=0, max_size=300)),
        "truncated": good[: data.draw(st.integers(1, len(good) - 1))],
        "wrong types": join({**header, "seq": data.draw(st.sampled_from(["7", -1, 1.5, None, [1]]))}, counts, tables),
        "unknown version": good[:4] + data.draw(st.integers(2, 2**16 - 1)).to_bytes(2, "little") + good[6:],
        "oversize": good[:28] + b"\0" * (wire.MAX_MESSAGE_BYTES + 1 - 28),
        "future": wire.encode(make_message(agent_id="p", seq=10**6 + 1, start_ns=NOW_NS + 86400 * 10**9)),
        "ancient": wire.encode(make_message(agent_id="p", seq=10**6 + 2, start_ns=NOW_NS - 400 * 86400 * 10**9)),
    }


EXPECTED_REASON = {
    "truncated": ("length mismatch", "shorter than the frame"),
    "wrong types": ("header field seq",),
    "unknown version": ("unknown schema version",),
    "oversize": ("exceeds the",),
    "future": ("quarantined: interval ends",),
    "ancient": ("quarantined: interval starts",),
}


@pytest.mark.slow
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_poison_interleaved_with_valid_traffic_is_set_aside_and_the_partition_moves_on(
    tansu: Any, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    topic = tansu.create_topic(partitions=2)
    valid = stream(10, nodes=2)  # 20 messages, two keys
    bad = poison_set(data)
    items = encoded(valid)
    for i, payload in enumerate(bad.values()):  # each poison behind a valid record of some node
        items.insert(data.draw(st.integers(0, len(items))), (f"node-{i % 2}".encode(), payload))
    publish(tansu.bootstrap, topic, items)

    witness: dict[bytes, tuple[str, int, int]] = {}
    sub = KafkaSubscriber(tansu.bootstrap, topic, f"witness-{topic}", **KAFKA_GROUP_TIMING)
    try:
        deadline = time.monotonic() + 20
        while len(witness) < len(items) and time.monotonic() < deadline:
            witness.update({r.value: (r.topic, r.partition, r.offset) for r in sub.poll(0.3)})
    finally:
        sub.close()

    store = Store(tmp_path_factory.mktemp("poison") / "p.duckdb")
    sub = KafkaSubscriber(tansu.bootstrap, topic, f"ingest-{topic}", **KAFKA_GROUP_TIMING)
    check = ClockCheck(max_future_s=300, max_age_s=7 * 86400)
    try:
        stats = Ingestor(store, sub, batch_max=5, clock_check=check, wall_clock_ns=lambda: NOW_NS).run(
            max_messages=len(items), max_idle_s=5)
    finally:
        sub.close()
    assert (stats.stored, stats.dead_letters, stats.quarantined) == (len(valid), len(bad), 2)
    rows = {bytes(r["payload"]): r for r in store.query(
        'SELECT topic, partition, "offset", reason, payload FROM dead_letters').iter_rows(named=True)}
    for name, payload in bad.items():
        row = rows[payload]
        assert (row["topic"], row["partition"], row["offset"]) == witness[payload], name
        assert any(text in row["reason"] for text in EXPECTED_REASON.get(name, ("",))), (name, row["reason"])
    assert store.count("messages") == len(valid)
    store.close()


@pytest.mark.slow
def test_late_out_of_order_spool_replay_is_attributed_as_if_it_came_in_order(
    kafka_broker: str, kafka_topic: str, tmp_path: Path
) -> None:
    messages = stream(30)  # 120 messages: 4 nodes x 30 ticks
    # node-1 was cut off for ticks 5..24; its spool replays them later, newest first.
    held = [m for m in messages if m.node == "node-1" and 5 <= m.seq < 25]
    on_time = [m for m in messages if m not in held]
    want = snapshot_after(kafka_broker, kafka_topic, messages, tmp_path / "in-order.duckdb", "in-order")

    topic2 = kafka_topic + "-late"
    store = Store(tmp_path / "late.duckdb")
    publish(kafka_broker, topic2, encoded(on_time))
    ingest_all(store, kafka_broker, topic2, "late", len(on_time))
    before = run_attribution(store)
    assert before.messages == len(on_time)
    publish(kafka_broker, topic2, encoded(list(reversed(held))))
    ingest_all(store, kafka_broker, topic2, "late", len(held))
    after = run_attribution(store)  # incremental: exactly the late messages' intervals are attributed now
    assert after.messages == len(held)
    assert_same(snapshot(store, sources=False), want)
    store.close()


def ingest_all(store: Store, bootstrap: str, topic: str, group: str, n: int) -> None:
    sub = KafkaSubscriber(bootstrap, topic, group, **KAFKA_GROUP_TIMING)
    try:
        stats = Ingestor(store, sub).run(max_messages=n, max_idle_s=10)
    finally:
        sub.close()
    assert stats.records == n


def snapshot_after(bootstrap: str, topic: str, messages: Sequence[wire.Message], db: Path,
                   group: str) -> dict[str, pl.DataFrame]:
    publish(bootstrap, topic, encoded(messages))
    with Store(db) as store:
        ingest_all(store, bootstrap, topic, group, len(messages))
        return snapshot(store, sources=False)
