"""The seam ingest writes through: :class:`RawWriter`, one Protocol, two stores behind it.

- :class:`gpuledger.store.Store`: the embedded DuckDB file (one transaction per flush);
- :class:`gpuledger.store.lake.LakeStore`: Apache Iceberg tables many workers share (docs/lake.md).

Each is idempotent on ``(agent_id, boot_id, seq)`` and returns how many messages were new, so the Ingestor
commits Kafka offsets only after a write returned, whatever the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import pyarrow as pa

from gpuledger import wire

if TYPE_CHECKING:
    from gpuledger.store.duck import DeadLetter

__all__ = ["RawWriter"]


@runtime_checkable
class RawWriter(Protocol):
    """Stores what ingest decoded: ``batch_to_arrow``'s tables, decoded messages, dead letters."""

    def write_arrow(self, tables: Mapping[str, pa.Table]) -> int:
        """One decoded batch (every table with ``_m``, the message's ordinal); returns the messages new to the store."""
        ...

    def write_messages(self, messages: Sequence[wire.Message], sources: Sequence[str | None] | None = None) -> int:
        """Decoded messages (the per-message fallback path); returns how many were new."""
        ...

    def write_dead_letters(self, letters: Iterable[DeadLetter]) -> int:
        """Records kept out of the books, with why; returns how many were new."""
        ...
