"""Ingest against a real Kafka-protocol broker (tansu) in a consumer group.

Specification: published once or twice, every message is stored exactly once;
bad records land in dead_letters with their topic/partition/offset; offsets are
committed after the store, so the group's next member reads nothing old.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from gpuledger import wire
from gpuledger.ingest.consumer import Ingestor, run_ingest
from gpuledger.store import Store
from gpuledger.transport import KafkaPublisher, Record
from tests.support.factories import make_message, make_stream
from tests.support.kafka import KAFKA_GROUP_TIMING

pytestmark = pytest.mark.kafka


def publish(bootstrap: str, topic: str, items: Sequence[tuple[bytes, bytes]]) -> None:
    with KafkaPublisher(bootstrap, topic) as pub:
        for key, value in items:
            pub.publish(key, value)
        pub.flush(10)


def encoded(messages: Sequence[wire.Message]) -> list[tuple[bytes, bytes]]:
    return [(m.node.encode(), wire.encode(m)) for m in messages]


def ingest(store: Store, subscriber: Any, *, expect: int, idle_s: float = 3.0) -> Any:
    """Run until `expect` records were processed, or `idle_s` seconds passed
    without one; then leave the group, as a stopped ingest worker does."""
    try:
        return Ingestor(store, subscriber).run(max_messages=expect, max_idle_s=idle_s)
    finally:
        subscriber.close()


@pytest.mark.slow
def test_published_twice_stored_once_and_the_group_resumes_after_the_commit(
    kafka_broker: str, kafka_topic: str, kafka_subscriber: Callable[..., Any], unique_name: Callable[[str], str]
) -> None:
    store = Store()
    group = unique_name("ingest")
    messages = make_stream(60, nodes=3)
    publish(kafka_broker, kafka_topic, encoded(messages))

    first = ingest(store, kafka_subscriber(kafka_topic, group), expect=60)
    assert (first.records, first.stored, first.dead_letters) == (60, 60, 0)
    counts = {t: store.count(t) for t in ("messages", "devices", "processes", "allocations", "field_errors")}
    assert counts == {"messages": 60, "devices": 120, "processes": 120, "allocations": 120, "field_errors": 120}

    publish(kafka_broker, kafka_topic, encoded(messages))  # redelivery / agent replay
    again = ingest(store, kafka_subscriber(kafka_topic, group), expect=60)
    assert (again.records, again.stored, again.duplicates) == (60, 0, 60)
    assert {t: store.count(t) for t in counts} == counts

    # Everything is committed: the next member of the group starts at the end.
    last = ingest(store, kafka_subscriber(kafka_topic, group), expect=1, idle_s=2.0)
    assert last.records == 0


def test_bad_records_are_dead_letters_with_their_kafka_coordinates(
    kafka_broker: str, kafka_topic: str, kafka_subscriber: Callable[..., Any], unique_name: Callable[[str], str]
) -> None:
    good = wire.encode(make_message(seq=500))
    bad = {
        b"garbage": b"\x00\x01 not a message",
        b"unknown-version": good[:4] + (9).to_bytes(2, "little") + good[6:],
        b"truncated": good[: len(good) // 2],
    }
    valid = make_stream(12, nodes=2)
    items = encoded(valid)
    for i, (key, payload) in enumerate(bad.items()):
        items.insert(3 * i + 1, (key, payload))
    publish(kafka_broker, kafka_topic, items)

    # A witness in another group sees where each record really landed.
    witness: list[Record] = []
    sub = kafka_subscriber(kafka_topic, unique_name("witness"))
    deadline = time.monotonic() + 15
    while len(witness) < len(items) and time.monotonic() < deadline:
        witness.extend(sub.poll(0.2))
    where = {r.value: (r.topic, r.partition, r.offset) for r in witness}

    store = Store()
    stats = ingest(store, kafka_subscriber(kafka_topic, unique_name("ingest")), expect=len(items))
    assert (stats.stored, stats.dead_letters) == (12, 3)
    rows = store.query('SELECT topic, partition, "offset", reason, payload FROM dead_letters').iter_rows(named=True)
    got = {bytes(r["payload"]): r for r in rows}
    assert set(got) == set(bad.values())
    for payload, reason in zip(bad.values(), ("not a gpuledger message", "unknown schema version 9", "length mismatch")):
        row = got[payload]
        assert (row["topic"], row["partition"], row["offset"]) == where[payload]
        assert reason in row["reason"]
    stored_sources = set(store.query("SELECT source FROM messages")["source"].to_list())
    assert stored_sources == {"/".join(map(str, where[v])) for _, v in encoded(valid)}


def test_run_ingest_stops_cleanly_on_sigint(
    kafka_broker: str, kafka_topic: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    publish(kafka_broker, kafka_topic, encoded(make_stream(40)))
    db = tmp_path / "ingest.duckdb"
    timer = threading.Timer(3.0, os.kill, args=(os.getpid(), signal.SIGINT))
    before = signal.getsignal(signal.SIGINT)
    timer.start()
    try:
        with caplog.at_level(logging.INFO, logger="gpuledger.ingest.consumer"):
            stats = run_ingest(kafka_broker, kafka_topic, "sigint-ingest", db, log_every_s=0.0, max_idle_s=20.0,
                               **KAFKA_GROUP_TIMING)
    finally:
        timer.cancel()
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert stats.stored == 40
    messages = [r.getMessage() for r in caplog.records]
    assert any("SIGINT received" in m for m in messages)
    assert any(m.startswith("ingest stopped: 40 records") for m in messages)
    with Store(db, read_only=True) as store:  # closed by run_ingest: readable by another client
        assert store.count("messages") == 40
