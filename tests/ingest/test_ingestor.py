"""Ingestor over the in-memory transport: store, dead-letter, then commit.

Specification: every valid message is stored exactly once however often it
arrives; every bad record lands in dead_letters with where it came from and
why; offsets are committed only after the store has the batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gpuledger import wire
from gpuledger.errors import StoreError
from gpuledger.ingest.consumer import Ingestor, IngestStats, decode_record
from gpuledger.store import Store
from gpuledger.transport import MemoryTransport, Record
from tests.support.factories import make_message, make_stream

TOPIC = "t"


def publish(t: MemoryTransport, messages: Sequence[wire.Message]) -> None:
    for m in messages:
        t.publish(m.node.encode(), wire.encode(m))


def table_counts(store: Store) -> dict[str, int]:
    return {name: store.count(name) for name in ("messages", "devices", "processes", "allocations", "field_errors", "pods")}


@pytest.fixture
def transport() -> MemoryTransport:
    return MemoryTransport(TOPIC, partitions=3)


def test_every_message_is_stored_once_with_its_source(transport: MemoryTransport) -> None:
    store = Store()
    publish(transport, make_stream(30))
    stats = Ingestor(store, transport, batch_max=7).run(max_idle_s=0.1)
    assert (stats.records, stats.stored, stats.duplicates, stats.dead_letters) == (30, 30, 0, 0)
    assert stats.batches == 5  # 7 + 7 + 7 + 7 + 2
    assert table_counts(store) == {"messages": 30, "devices": 60, "processes": 60, "allocations": 60,
                                   "field_errors": 60, "pods": 2}
    sources = store.query("SELECT source FROM messages")["source"].to_list()
    assert len(set(sources)) == 30 and all(s.startswith(f"{TOPIC}/") for s in sources)
    assert transport.lag() == 0


class _SlowWrites(Ingestor):
    """Each write takes longer than the idle limit, as flushes do on a loaded machine."""

    def _write(self, flush: Any) -> None:
        time.sleep(0.25)
        super()._write(flush)


@pytest.mark.parametrize("pipeline", [False, True])
def test_a_write_slower_than_max_idle_does_not_end_the_run(transport: MemoryTransport, pipeline: bool) -> None:
    # idle counts from the end of the last write: a batch job must not stop with records waiting
    store = Store()
    publish(transport, make_stream(30))
    stats = _SlowWrites(store, transport, batch_max=7, pipeline=pipeline).run(max_idle_s=0.1)
    assert (stats.records, stats.stored) == (30, 30)
    assert transport.lag() == 0


def test_redelivery_and_replay_change_nothing(transport: MemoryTransport) -> None:
    store = Store()
    messages = make_stream(12)
    publish(transport, messages)
    ingestor = Ingestor(store, transport)
    ingestor.run(max_idle_s=0.1)
    before = table_counts(store)
    publish(transport, messages)  # the agent replays its spool
    publish(transport, messages[:3] * 2)  # and repeats inside one batch
    stats = ingestor.run(max_idle_s=0.1)
    assert (stats.stored, stats.duplicates) == (0, 18)
    assert table_counts(store) == before


def bad_records() -> dict[str, bytes]:
    good = wire.encode(make_message(seq=99))
    header_len = int.from_bytes(good[8:12], "little")
    return {
        "garbage": b"hello, kafka",
        "unknown version": good[:4] + (7).to_bytes(2, "little") + good[6:],
        "truncated": good[:-5],
        "bad json": good[:28] + b"!" + good[29:],
        "past the string table": _with_bad_reference(),
        "empty": b"",
        "header only": good[: 28 + header_len],
    }


def _with_bad_reference() -> bytes:
    m = make_message(seq=98)
    m.devices["model"][0] = 10_000
    return wire.encode(m)


def test_bad_records_become_dead_letters_and_do_not_block_the_rest(transport: MemoryTransport) -> None:
    store = Store()
    valid = make_stream(10)
    bad = bad_records()
    for i, m in enumerate(valid):  # interleave, all on one key so one partition, in order
        transport.publish(b"node", wire.encode(m))
        if i < len(bad):
            transport.publish(b"node", list(bad.values())[i])
    stats = Ingestor(store, transport).run(max_idle_s=0.1)
    assert (stats.stored, stats.dead_letters) == (10, len(bad))
    assert store.count("messages") == 10 and transport.lag() == 0
    rows = store.query('SELECT topic, partition, "offset", reason, payload, size_bytes FROM dead_letters ORDER BY "offset"')
    by_payload = {bytes(r["payload"]): r for r in rows.iter_rows(named=True)}
    assert set(by_payload) == set(bad.values())
    partition = zlib_partition(b"node", 3)
    offsets = {bytes(r.value or b""): r.offset for r in _all_records(transport) if r.partition == partition}
    expected_reason = {
        "garbage": "not a gpuledger message",
        "unknown version": "unknown schema version 7",
        "truncated": "length mismatch",
        "bad json": "JSON header unreadable",
        "past the string table": "devices.model points past the string table",
        "empty": "not a gpuledger message",
        "header only": "length mismatch",
    }
    for name, payload in bad.items():
        row = by_payload[payload]
        assert (row["topic"], row["partition"], row["offset"]) == (TOPIC, partition, offsets[payload]), name
        assert expected_reason[name] in row["reason"], (name, row["reason"])
        assert row["size_bytes"] == len(payload)


def zlib_partition(key: bytes, partitions: int) -> int:
    import zlib

    return zlib.crc32(key) % partitions


def _all_records(t: MemoryTransport) -> list[Record]:
    return [Record(t.topic, p, o, k, v) for p, log in enumerate(t.log) for o, (k, v) in enumerate(log)]


def test_redelivered_dead_letters_are_listed_once(transport: MemoryTransport) -> None:
    store = Store()
    transport.publish(b"k", b"junk")
    transport.publish(b"k", wire.encode(make_message()))
    Ingestor(store, transport).run(max_idle_s=0.1)
    transport.committed = [0] * transport.partitions  # as if the commit had been lost
    transport.rewind()
    stats = Ingestor(store, transport).run(max_idle_s=0.1)
    assert stats.records == 2 and stats.duplicates == 1
    assert store.count("dead_letters") == 1 and store.count("messages") == 1


def test_tombstones_and_decoder_crashes_are_dead_letters_not_exceptions() -> None:
    tomb = decode_record(Record("t", 0, 1, b"k", None))
    assert not isinstance(tomb, wire.Message) and "tombstone" in tomb.reason and tomb.offset == 1
    crash = decode_record(Record("t", 0, 2, b"k", 12345))  # type: ignore[arg-type]  # not bytes at all
    assert not isinstance(crash, wire.Message) and "decoder failed unexpectedly: TypeError" in crash.reason


def test_nothing_is_committed_when_the_store_fails(tmp_path: Path, transport: MemoryTransport) -> None:
    db = tmp_path / "g.duckdb"
    store = Store(db)
    publish(transport, make_stream(9))
    transport.publish(b"k", b"junk")
    store.close()  # the database goes away under the ingestor
    with pytest.raises(StoreError):
        Ingestor(store, transport).step(0)
    assert transport.lag() == 10  # not committed: redelivered after a restart
    transport.rewind()
    with Store(db) as store:
        stats = Ingestor(store, transport).run(max_idle_s=0.1)
        assert (stats.stored, stats.dead_letters) == (9, 1) and transport.lag() == 0


class UnstorableStore(Store):
    """A store that cannot convert messages from agent 'poison' (as a conversion bug would),
    on the bulk path and the one-by-one path alike."""

    def write_arrow(self, tables: Any) -> int:
        if "poison" in tables["messages"]["agent_id"].to_pylist():
            raise ValueError("cannot convert this batch")
        return super().write_arrow(tables)

    def write_messages(self, messages: Sequence[wire.Message], sources: Sequence[str | None] | None = None) -> int:
        if any(m.agent_id == "poison" for m in messages):
            raise ValueError("cannot convert this message")
        return super().write_messages(messages, sources)


def test_a_message_the_store_cannot_convert_is_isolated_as_a_dead_letter(transport: MemoryTransport) -> None:
    store = UnstorableStore()
    publish(transport, make_stream(6))
    transport.publish(b"x", wire.encode(make_message(agent_id="poison")))
    stats = Ingestor(store, transport).run(max_idle_s=0.1)
    assert (stats.stored, stats.dead_letters, stats.duplicates) == (6, 1, 0)
    reason = store.scalar("SELECT reason FROM dead_letters")
    assert reason == "decoded but not storable: ValueError: cannot convert this message"
    assert transport.lag() == 0


def test_run_stops_on_max_messages_stop_event_and_idle(transport: MemoryTransport) -> None:
    store = Store()
    publish(transport, make_stream(20))
    ingestor = Ingestor(store, transport, batch_max=5)
    assert ingestor.run(max_messages=10).records == 10

    stop = threading.Event()

    def stop_when_all_are_in() -> None:  # not on a timer: a loaded machine may not have read them yet
        while ingestor.totals.records < 20:
            time.sleep(0.01)
        time.sleep(0.2)  # the run keeps polling, idle, until the event
        stop.set()

    threading.Thread(target=stop_when_all_are_in, daemon=True).start()
    rest = ingestor.run(stop)  # no other limit: only the event ends it
    assert rest.records == 10 and stop.is_set()
    assert ingestor.totals.records == 20 and store.count("messages") == 20


def test_run_outlasts_a_transport_outage(transport: MemoryTransport, caplog: pytest.LogCaptureFixture) -> None:
    store = Store()
    transport.available = False

    def broker_returns() -> None:
        transport.available = True
        publish(transport, make_stream(4))

    threading.Timer(0.3, broker_returns).start()
    with caplog.at_level(logging.WARNING, logger="gpuledger.ingest.consumer"):
        stats = Ingestor(store, transport).run(max_messages=4, max_idle_s=10, poll_s=0.05)
    assert stats.stored == 4
    assert any("transport failed" in r.message for r in caplog.records)


def test_progress_sees_running_totals(transport: MemoryTransport) -> None:
    seen: list[IngestStats] = []
    publish(transport, make_stream(6))
    Ingestor(Store(), transport, batch_max=4, progress=seen.append).run(max_idle_s=0.1)
    assert [s.records for s in seen if s.records][:2] == [4, 6]
    assert "6 stored" in seen[-1].summary()


def test_stats_add_up() -> None:
    a, b = IngestStats(records=2, stored=1, duplicates=1), IngestStats(records=3, dead_letters=3)
    a.add(b)
    assert (a.records, a.stored, a.duplicates, a.dead_letters) == (5, 1, 1, 3)


def test_batch_max_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Ingestor(Store(), MemoryTransport(), batch_max=0)


def test_pipelined_run_stores_everything_once_and_commits_only_stored_flushes(tmp_path: Path,
                                                                               transport: MemoryTransport) -> None:
    publish(transport, make_stream(60))
    transport.publish(b"k", b"junk")
    store = Store()
    stats = Ingestor(store, transport, batch_max=7, pipeline=True).run(max_idle_s=0.3)
    assert (stats.records, stats.stored, stats.dead_letters) == (61, 60, 1)
    assert table_counts(store)["messages"] == 60 and transport.lag() == 0

    db = tmp_path / "g.duckdb"
    broken = Store(db)
    publish(transport, make_stream(80)[60:])
    broken.close()  # the database goes away under the pipelined writer
    with pytest.raises(StoreError):
        Ingestor(broken, transport, batch_max=7, pipeline=True).run(max_idle_s=0.3)
    assert transport.lag() == 20  # nothing the store did not take was committed


def test_a_pipelined_flush_slower_than_the_keepalive_interval_keeps_the_subscriber_polling(tmp_path: Path) -> None:
    """While a flush is stored on the worker thread, the loop calls ``subscriber.keepalive()`` (issue 15:
    a flush must not outlast the consumer group's max poll interval)."""

    class SlowStore(Store):
        def write_arrow(self, tables: Any, **kw: Any) -> int:
            threading.Event().wait(0.3)
            return super().write_arrow(tables, **kw)

    transport = MemoryTransport()
    for m in make_stream(3):
        transport.publish(m.node.encode(), wire.encode(m))
    store = SlowStore(tmp_path / "slow.duckdb")
    stats = Ingestor(store, transport, batch_max=1, pipeline=True, keepalive_s=0.05).run(max_idle_s=0.5)
    assert stats.stored == 3 and stats.duplicates == 0
    assert transport.keepalives >= 3  # at least one per slow flush
    store.close()
