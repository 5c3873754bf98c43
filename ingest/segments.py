"""The scale path: each worker writes immutable Parquet segments, partitioned by day.

Layout under a root directory (local path; see docs/storage.md for object
storage)::

    ROOT/<table>/day=YYYY-MM-DD/<segment>.parquet

One flush of one worker is one *segment*: one file per table and day, all
carrying the same ``seg`` id (``<worker>-<ns timestamp>-<random>``). Files are
written under a temporary name and renamed into place, so a reader never
sees half a file, and a worker killed mid-flush leaves only an ignorable
``.tmp`` file (its records were not committed: they come again).

No worker reads another's segments, so there is no single-writer problem.
Duplicates (a batch stored by a worker that died before committing, then by
its successor) are resolved on read: :meth:`gpuledger.store.Store.open_segments`
keeps, per message key, the rows of one segment only.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gpuledger import wire
from gpuledger.store import DeadLetter, batch_to_arrow

__all__ = ["SegmentWriter"]

_NS_PER_DAY = 86_400 * 10**9


class SegmentWriter:
    """Stands in for a Store in the Ingestor (``write_arrow``, ``write_dead_letters``)."""

    def __init__(self, root: str | Path, worker: str) -> None:
        self.root = Path(root)
        self.worker = worker
        self.root.mkdir(parents=True, exist_ok=True)

    def __call__(self) -> Iterator[SegmentWriter]:  # the Ingestor's opener protocol
        return self._open()

    @contextmanager
    def _open(self) -> Iterator[SegmentWriter]:
        yield self

    def close(self) -> None:
        """Nothing held between flushes."""

    def write_arrow(self, tables: Mapping[str, pa.Table]) -> int:
        """Write one flush as one segment; returns the messages written (duplicates resolved on read)."""
        msgs = tables["messages"]
        if msgs.num_rows == 0:
            return 0
        seg = f"{self.worker}-{time.time_ns()}-{secrets.token_hex(4)}"
        for name, table in tables.items():
            if name == "pods":
                table = table.append_column("interval_start_ns", table["last_seen_ns"])
            if name == "messages":  # DuckDB fills this column by default; segments carry it themselves
                now = pa.array(np.full(table.num_rows, time.time_ns() // 1000, np.int64)).cast(pa.timestamp("us", "UTC"))
                table = table.append_column("ingested_at", now)
            self._write(name, table.drop_columns([c for c in ("_m",) if c in table.column_names]), seg)
        return msgs.num_rows

    def write_messages(self, messages: Sequence[wire.Message], sources: Sequence[str | None] | None = None) -> int:
        """The Ingestor's one-by-one fallback path."""
        return self.write_arrow(batch_to_arrow(messages, sources or [None] * len(messages))) if messages else 0

    def write_dead_letters(self, letters: Iterable[DeadLetter]) -> int:
        rows = list(letters)
        if not rows:
            return 0
        now = time.time_ns()
        table = pa.table({
            "topic": pa.array([d.topic for d in rows], pa.string()),
            "partition": pa.array([d.partition for d in rows], pa.int32()),
            "offset": pa.array([d.offset for d in rows], pa.int64()),
            "reason": pa.array([d.reason for d in rows], pa.string()),
            "payload": pa.array([d.payload for d in rows], pa.binary()),
            "size_bytes": pa.array([len(d.payload) for d in rows], pa.int64()),
            "interval_start_ns": pa.array(np.full(len(rows), now, np.int64)),  # partitioned by arrival day
        })
        self._write("dead_letters", table, f"{self.worker}-{now}-{secrets.token_hex(4)}")
        return len(rows)

    def _write(self, name: str, table: pa.Table, seg: str) -> None:
        if table.num_rows == 0:
            return
        table = table.append_column("seg", pa.array([seg] * table.num_rows, pa.string()))
        days = pc.divide(table["interval_start_ns"], _NS_PER_DAY).to_numpy()
        for day in np.unique(days):
            part = table.filter(pa.array(days == day))
            stamp = np.datetime64(int(day), "D").astype(str)
            folder = self.root / name / f"day={stamp}"
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"{seg}.parquet"
            tmp = folder / f".{seg}.parquet.tmp"
            pq.write_table(part, tmp, compression="zstd")
            os.replace(tmp, final)  # atomic: readers see the whole file or none
