"""The scale path: each worker writes immutable Parquet segments, partitioned by day.

Layout under a root directory (local path; see docs/storage.md for object
storage)::

    ROOT/<table>/day=YYYY-MM-DD/<segment>.parquet

One flush of one worker is one *segment*: one file per table and day, all
carrying the same ``seg`` id (``<worker>-<ns timestamp>-<random>``). Files are
written under a temporary name and renamed into place, so a reader never
sees half a file; the ``messages`` file is written last, as the segment's
commit record, so a worker killed mid-flush leaves an ignorable ``.tmp`` file
and perhaps some tables' files that no reader chooses (its records were not
committed: they come again). :func:`compact_segments` rewrites a day's
segments into one file per table (docs/storage.md).

No worker reads another's segments, so there is no single-writer problem.
Duplicates (a batch stored by a worker that died before committing, then by
its successor) are resolved on read: :meth:`gpuledger.store.Store.open_segments`
keeps, per message key, the rows of one segment only.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gpuledger import wire
from gpuledger.errors import GpuledgerError
from gpuledger.store import DeadLetter, batch_to_arrow
from gpuledger.timeutil import DAY_NS

__all__ = ["CompactResult", "SegmentWriter", "compact_segments"]


class SegmentWriter:
    """Stands in for a Store in the Ingestor (``write_arrow``, ``write_dead_letters``)."""

    def __init__(self, root: str | Path, worker: str) -> None:
        self.root = Path(root)
        self.worker = worker
        self.root.mkdir(parents=True, exist_ok=True)

    def __call__(self) -> AbstractContextManager[SegmentWriter]:  # the Ingestor's opener protocol
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
        # ``messages`` last: its file is the segment's commit record. Readers choose a segment per
        # message key from ``messages`` files only, so a flush killed half-way (some tables' files
        # written, not yet ``messages``) is never chosen and its rows stay invisible.
        for name, table in sorted(tables.items(), key=lambda item: item[0] == "messages"):
            if name == "pods":
                table = table.append_column("interval_start_ns", table["last_seen_ns"])
            if name == "messages":  # DuckDB fills this column by default; segments carry it themselves
                now = pa.array(np.full(table.num_rows, time.time_ns() // 1000, np.int64)).cast(pa.timestamp("us", "UTC"))
                table = table.append_column("ingested_at", now)
            self._write(name, table.drop_columns([c for c in ("_m",) if c in table.column_names]), seg)
        return int(msgs.num_rows)

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
        days = pc.divide(table["interval_start_ns"], DAY_NS).to_numpy()
        for day in np.unique(days):
            part = table.filter(pa.array(days == day))
            stamp = np.datetime64(int(day), "D").astype(str)
            folder = self.root / name / f"day={stamp}"
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"{seg}.parquet"
            tmp = folder / f".{seg}.parquet.tmp"
            pq.write_table(part, tmp, compression="zstd")
            os.replace(tmp, final)  # atomic: readers see the whole file or none


# --- compaction -----------------------------------------------------------------------

#: Tables whose rows belong to a message key: a segment's rows count only where ``messages`` chose it.
_KEYED = ("messages", *wire.RECORD_TABLES)
_KEY = ["agent_id", "boot_id", "seq"]
_ORDER = (*wire.RECORD_TABLES, "pods", "dead_letters", "messages")  # messages last: a segment's commit record


@dataclass
class CompactResult:
    days: list[str] = field(default_factory=list)  # days rewritten
    files_before: int = 0  # files replaced (orphans included)
    files_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    duplicate_rows_dropped: int = 0  # rows of a message key that readers ignored (another segment's copy)
    orphans_deleted: int = 0  # files of flushes killed before their messages file (never visible)


def compact_segments(
    root: str | Path,
    days: Iterable[str] | None = None,
    *,
    before: str | None = None,
    min_age_s: float = 300.0,
    orphan_age_s: float = 3600.0,
    settle_s: float = 1.0,
    row_group_rows: int = 1 << 20,
    observer: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> CompactResult:
    """Rewrite each day's many small segments into one file per table and day.

    ``days`` (``YYYY-MM-DD``) picks days; default: every day before ``before``
    (default: today, UTC, which writers still fill). Files younger than
    ``min_age_s`` are left for the next run, and a segment counts only with
    its ``messages`` file (the commit record), so a flush being written is
    never touched. What readers see (``Store.open_segments``) does not change:

    - per message key, only the rows of the segment readers choose (the
      lowest ``seg`` with a ``messages`` row) are kept, relabelled with the new
      file's ``seg``; ``pods`` keeps each pod's latest row of the day,
      ``dead_letters`` one row per (topic, partition, offset);
    - order of replacement: the new files are written under hidden names and
      renamed into place, ``messages`` last (until then readers still choose
      the old segments, whose files are all there); then the old ``messages``
      files are deleted (readers now choose the new segment, complete), and
      after ``settle_s`` -- longer than a query takes to list its files -- the
      old files of the other tables. At no moment does a reader see a key
      twice or miss one.

    ``observer`` is called with a description after every file-system change
    (tests check what a reader sees at each step). Idempotent: a day already
    in one file per table is skipped.
    """
    root = Path(root)
    lock = (root / ".compact.lock").open("a")  # one compaction at a time per directory
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise GpuledgerError(f"another compaction is running on {root}", hint="wait for it to finish") from None
    with lock:
        return _compact(root, days, before, min_age_s, orphan_age_s, settle_s, row_group_rows, observer, clock)


def _compact(root: Path, days: Iterable[str] | None, before: str | None, min_age_s: float, orphan_age_s: float,
             settle_s: float, row_group_rows: int, observer: Callable[[str], None] | None,
             clock: Callable[[], float]) -> CompactResult:
    now = clock()
    cutoff = before or np.datetime64(int(now * 1e9), "ns").astype("datetime64[D]").astype(str)
    wanted = set(days) if days is not None else None
    result = CompactResult()
    found = sorted({p.name.removeprefix("day=") for p in root.glob("*/day=*") if p.is_dir()})
    for day in found:
        if (wanted is not None and day not in wanted) or (wanted is None and day >= cutoff):
            continue
        _compact_day(root, day, now, min_age_s, orphan_age_s, settle_s, row_group_rows, observer, result)
    return result


def _compact_day(root: Path, day: str, now: float, min_age_s: float, orphan_age_s: float, settle_s: float,
                 row_group_rows: int, observer: Callable[[str], None] | None, result: CompactResult) -> None:
    def files(name: str) -> list[Path]:
        return sorted(p for p in (root / name / f"day={day}").glob("*.parquet")
                      if now - p.stat().st_mtime >= min_age_s)

    committed = {p.stem for p in files("messages")}  # segments whose commit record is old enough
    inputs: dict[str, list[Path]] = {}
    orphans: list[Path] = []
    for name in _ORDER:
        found = files(name)
        if name in _KEYED:
            inputs[name] = [p for p in found if p.stem in committed]
            orphans += [p for p in found if p.stem not in committed and not (root / "messages" / f"day={day}" /
                        p.name).exists() and now - p.stat().st_mtime >= orphan_age_s]
        else:
            inputs[name] = found
    if all(len(v) <= 1 for v in inputs.values()) and not orphans:
        return
    seg = f"compact-{day}-{time.time_ns()}-{secrets.token_hex(4)}"
    lost = _lost_keys(inputs["messages"])  # per segment: keys another segment's copy wins
    written: list[tuple[Path, Path]] = []
    for name in _ORDER:
        if not inputs[name]:
            continue
        folder = root / name / f"day={day}"
        tmp, final = folder / f".{seg}.parquet.tmp", folder / f"{seg}.parquet"
        dropped = _rewrite(name, inputs[name], lost, seg, tmp, row_group_rows)
        result.duplicate_rows_dropped += dropped
        written.append((tmp, final))
    for tmp, final in written:  # _ORDER puts messages last: the new segment is chosen only once complete
        os.replace(tmp, final)
        _note(observer, f"renamed {final.relative_to(root)}")
    old = [p for name in _ORDER for p in inputs[name]]
    result.bytes_before += sum(p.stat().st_size for p in old + orphans)
    result.files_before += len(old) + len(orphans)
    for p in inputs["messages"]:
        p.unlink()
        _note(observer, f"deleted {p.relative_to(root)}")
    if settle_s > 0:
        time.sleep(settle_s)
    for p in [p for name in _ORDER if name != "messages" for p in inputs[name]] + orphans:
        p.unlink()
        _note(observer, f"deleted {p.relative_to(root)}")
    result.orphans_deleted += len(orphans)
    result.files_after += len(written)
    result.bytes_after += sum(final.stat().st_size for _, final in written)
    result.days.append(day)


def _note(observer: Callable[[str], None] | None, event: str) -> None:
    if observer is not None:
        observer(event)


def _lost_keys(message_files: list[Path]) -> dict[str, pl.DataFrame]:
    """For each segment, the message keys whose chosen copy (lowest ``seg``) is another segment's."""
    if not message_files:
        return {}
    keys = pl.concat([pl.read_parquet(p, columns=[*_KEY, "seg"], hive_partitioning=False) for p in message_files])
    dup = keys.group_by(_KEY).agg(chosen=pl.col("seg").min(), n=pl.col("seg").n_unique()).filter(pl.col("n") > 1)
    if dup.height == 0:
        return {}
    lost = keys.join(dup, on=_KEY).filter(pl.col("seg") != pl.col("chosen")).unique()
    return {s: part.select(_KEY) for (s,), part in lost.partition_by("seg", as_dict=True).items()}


