"""The seams writers write through: :class:`RawWriter` (ingest) and :class:`HourlyWriter` (the importers).

:class:`RawWriter`, one Protocol, two stores behind it:

- :class:`gpuledger.store.Store`: the embedded DuckDB file (one transaction per flush);
- :class:`gpuledger.store.lake.LakeStore`: Apache Iceberg tables many workers share (docs/lake.md).

Each is idempotent on ``(agent_id, boot_id, seq)`` and returns how many messages were new, so the Ingestor
commits Kafka offsets only after a write returned, whatever the store.

:class:`HourlyWriter`: the importers' product tables (``work_units``,
``queue_hourly``; :mod:`gpuledger.analytics.work_units`, :mod:`gpuledger.analytics.queues`),
whole (hour, scope) parts replaced, so a re-import is idempotent. Two homes:
:meth:`gpuledger.store.Store.replace_hours` (one DuckDB transaction) and
:class:`gpuledger.store.lake.products.LakeProducts` (one Iceberg commit, a
part the lake already holds identically not written again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import pyarrow as pa

from gpuledger import wire

if TYPE_CHECKING:
    from gpuledger.store.duck import DeadLetter

__all__ = ["HourPart", "HourlyWriter", "RawWriter"]

#: One part of a product table an importer replaces whole: its hour (start, ns), the columns that narrow it
#: within the hour (``{"unit": "tokens"}``; empty: the whole hour) and its new rows, in the DuckDB table's columns
#: (none: the part is emptied -- a series Prometheus no longer has is no row, never a 0).
HourPart = tuple[int, Mapping[str, str], pa.Table]


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


@runtime_checkable
class HourlyWriter(Protocol):
    """Replaces whole (hour, scope) parts of a product table keyed by ``hour_start_ns``."""

    def replace_hours(self, table: str, parts: Sequence[HourPart]) -> int:
        """Delete each part's rows and write its new ones, all parts at once (one transaction or commit); returns
        the rows written (0 when the store already held exactly these rows and wrote nothing)."""
        ...
