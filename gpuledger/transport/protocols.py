"""The transport's seams: agent -> topic -> ingest, as Protocols (no client library here).

Records are keyed by node name, so one node's messages stay in one partition
(in order), and the value is the wire-schema bytes (:mod:`gpuledger.wire`)
untouched: the transport never looks inside.

Two seams, each with a Kafka implementation (:mod:`.kafka_client`) and an
in-process twin (:mod:`.memory`):

- :class:`Publisher` (agent side): ``KafkaPublisher``, ``MemoryTransport``.
- :class:`Subscriber` (ingest side): ``KafkaSubscriber``, ``MemoryTransport``.

Delivery contract (what callers can rely on, whichever implementation):

- ``publish`` hands a record to the client's buffer; it raises only when the
  record cannot even be queued (buffer full past ``max_block_ms``, too large,
  client closed). ``flush`` waits for every record published since the last
  flush and raises :class:`gpuledger.errors.TransportError` if *any* of them
  failed: a failure is never silently lost. A caller that must not lose data
  (the agent's spool) keeps its records until ``flush`` returns.
- ``commit`` is synchronous and commits ``offset + 1`` of the highest record
  given per partition: call it only after the records are durably stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Publisher", "Record", "Subscriber", "next_offsets"]


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record. ``value`` is the raw wire bytes (None: a tombstone)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def source(self) -> str:
        """Where the record came from, as stored in ``messages.source``."""
        return f"{self.topic}/{self.partition}/{self.offset}"


@runtime_checkable
class Publisher(Protocol):
    """Agent side of the transport."""

    def publish(self, key: bytes, value: bytes) -> None:
        """Queue one record (key: node name, value: wire bytes)."""

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until everything published so far is acknowledged; raise
        TransportError if anything failed or the timeout (seconds) passed."""

    def close(self) -> None:
        """Release the client (pending records are flushed first)."""


@runtime_checkable
class Subscriber(Protocol):
    """Ingest side of the transport: poll, store, then commit."""

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` seconds."""

    def commit(self, records: Sequence[Record]) -> None:
        """Synchronously commit past the given records (offset + 1 per partition)."""

    def keepalive(self) -> None:
        """Stay a member of the consumer group while a flush runs: return no records, consume nothing."""

    def close(self) -> None:
        """Leave the consumer group and release the client."""


def next_offsets(records: Sequence[Record]) -> dict[tuple[str, int], int]:
    """``{(topic, partition): highest offset + 1}``: what a commit stores."""
    out: dict[tuple[str, int], int] = {}
    for r in records:
        tp = (r.topic, r.partition)
        out[tp] = max(out.get(tp, 0), r.offset + 1)
    return out
