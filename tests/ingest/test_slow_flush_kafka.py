"""Ingest whose flushes outlast the consumer group's max poll interval, against a real broker (tansu).

Issue 15: with a 1 s group timeout, flushes slower than that (poison on the
per-message path, a slow disk, a reader holding the file) made the member
leave the group before every commit; each commit failed and the backlog was
read again forever. Specification: every valid record is stored once, every
poison record is a dead letter once, every record is read once, and every
commit is accepted -- however long a flush takes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from gpuledger import wire
from gpuledger.ingest.consumer import Ingestor
from gpuledger.store import Store
from gpuledger.transport import KafkaSubscriber
from tests.support.factories import make_message
from tests.support.ingest_runs import encoded, publish, stream

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TIMING = {"max_poll_interval_ms": 1_000, "session_timeout_ms": 1_000}


class SlowStore(Store):
    """A real DuckDB file whose batch writes each take ``delay_s`` more (a slow disk, a lock held)."""

    def __init__(self, path: Path, delay_s: float) -> None:
        super().__init__(path)
        self.delay_s = delay_s

    def write_arrow(self, tables: dict[str, pa.Table], **kw: Any) -> int:
        time.sleep(self.delay_s)
        return super().write_arrow(tables, **kw)


def test_flushes_slower_than_the_max_poll_interval_store_every_record_once_and_commit(
    tansu: Any, tmp_path: Path
) -> None:
    topic = tansu.create_topic(partitions=2)
    valid = stream(30, nodes=2)  # 60 messages
    good = wire.encode(make_message(agent_id="p", seq=10**6))
    poison = [b"not a wire message", good[: len(good) // 2], b"\0" * 40]
    items = encoded(valid)
    for i, payload in enumerate(poison):
        items.insert(7 + 17 * i, (f"node-{i % 2}".encode(), payload))
    publish(tansu.bootstrap, topic, items)

    group = f"slow-{topic}"
    store = SlowStore(tmp_path / "slow.duckdb", delay_s=1.6)  # every flush outlasts the 1 s interval
    sub = KafkaSubscriber(tansu.bootstrap, topic, group, max_poll_records=20, **TIMING)
    try:
        ingestor = Ingestor(store, sub, batch_max=20, linger_s=0.2, pipeline=True, keepalive_s=0.25)
        stats = ingestor.run(max_idle_s=6, max_messages=3 * len(items))
    finally:
        sub.close()
    assert store.count("messages") == len(valid)
    assert (stats.stored, stats.duplicates, stats.dead_letters) == (len(valid), 0, len(poison))
    assert stats.records == len(items)  # nothing read twice
    assert stats.commit_failures == 0
    store.close()
    successor = KafkaSubscriber(tansu.bootstrap, topic, group, **TIMING)  # everything was committed
    try:
        deadline = time.monotonic() + 4
        left = []
        while time.monotonic() < deadline:
            left += successor.poll(0.5)
        assert left == []
    finally:
        successor.close()
