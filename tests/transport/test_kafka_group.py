"""The Kafka subscriber's group membership around slow flushes, against a real broker (tansu).

Specification (issue 15): a flush may take longer than the group's max poll
interval without costing the membership (``keepalive``); when the membership
is lost anyway, the commit says so -- naming the interval, not the broker,
TLS or SASL -- and after rejoining the member resumes after the records it
stored instead of reading them all again.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from gpuledger.errors import GroupMembershipLost
from gpuledger.transport import KafkaPublisher, KafkaSubscriber, Record

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TIMING = {"max_poll_interval_ms": 1_000, "session_timeout_ms": 1_000}


def published(tansu: Any, n: int) -> str:
    topic: str = tansu.create_topic(partitions=1)
    with KafkaPublisher(tansu.bootstrap, topic) as pub:
        for i in range(n):
            pub.publish(b"k", f"v{i}".encode())
        pub.flush(30)
    return topic


def first_poll(sub: KafkaSubscriber, n: int = 5, timeout_s: float = 20.0) -> list[Record]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = sub.poll(0.5, max_records=n)
        if records:
            return records
    raise AssertionError("no records within the timeout")


def test_a_commit_after_the_member_left_the_group_names_the_cause_and_resumes_after_the_stored_records(
    tansu: Any,
) -> None:
    topic = published(tansu, 20)
    group = f"lost-{topic}"
    sub = KafkaSubscriber(tansu.bootstrap, topic, group, **TIMING)
    try:
        records = first_poll(sub)
        assert [r.offset for r in records] == [0, 1, 2, 3, 4]
        time.sleep(2.5)  # the "flush": longer than max_poll_interval_ms, no poll -> the member leaves the group
        with pytest.raises(GroupMembershipLost) as lost:
            sub.commit(records)
        hint = lost.value.hint
        assert "max_poll_interval_ms (1000 ms)" in hint and "--max-poll-interval-ms" in hint
        assert "TLS" not in hint and "SASL" not in hint
        again = first_poll(sub)  # rejoins; resumes at the stored records' next offset, not the last commit
        assert again[0].offset == 5
        sub.commit(again)  # also commits the owed offsets
    finally:
        sub.close()
    successor = KafkaSubscriber(tansu.bootstrap, topic, group, **TIMING)
    try:
        assert first_poll(successor)[0].offset == 10
    finally:
        successor.close()


def test_keepalive_holds_the_membership_through_a_flush_longer_than_the_max_poll_interval(tansu: Any) -> None:
    topic = published(tansu, 10)
    sub = KafkaSubscriber(tansu.bootstrap, topic, f"alive-{topic}", **TIMING)
    try:
        records = first_poll(sub)
        for _ in range(7):  # 2.8 s of "flush", polling paused every 0.4 s
            time.sleep(0.4)
            sub.keepalive()
        sub.commit(records)  # still a member: accepted
        assert [r.offset for r in first_poll(sub)] == [5, 6, 7, 8, 9]  # keepalive consumed nothing
    finally:
        sub.close()
