"""Shared pytest fixtures and the suite's marker rules.

Fixtures only: the code behind them lives in ``tests/support`` (a package that
test modules import; no test module imports another test module or this file,
``tests/test_suite_layout.py`` checks it). Sections are owned by different
parts of the suite; add new ones below their own banner rather than inside another's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.kafka import KAFKA_GROUP_TIMING, TansuBroker, need_tansu

# =============================================================================
# Markers (registered with descriptions in pyproject.toml; see docs/testing.md)
# =============================================================================

#: Fixtures that start or reach the tansu broker: a test using one is ``external`` (and ``kafka``).
BROKER_FIXTURES = frozenset({"tansu", "kafka_broker", "kafka_topic", "private_tansu", "kafka_subscriber"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the broker needs the tansu binary, so it is ``external`` without having to say so."""
    for item in items:
        uses_broker = not BROKER_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
        if uses_broker or item.get_closest_marker("kafka"):
            item.add_marker(pytest.mark.external)
        if uses_broker and not item.get_closest_marker("kafka"):
            item.add_marker(pytest.mark.kafka)


# =============================================================================
# Kafka: a real Kafka-protocol broker (tansu; tests/support/kafka.py)
# =============================================================================


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """The session's broker. Restarting it empties it for every later test."""
    broker = TansuBroker(need_tansu(), tmp_path_factory.mktemp("tansu"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_broker(tansu: TansuBroker) -> str:
    """Bootstrap string (``127.0.0.1:PORT``) of the session's tansu broker."""
    return tansu.bootstrap


@pytest.fixture
def kafka_topic(tansu: TansuBroker) -> str:
    """A fresh topic with 3 partitions, unique to the test."""
    return tansu.create_topic(partitions=3)


@pytest.fixture
def private_tansu(tmp_path: Path) -> Iterator[TansuBroker]:
    """A broker of the test's own, for tests that stop or restart it."""
    broker = TansuBroker(need_tansu(), tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka_subscriber(kafka_broker: str) -> Iterator[Callable[..., object]]:
    """``kafka_subscriber(topic, group_id, **kw)`` -> a KafkaSubscriber with the
    tests' short group timing; every one made is closed at teardown."""
    from gpuledger.transport import KafkaSubscriber

    made: list[KafkaSubscriber] = []

    def make(topic: str, group_id: str, **kw: object) -> KafkaSubscriber:
        sub = KafkaSubscriber(kafka_broker, topic, group_id, **{**KAFKA_GROUP_TIMING, **kw})  # type: ignore[arg-type]
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """``unique_name("group")`` -> ``group-1a2b3c4d``: group ids, topics."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"


# =============================================================================
# (end of the Kafka section)
# =============================================================================