def _rewrite(name: str, sources: list[Path], lost: dict[str, pl.DataFrame], seg: str, tmp: Path,
             row_group_rows: int) -> int:
    """Write ``sources`` as one file at ``tmp``; returns the rows left out as duplicates."""
    schema = pa.unify_schemas([_plain(pq.read_schema(p)) for p in sources], promote_options="permissive")
    if name in ("pods", "dead_letters"):  # small: reduce in memory exactly as the reader's view does
        frame = pl.concat([_frame(_conform(pq.read_table(p), schema)) for p in sources], how="vertical_relaxed")
        if name == "pods":
            out = frame.sort("last_seen_ns", descending=True, maintain_order=True).unique("pod_uid", keep="first",
                                                                                       maintain_order=True)
        else:
            out = frame.sort("seg", maintain_order=True).unique(["topic", "partition", "offset"], keep="first",
                                                               maintain_order=True)
        pq.write_table(_conform(out.to_arrow(), schema), tmp, compression="zstd", row_group_size=row_group_rows)
        return frame.height - out.height
    dropped = 0
    buffer: list[pa.Table] = []
    buffered = 0
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for path, batch in ((p, b) for p in sources for b in pq.ParquetFile(p).iter_batches(row_group_rows)):
            table = _conform(pa.Table.from_batches([batch]), schema)  # one row group at a time: bounded memory
            gone = lost.get(path.stem)
            if gone is not None and name in _KEYED:
                kept = _frame(table).join(gone, on=_KEY, how="anti")
                dropped += table.num_rows - kept.height
                table = _conform(kept.to_arrow(), schema)
            table = table.set_column(table.schema.get_field_index("seg"), "seg", pa.array([seg] * table.num_rows, pa.string()))
            buffer.append(table)
            buffered += table.num_rows
            if buffered >= row_group_rows:
                writer.write_table(pa.concat_tables(buffer), row_group_size=row_group_rows)
                buffer, buffered = [], 0
        if buffered:
            writer.write_table(pa.concat_tables(buffer), row_group_size=row_group_rows)
    return dropped


def _frame(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _plain(schema: pa.Schema) -> pa.Schema:
    """Dictionary-encoded columns as their values' type (Parquet dictionary-encodes them on disk anyway)."""
    return pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema])


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns, in its order and types (absent columns null)."""
    cols = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.table(cols, schema=schema)
