"""Agent -> topic -> ingest: the seams (:mod:`.protocols`), Kafka (:mod:`.kafka_client`, the only
module that imports ``kafka``) and the in-process twin (:mod:`.memory`)."""

from __future__ import annotations

from gpuledger.transport.kafka_client import DEFAULT_COMPRESSION, KafkaPublisher, KafkaSubscriber, quiet_client_logs
from gpuledger.transport.memory import MemoryTransport
from gpuledger.transport.protocols import Publisher, Record, Subscriber, next_offsets

__all__ = [
    "DEFAULT_COMPRESSION",
    "KafkaPublisher",
    "KafkaSubscriber",
    "MemoryTransport",
    "Publisher",
    "Record",
    "Subscriber",
    "next_offsets",
    "quiet_client_logs",
]
