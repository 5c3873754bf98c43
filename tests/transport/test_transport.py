"""Transport: the in-memory twin's contract, then the same contract on a real
Kafka-protocol broker (tansu), and failures that must surface, not vanish."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from gpuledger.errors import TransportError
from gpuledger.transport import (
    DEFAULT_COMPRESSION,
    KafkaPublisher,
    KafkaSubscriber,
    MemoryTransport,
    Publisher,
    Record,
    Subscriber,
    next_offsets,
)

# --- MemoryTransport -------------------------------------------------------------


def test_memory_transport_is_both_sides_of_the_seam() -> None:
    t = MemoryTransport()
    assert isinstance(t, Publisher) and isinstance(t, Subscriber)


def test_memory_returns_the_same_bytes_with_consecutive_offsets() -> None:
    t = MemoryTransport("topic-a")
    for i in range(5):
        t.publish(b"node-1", b"value-%d" % i)
    got = t.poll(0)
    assert [(r.topic, r.partition, r.offset, r.key, r.value) for r in got] == [
        ("topic-a", 0, i, b"node-1", b"value-%d" % i) for i in range(5)
    ]
    assert got[0].source == "topic-a/0/0"
    assert t.poll(0) == []


def test_memory_keeps_one_key_in_one_partition_in_order() -> None:
    t = MemoryTransport(partitions=4)
    for i in range(40):
        t.publish(b"node-%d" % (i % 5), b"%d" % i)
    got = t.poll(0, max_records=1000)
    assert len(got) == 40
    for node in range(5):
        mine = [r for r in got if r.key == b"node-%d" % node]
        assert len({r.partition for r in mine}) == 1
        assert [int(r.value or b"") for r in mine] == sorted(int(r.value or b"") for r in mine)


def test_memory_poll_respects_max_records() -> None:
    t = MemoryTransport(partitions=3)
    for i in range(10):
        t.publish(b"%d" % i, b"v")
    sizes = [len(t.poll(0, max_records=4)) for _ in range(4)]
    assert sizes == [4, 4, 2, 0]


def test_memory_poll_waits_for_a_publish_from_another_thread() -> None:
    t = MemoryTransport()
    threading.Timer(0.05, t.publish, args=(b"k", b"late")).start()
    start = time.monotonic()
    got = t.poll(5.0)
    assert [r.value for r in got] == [b"late"] and time.monotonic() - start < 2.0


def test_memory_poll_times_out_empty() -> None:
    start = time.monotonic()
    assert MemoryTransport().poll(0.05) == []
    assert 0.04 <= time.monotonic() - start < 1.0


def test_memory_rewind_redelivers_only_uncommitted_records() -> None:
    t = MemoryTransport(partitions=2)
    for i in range(6):
        t.publish(b"%d" % i, b"%d" % i)
    first = t.poll(0)
    committed = [r for r in first if r.partition == 0]
    t.commit(committed)
    assert t.lag() == 6 - len(committed)
    t.rewind()  # a restarted consumer in the same group
    again = t.poll(0)
    assert sorted(r.value or b"" for r in again) == sorted(r.value or b"" for r in first if r.partition == 1)


def test_memory_outage_raises_transport_error_with_a_hint() -> None:
    t = MemoryTransport()
    t.available = False
    for call in (lambda: t.publish(b"k", b"v"), t.flush, lambda: t.poll(0)):
        with pytest.raises(TransportError, match="simulated outage") as info:
            call()
        assert "available = True" in info.value.hint
    t.available = True
    t.publish(b"k", b"v")
    assert len(t) == 1


def test_memory_refuses_commits_for_another_topic() -> None:
    with pytest.raises(TransportError, match="topic"):
        MemoryTransport("a").commit([Record("b", 0, 0, None, b"")])


def test_next_offsets_is_highest_plus_one_per_partition() -> None:
    records = [Record("t", 0, 5, None, b""), Record("t", 0, 3, None, b""), Record("t", 1, 0, None, b"")]
    assert next_offsets(records) == {("t", 0): 6, ("t", 1): 1}


# --- Kafka (tansu) ---------------------------------------------------------------


def poll_until(sub: Subscriber, n: int, timeout_s: float = 15.0) -> list[Record]:
    """Poll until n records arrived or timeout_s seconds passed (bounded: never hangs)."""
    got: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        got.extend(sub.poll(0.2))
    return got


@pytest.mark.kafka
def test_kafka_round_trip_keeps_bytes_keys_and_per_key_order(
    kafka_broker: str, kafka_topic: str, kafka_subscriber: Callable[..., Any]
) -> None:
    values = {b"node-%d" % n: [b"%d:%d" % (n, i) + bytes(range(256)) for i in range(20)] for n in range(4)}
    with KafkaPublisher(kafka_broker, kafka_topic) as pub:
        for i in range(20):
            for key, vals in values.items():
                pub.publish(key, vals[i])
        pub.flush(10)
    got = poll_until(kafka_subscriber(kafka_topic, "g-roundtrip"), 80)
    assert len(got) == 80
    for key, vals in values.items():
        mine = [r for r in got if r.key == key]
        assert len({r.partition for r in mine}) == 1  # keyed by node
        assert [r.value for r in sorted(mine, key=lambda r: r.offset)] == vals


@pytest.mark.kafka
@pytest.mark.parametrize("codec", [DEFAULT_COMPRESSION, "gzip", None])
def test_kafka_every_producer_codec_reaches_the_consumer_unchanged(
    kafka_broker: str, kafka_topic: str, kafka_subscriber: Callable[..., Any], codec: str | None
) -> None:
    values = [b"%d:" % i + bytes(range(256)) * 8 for i in range(40)]  # compressible, like node messages
    with KafkaPublisher(kafka_broker, kafka_topic, compression_type=codec) as pub:
        assert pub._config["compression_type"] == codec
        for v in values:
            pub.publish(b"node-1", v)
        pub.flush(10)
    got = poll_until(kafka_subscriber(kafka_topic, f"g-codec-{codec}"), 40)
    assert [r.value for r in sorted(got, key=lambda r: r.offset)] == values


def test_agents_compress_with_zstd_by_default() -> None:
    # zstandard is a dependency: 10 % smaller batches than gzip, ~3x faster to decompress (bench_ingest)
    assert DEFAULT_COMPRESSION == "zstd"
    assert KafkaPublisher("127.0.0.1:1", "t")._config["compression_type"] == "zstd"  # lazy: no broker contacted


@pytest.mark.kafka
def test_kafka_commit_is_where_the_group_resumes(
    kafka_broker: str, kafka_topic: str, kafka_subscriber: Callable[..., Any]
) -> None:
    with KafkaPublisher(kafka_broker, kafka_topic) as pub:
        for i in range(30):
            pub.publish(b"node-%d" % (i % 3), b"%d" % i)
    first = kafka_subscriber(kafka_topic, "g-resume")
    got = poll_until(first, 30)
    assert len(got) == 30
    done = [r for r in got if int(r.value or b"") < 20]  # "stored" only these
    first.commit(done)
    first.close()
    # Per partition, everything after the highest committed offset comes again.
    resume = next_offsets(done)
    expected = [r for r in got if r.offset >= resume.get((r.topic, r.partition), 0)]
    second = kafka_subscriber(kafka_topic, "g-resume")
    rest = poll_until(second, len(expected))
    rest += second.poll(0.3)  # and nothing more
    assert sorted(r.value or b"" for r in rest) == sorted(r.value or b"" for r in expected)


@pytest.mark.kafka
def test_kafka_publisher_surfaces_an_outage_and_recovers(private_tansu: Any) -> None:
    topic = private_tansu.create_topic(partitions=1)
    pub = KafkaPublisher(private_tansu.bootstrap, topic, delivery_timeout_ms=1_000, max_block_ms=1_000,
                         client_settings={"reconnect_backoff_max_ms": 200})
    pub.publish(b"n", b"before")
    pub.flush(5)
    private_tansu.stop()
    t0 = time.monotonic()
    with pytest.raises(TransportError) as info:
        pub.publish(b"n", b"during")
        pub.flush(10)
    print(f"outage surfaced in {time.monotonic() - t0:.2f} s")
    assert "not acknowledged" in str(info.value) or "failed" in str(info.value)
    assert private_tansu.bootstrap in info.value.hint
    private_tansu.restart()  # comes back empty
    t0 = time.monotonic()
    deadline = t0 + 15
    while True:  # the same publisher reconnects by itself (the agent replays its spool)
        try:
            pub.publish(b"n", b"after")
            pub.flush(5)
            break
        except TransportError:
            assert time.monotonic() < deadline, "publisher never recovered"
            time.sleep(0.2)
    print(f"recovered in {time.monotonic() - t0:.2f} s")
    pub.close()


def test_kafka_unreachable_broker_is_a_transport_error_with_a_hint() -> None:
    start = time.monotonic()
    with pytest.raises(TransportError, match="joining group") as info:
        KafkaSubscriber("127.0.0.1:1", "t", "g", bootstrap_timeout_ms=500)
    assert "127.0.0.1:1" in info.value.hint and "reachable" in info.value.hint
    pub = KafkaPublisher("127.0.0.1:1", "t", bootstrap_timeout_ms=500)  # lazy: constructing never blocks
    with pytest.raises(TransportError, match="connecting a producer"):
        pub.publish(b"k", b"v")
    assert time.monotonic() - start < 10


def test_kafka_bad_client_setting_is_named_without_its_value() -> None:
    pub = KafkaPublisher("127.0.0.1:1", "t", client_settings={"sasl_plain_pasword": "hunter2"})
    with pytest.raises(TransportError) as info:
        pub.publish(b"k", b"v")
    assert "sasl_plain_pasword" in str(info.value) and "hunter2" not in str(info.value)
    assert "client_settings" in info.value.hint


@pytest.mark.kafka
def test_kafka_client_settings_pass_through(kafka_broker: str, kafka_topic: str) -> None:
    pub = KafkaPublisher(kafka_broker, kafka_topic, client_settings={"client_id": "node-7-agent", "linger_ms": 0})
    pub.connect()
    assert pub._producer is not None and pub._producer.config["client_id"] == "node-7-agent"
    assert pub._producer.config["acks"] in ("all", -1) and pub._producer.config["linger_ms"] == 0
    pub.close()
