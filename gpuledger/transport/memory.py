"""The transport's fake twin: an in-process topic, no broker (the demo and tests use it)."""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Sequence

from gpuledger.errors import TransportError
from gpuledger.transport.protocols import Record, next_offsets

__all__ = ["MemoryTransport"]



class MemoryTransport:
    """An in-process topic: a Publisher and a Subscriber over the same bytes.

    Used by the demo (agent and ingest in one process, no broker) and tests.
    Records go to partition ``crc32(key) % partitions`` and get consecutive
    offsets per partition, as with Kafka's keyed partitioning. One subscriber
    position and one committed offset per partition model a single consumer
    group; :meth:`rewind` models that consumer restarting (uncommitted records
    come again). Thread-safe: ``poll`` waits on a condition for new records.

    Fault injection: set ``available = False`` and ``publish``/``flush``/``poll``
    raise TransportError as an unreachable broker would.
    """

    def __init__(self, topic: str = "memory", partitions: int = 1) -> None:
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.topic = topic
        self.partitions = partitions
        self.log: list[list[tuple[bytes | None, bytes | None]]] = [[] for _ in range(partitions)]
        self.committed: list[int] = [0] * partitions  # next offset to read after a restart
        self.available = True
        self._position: list[int] = [0] * partitions
        self._cond = threading.Condition()
        self._next_partition = 0  # round-robin start, so one partition cannot starve the others
        self.keepalives = 0  # keepalive() calls (a flush outlasting the keepalive interval makes them)

    # Publisher

    def publish(self, key: bytes, value: bytes) -> None:
        self._check("publish")
        partition = zlib.crc32(key) % self.partitions if key is not None else 0
        with self._cond:
            self.log[partition].append((key, value))
            self._cond.notify_all()

    def flush(self, timeout_s: float | None = None) -> None:
        self._check("flush")

    def close(self) -> None:
        """No-op: the log outlives its clients (both roles share this object)."""

    # Subscriber

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[Record]:
        self._check("poll")
        limit = max_records if max_records is not None else 500
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            while not self._backlog():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)
            out: list[Record] = []
            for i in range(self.partitions):
                p = (self._next_partition + i) % self.partitions
                start = self._position[p]
                take = self.log[p][start : start + limit - len(out)]
                out.extend(Record(self.topic, p, start + j, k, v) for j, (k, v) in enumerate(take))
                self._position[p] = start + len(take)
                if len(out) >= limit:
                    break
            self._next_partition = (self._next_partition + 1) % self.partitions
            return out

    def commit(self, records: Sequence[Record]) -> None:
        self._check("commit")
        with self._cond:
            for (topic, partition), offset in next_offsets(records).items():
                if topic != self.topic:
                    raise TransportError(f"commit for topic {topic!r} on a MemoryTransport of {self.topic!r}")
                self.committed[partition] = max(self.committed[partition], offset)

    def keepalive(self) -> None:
        """No group to stay in: counts the calls (``keepalives``), so tests see that a long flush made them."""
        self._check("keepalive")
        self.keepalives += 1

    # Test helpers

    def rewind(self) -> None:
        """Forget uncommitted progress, as a restarted consumer in the group would."""
        with self._cond:
            self._position = list(self.committed)

    def lag(self) -> int:
        """Records published but not yet committed, over all partitions."""
        with self._cond:
            return sum(len(log) - c for log, c in zip(self.log, self.committed))

    def partition_lag(self) -> dict[tuple[str, int], int]:
        """Per partition: records published but not yet committed (as KafkaSubscriber.partition_lag)."""
        with self._cond:
            return {(self.topic, p): len(log) - c for p, (log, c) in enumerate(zip(self.log, self.committed))}

    def __len__(self) -> int:
        with self._cond:
            return sum(len(log) for log in self.log)

    def _backlog(self) -> bool:
        return any(len(log) > pos for log, pos in zip(self.log, self._position))

    def _check(self, what: str) -> None:
        if not self.available:
            raise TransportError(
                f"{what} failed: the in-memory broker is unavailable (simulated outage)",
                hint="set MemoryTransport.available = True to end the simulated outage",
            )
