"""From Parquet segments to the serving DuckDB file, and their retention.

The scale path (``ingest --segments DIR``, :mod:`gpuledger.ingest.segments`)
lets many workers write raw samples without a single writer. Attribution,
closing and the API work on one DuckDB file, so the segments are merged into
it, the same step as merging N workers' DuckDB files
(:meth:`gpuledger.store.Store.absorb`):

- :func:`merge_segments` copies every message (with its rows) whose key
  (agent_id, boot_id, seq) the file lacks, pods by latest seen and dead
  letters by topic/partition/offset. Each segment is read once: its
  ``messages`` file (the segment's commit record) and each ``dead_letters``
  file are listed in ``merged_segments`` in the transaction that copies them.
  A segment whose key another segment already delivered (a rebalance) adds
  nothing; a day compaction rewrote is read once more and adds nothing.
- :func:`retire_segments` deletes whole ``day=`` directories older than the
  raw cut-off once every message in them is attributed in the file and every
  segment of the day merged, ``messages`` first (readers in place then no
  longer choose the day's rows), then the other tables'. Days that still hold
  something the ledger lacks stay, with the reason.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from gpuledger import wire
from gpuledger.errors import GpuledgerError, StoreError
from gpuledger.store import INGEST_TABLES, NEW_DEAD_LETTER, PODS_LATEST_WINS, Store
from gpuledger.timeutil import DAY_NS

__all__ = ["MergeResult", "RetireResult", "merge_segments", "retire_segments"]



@dataclass
class MergeResult:
    segments: int = 0  # messages files read (one per segment)
    messages: int = 0  # new messages stored
    dead_letter_files: int = 0
    dead_letters: int = 0  # new dead letters stored


def _listing(root: Path, name: str) -> dict[str, Path]:
    """``<table>/day=D/<seg>.parquet`` (relative, as recorded) -> path; in-flight ``.tmp`` files excluded."""
    return {p.relative_to(root).as_posix(): p for p in sorted(root.glob(f"{name}/day=*/*.parquet"))
            if not p.name.startswith(".")}


def _files(paths: Iterable[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _read(paths: Iterable[Path]) -> str:
    return f"read_parquet({_files(paths)}, hive_partitioning = false, union_by_name = true)"


def merge_segments(store: Store, root: str | Path, *, files_per_step: int = 500,
                   progress: Callable[[int, int], None] | None = None) -> MergeResult:
    """Copy the segments under ``root`` that ``store`` has not merged yet; idempotent.

    Works in steps of ``files_per_step`` segments, one transaction each (a
    crash repeats at most the step in flight, which the message keys make
    harmless). ``progress(done, total)`` is called after each step.
    """
    root = Path(root)
    if not (root / "messages").is_dir() and not (root / "dead_letters").is_dir():
        raise GpuledgerError(f"no segments under {root}", hint="the DIR of `gpuledger ingest --segments DIR`")
    done = set(store.query("SELECT file FROM merged_segments")["file"].to_list())
    listed = {name: _listing(root, name) for name in INGEST_TABLES}
    by_seg: dict[str, dict[str, list[Path]]] = {name: {} for name in (*wire.RECORD_TABLES, "pods")}
    for name, seg_files in by_seg.items():
        for path in listed[name].values():
            seg_files.setdefault(path.stem, []).append(path)
    todo = [(key, path) for key, path in listed["messages"].items() if key not in done]
    letters = [(key, path) for key, path in listed["dead_letters"].items() if key not in done]
    result = MergeResult()
    total = len(todo) + len(letters)
    steps = [("messages", todo[i:i + files_per_step]) for i in range(0, len(todo), files_per_step)]
    steps += [("dead_letters", letters[i:i + files_per_step]) for i in range(0, len(letters), files_per_step)]
    for table, step in steps:
        try:
            if table == "messages":
                result.messages += _merge_step(store, [p for _, p in step], by_seg)
                result.segments += len(step)
            else:
                result.dead_letters += _merge_letters(store, [p for _, p in step])
                result.dead_letter_files += len(step)
        except StoreError as exc:
            raise type(exc)(f"merging segments under {root} failed: {exc}",
                            hint="a compaction may have replaced files while this ran: run the merge again "
                                 "(it is idempotent)") from exc
        if progress:
            progress(result.segments + result.dead_letter_files, total)
    _forget_gone(store, {key for files in listed.values() for key in files})
    return result


def _record(store: Store, paths: list[Path], root_of: Callable[[Path], str]) -> None:
    store.append("merged_segments", pl.DataFrame({"file": [root_of(p) for p in paths]}))


def _merge_step(store: Store, messages: list[Path], by_seg: dict[str, dict[str, list[Path]]]) -> int:
    segs = [p.stem for p in messages]
    root = messages[0].parents[2]
    with store.transaction() as tx:
        tx.execute(f"CREATE OR REPLACE TEMP TABLE _segnew AS SELECT agent_id, boot_id, seq, min(seg) AS seg "
                   f"FROM {_read(messages)} GROUP BY ALL")
        tx.execute("DELETE FROM _segnew n USING messages m WHERE n.agent_id = m.agent_id AND n.boot_id = m.boot_id "
                   "AND n.seq = m.seq")
        added = int(tx.scalar("SELECT count(*) FROM _segnew"))
        if added:
            tx.execute(f"INSERT INTO messages BY NAME SELECT t.* EXCLUDE (seg) FROM {_read(messages)} t "
                       "SEMI JOIN _segnew USING (agent_id, boot_id, seq, seg)")
            for name in wire.RECORD_TABLES:
                files = [p for s in segs for p in by_seg[name].get(s, [])]
                if files:
                    tx.execute(f"INSERT INTO {name} BY NAME SELECT t.* EXCLUDE (seg) FROM {_read(files)} t "
                               "SEMI JOIN _segnew USING (agent_id, boot_id, seq, seg)")
        pods = [p for s in segs for p in by_seg["pods"].get(s, [])]
        if pods:  # latest seen wins, as in ingest; one row per pod first (ON CONFLICT needs unique input)
            found = set(tx.query(f"DESCRIBE SELECT * FROM {_read(pods)}")["column_name"])
            cluster = "arg_max(cluster, last_seen_ns)" if "cluster" in found else "NULL"  # segments older than clusters
            tx.execute(
                "INSERT INTO pods SELECT pod_uid, arg_max(namespace, last_seen_ns), arg_max(name, last_seen_ns), "
                f"arg_max(labels, last_seen_ns)::JSON, max(last_seen_ns), {cluster} FROM {_read(pods)} "
                f"GROUP BY pod_uid {PODS_LATEST_WINS}")
        tx.execute("DROP TABLE _segnew")
        _record(tx, messages, lambda p: p.relative_to(root).as_posix())
    return added


def _merge_letters(store: Store, files: list[Path]) -> int:
    root = files[0].parents[2]
    with store.transaction() as tx:
        before = tx.count("dead_letters")
        tx.execute(
            'INSERT INTO dead_letters SELECT topic, partition, "offset", reason, payload, size_bytes, '
            f"to_timestamp(interval_start_ns / 1e9) FROM {_read(files)} d WHERE {NEW_DEAD_LETTER} "
            'QUALIFY row_number() OVER (PARTITION BY topic, partition, "offset", '
            'CASE WHEN "offset" IS NULL THEN seg END ORDER BY seg) = 1')
        added = tx.count("dead_letters") - before
        _record(tx, files, lambda p: p.relative_to(root).as_posix())
    return added


def _forget_gone(store: Store, present: set[str]) -> None:
    """Drop the record of files a compaction or retention deleted (their rows are merged)."""
    recorded = store.query("SELECT file FROM merged_segments")["file"].to_list()
    gone = [f for f in recorded if f not in present]
    if gone:
        with store.transaction() as tx:
            with tx.registered(_gone=pl.DataFrame({"file": gone})):
                tx.execute("DELETE FROM merged_segments WHERE file IN (SELECT file FROM _gone)")


@dataclass
class RetireResult:
    days_deleted: list[str] = field(default_factory=list)
    files_deleted: int = 0
    bytes_deleted: int = 0
    kept: dict[str, str] = field(default_factory=dict)  # day -> why it stays


def retire_segments(store: Store, root: str | Path, cutoff_ns: int,
                    observer: Callable[[str], None] | None = None) -> RetireResult:
    """Delete the ``day=`` directories before ``cutoff_ns`` (a UTC day or month start) that
    ``store`` fully covers: every message attributed, every segment merged."""
    root = Path(root)
    cutoff_day = str(np.datetime64(cutoff_ns // DAY_NS, "D"))
    merged = set(store.query("SELECT file FROM merged_segments")["file"].to_list())
    days = sorted({p.name.removeprefix("day=") for p in root.glob("*/day=*") if p.is_dir()})
    result = RetireResult()
    listed = {name: _listing(root, name) for name in INGEST_TABLES}
    segments = {p.stem: k in merged for k, p in listed["messages"].items()}  # segment -> merged?
    for day in (d for d in days if d < cutoff_day):
        mine = {name: {k: p for k, p in files.items() if f"/day={day}/" in k} for name, files in listed.items()}
        why = _why_kept(store, mine, merged, segments)
        if why:
            result.kept[day] = why
            continue
        for name in INGEST_TABLES:  # messages first: from then on no reader chooses the day's rows
            folder = root / name / f"day={day}"
            if folder.is_dir():
                files = [p for p in folder.iterdir() if p.is_file()]
                result.files_deleted += len(files)
                result.bytes_deleted += sum(p.stat().st_size for p in files)
                shutil.rmtree(folder)
                if observer:
                    observer(f"deleted {folder.relative_to(root)}")
        result.days_deleted.append(day)
    return result


def _why_kept(store: Store, mine: dict[str, dict[str, Path]], merged: set[str],
              segments: dict[str, bool]) -> str | None:
    unmerged = [k for name in ("messages", "dead_letters") for k in mine[name] if k not in merged]
    # A segment's pods are filed by the day last seen, which may precede its messages' day.
    unmerged += [k for k, p in mine["pods"].items() if not segments.get(p.stem, True)]
    if unmerged:
        return f"{len(unmerged)} segment files not merged yet (gpuledger merge --segments)"
    if mine["messages"]:
        pending = int(store.scalar(f"SELECT count(*) FROM (SELECT DISTINCT agent_id, boot_id, seq FROM "
                                   f"{_read(mine['messages'].values())}) ANTI JOIN attributed "
                                   "USING (agent_id, boot_id, seq)"))
        if pending:
            return f"{pending} messages not attributed yet (gpuledger attribute)"
    return None
