"""Store-and-forward: a bounded on-disk spool in front of the Kafka publisher.

Every message is appended to the spool first (a write-ahead log of segment
files), and a sender thread publishes the spool in order, advancing a
persisted cursor only after the broker acknowledged (``Publisher.flush``
returned). So:

- while the broker is unreachable, ticks accumulate on disk and the agent's
  sampling never blocks on the network;
- on reconnect the backlog is replayed in order (one node's records stay in
  one partition), then new ticks follow;
- an agent restart resumes from the cursor (records after it are sent again:
  ingest is idempotent on ``(agent_id, boot_id, seq)``, so at-least-once is
  exactly-once in the store);
- when the spool exceeds ``max_bytes`` the *oldest* segment is deleted, the
  records lost are counted (``gpuledger_spool_dropped_records_total``) and a
  warning is logged. Nothing is dropped silently.

On-disk format: ``<dir>/<16-digit segment number>.seg`` files of records
``u32 length | u32 crc32 | value``, and ``<dir>/cursor`` (``segment offset``,
replaced atomically). A torn tail record (crash mid-write) fails its CRC and
is skipped with a log line. The default size, 256 MiB, holds about 3.9 days
of one 8-GPU node with 32 processes at a 10 s tick (messages of ~7.7 KB,
measured by ``make bench``; a test checks it holds at least a day).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.metrics_core import Metric

from gpuledger.errors import ConfigError, TransportError
from gpuledger.transport import Publisher

log = logging.getLogger("gpuledger.agent.spool")

DEFAULT_MAX_BYTES = 256 * 2**20
_REC = struct.Struct("<II")  # length, crc32


class Spool:
    """An append-only, size-bounded queue of byte records on disk (single process)."""

    def __init__(self, directory: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 segment_bytes: int = 4 * 2**20) -> None:
        if max_bytes < 2 * segment_bytes:
            segment_bytes = max(4096, max_bytes // 4)
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"spool directory {self.dir} cannot be created: {exc}",
                              hint="set --spool-dir to a writable directory (DaemonSet: a hostPath volume)") from None
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.dropped_records = 0
        self._dropped_at_peek = 0
        self.appended_records = 0
        self._lock = threading.Lock()
        segs = self._segments()
        self._cursor = self._read_cursor(segs)
        self._head = segs[-1] if segs else self._cursor[0]
        self._out = open(self._path(self._head), "ab")  # noqa: SIM115  # kept open for appends
        self._pending = len(self.peek(2**62)[0])  # one full read at start-up; a counter from then on

    # --- files ---------------------------------------------------------------------

    def _path(self, seg: int) -> Path:
        return self.dir / f"{seg:016d}.seg"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.seg") if p.stem.isdigit())

    def _read_cursor(self, segs: list[int]) -> tuple[int, int]:
        try:
            seg, off = (int(x) for x in (self.dir / "cursor").read_text().split())
        except (OSError, ValueError):
            return (segs[0], 0) if segs else (0, 0)
        if segs and seg < segs[0]:
            return segs[0], 0
        return seg, off

    def _write_cursor(self) -> None:
        tmp = self.dir / "cursor.tmp"
        tmp.write_text(f"{self._cursor[0]} {self._cursor[1]}\n")
        os.replace(tmp, self.dir / "cursor")

    def size_bytes(self) -> int:
        return sum(self._path(s).stat().st_size for s in self._segments() if self._path(s).exists())

    # --- producer side ---------------------------------------------------------------

    def append(self, value: bytes) -> None:
        """Add one record at the tail (flushed to the OS; fsync is left to the OS's writeback)."""
        with self._lock:
            if self._out.tell() >= self.segment_bytes:
                self._out.close()
                self._head += 1
                self._out = open(self._path(self._head), "ab")  # noqa: SIM115
            self._out.write(_REC.pack(len(value), zlib.crc32(value)) + value)
            self._out.flush()
            self.appended_records += 1
            self._pending += 1
            self._enforce_bound()

    def _enforce_bound(self) -> None:
        segs = self._segments()
        total = sum(self._path(s).stat().st_size for s in segs)
        while total > self.max_bytes and len(segs) > 1:
            oldest = segs.pop(0)
            path = self._path(oldest)
            start = self._cursor[1] if self._cursor[0] == oldest else 0
            lost = 0 if self._cursor[0] > oldest else sum(1 for _ in _records(path, start))
            before = total
            total -= path.stat().st_size
            path.unlink()
            if self._cursor[0] <= oldest:
                self._cursor = (segs[0], 0)
                self._write_cursor()
            if lost:
                self.dropped_records += lost
                self._pending -= lost
                log.warning("spool full (%d bytes > %d): dropped the oldest %d unsent records (%d dropped in "
                            "all); the broker has been unreachable too long -- raise --spool-max-bytes or fix "
                            "the broker", before, self.max_bytes, lost, self.dropped_records)

    # --- consumer side ---------------------------------------------------------------

    def peek(self, limit: int) -> tuple[list[bytes], tuple[int, int]]:
        """Up to ``limit`` unsent records in order, and the cursor after them (for ``ack``)."""
        with self._lock:
            self._dropped_at_peek = self.dropped_records
            out: list[bytes] = []
            seg, off = self._cursor
            while len(out) < limit and seg <= self._head:
                path = self._path(seg)
                if path.exists():
                    for value, end in _records(path, off):
                        out.append(value)
                        off = end
                        if len(out) >= limit:
                            break
                    if len(out) >= limit:
                        break
                if seg == self._head:
                    break
                seg, off = seg + 1, 0
            return out, (seg, off)

    def ack(self, cursor: tuple[int, int], count: int) -> None:
        """The ``count`` records before ``cursor`` (from ``peek``) were delivered: persist the cursor and
        delete finished segments."""
        with self._lock:
            if cursor <= self._cursor:
                return  # the bound dropped past it meanwhile (and counted those records as dropped)
            self._pending -= count
            recount = self.dropped_records != self._dropped_at_peek  # the bound dropped records meanwhile
            if cursor == (self._head, self._out.tell()) and cursor[1] > 0:
                # everything delivered: start a fresh head segment so the spool's disk use drops to ~0
                # (cursor first, then delete: a crash in between only re-sends, never skips)
                self._out.close()
                self._head += 1
                self._out = open(self._path(self._head), "ab")  # noqa: SIM115
                cursor = (self._head, 0)
            self._cursor = cursor
            self._write_cursor()
            for seg in self._segments():
                if seg < cursor[0]:
                    self._path(seg).unlink(missing_ok=True)
        if recount:  # rare: count again rather than subtract twice
            values, _ = self.peek(2**62)
            with self._lock:
                self._pending = len(values)

    def pending(self) -> int:
        """Records not yet acknowledged."""
        return self._pending

    def close(self) -> None:
        with self._lock:
            self._out.close()


def _records(path: Path, start: int) -> Iterator[tuple[bytes, int]]:
    """(value, offset after it) from ``start``; stops at a torn or corrupt tail."""
    try:
        data = path.read_bytes()
    except OSError:
        return
    off = start
    while off + _REC.size <= len(data):
        n, crc = _REC.unpack_from(data, off)
        end = off + _REC.size + n
        value = data[off + _REC.size:end]
        if end > len(data) or zlib.crc32(value) != crc:
            log.warning("spool segment %s: torn or corrupt record at byte %d; skipping the rest", path, off)
            return
        yield value, end
        off = end


class SpoolingPublisher:
    """A Publisher-like front that never blocks the tick: spool, then send in the background.

    ``factory`` makes the real publisher (e.g. a KafkaPublisher); after a
    failed flush the publisher is closed and a fresh one made, so a client
    stuck on a restarted broker does not stay stuck. Retries back off from
    ``retry_min_s`` doubling to ``retry_max_s``.

    The log says when the broker's state changes, once per change, with the
    spool's counters (waiting, dropped, sent, failed attempts): a WARNING when
    a send fails after the broker answered (or at the first try), an INFO when
    it answers again. Retries in between are counted
    (``gpuledger_spool_send_failures_total``), not logged.
    """

    def __init__(self, factory: Callable[[], Publisher], spool: Spool, *, batch: int = 200,
                 retry_min_s: float = 0.5, retry_max_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.factory = factory
        self.spool = spool
        self.batch = batch
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self.sent_records = 0
        self.failures = 0
        self.connected = False
        self._down_since: float | None = None  # clock() when the broker became unreachable (None: not down)
        self._key: bytes = b""
        self._publisher: Publisher | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._clock = clock
        self._thread = threading.Thread(target=self._run, name="gpuledger-spool-sender", daemon=True)
        self._thread.start()

    def publish(self, key: bytes, value: bytes) -> None:
        """Spool one record (keyed by node: one key per agent) and wake the sender."""
        self._key = key
        self.spool.append(value)
        self._wake.set()

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until the spool is drained (or ``timeout_s`` passes); raise TransportError if not."""
        deadline = None if timeout_s is None else self._clock() + timeout_s
        self._wake.set()
        while self.spool.pending():
            if deadline is not None and self._clock() > deadline:
                raise TransportError(f"{self.spool.pending()} spooled records not delivered in {timeout_s} s",
                                     hint="they stay in the spool and are sent after a restart")
            time.sleep(0.05)

    def close(self, timeout_s: float = 10.0) -> None:
        try:
            self.flush(timeout_s)
        except TransportError as exc:
            log.warning("closing with records still spooled: %s (%s)", exc, exc.hint)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        self._drop_publisher()
        self.spool.close()

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            self._wake.wait(backoff or None)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                while self._send_batch():
                    pass
                backoff = 0.0
            except TransportError as exc:
                self.failures += 1
                backoff = min(self.retry_max_s, max(self.retry_min_s, backoff * 2))
                if self._down_since is None:  # up (or not tried yet) -> down: the one line for this outage
                    self._down_since = self._clock()
                    log.warning("broker unreachable: %s (hint: %s); spooling, retrying with backoff from %g s up "
                                "to %g s without further log lines; %s", exc, exc.hint, self.retry_min_s,
                                self.retry_max_s, self.counters())
                self.connected = False
                self._drop_publisher()

    def _send_batch(self) -> bool:
        values, cursor = self.spool.peek(self.batch)
        if not values:
            return False
        if self._publisher is None:
            self._publisher = self.factory()
        for value in values:
            self._publisher.publish(self._key, value)
        self._publisher.flush()
        self.spool.ack(cursor, len(values))
        self.sent_records += len(values)
        if not self.connected:
            self.connected = True
            if self._down_since is not None:
                log.info("broker reachable again after %.1f s unreachable; %s", self._clock() - self._down_since,
                         self.counters())
            else:
                log.info("broker reachable; %s", self.counters())
            self._down_since = None
        return True

    def counters(self) -> str:
        """The spool's counters as one phrase for the log (the same figures as /metrics)."""
        return (f"spool: {self.spool.pending()} records waiting, {self.spool.dropped_records} dropped, "
                f"{self.sent_records} sent, {self.failures} failed send attempts")

    def _drop_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            try:
                publisher.close()
            except TransportError:
                pass

    def collect(self) -> Iterator[Metric]:
        """Spool series for the agent's /metrics."""
        for name, typ, doc, value in (
            ("gpuledger_spool_dropped_records", "counter", "Spooled records dropped (oldest first) because "
             "the spool was full.", self.spool.dropped_records),
            ("gpuledger_spool_sent_records", "counter", "Records the broker acknowledged.", self.sent_records),
            ("gpuledger_spool_send_failures", "counter", "Failed send attempts (broker unreachable).",
             self.failures),
        ):
            m = Metric(name, doc, typ)
            m.add_sample(name + "_total", {}, float(value))
            yield m
        waiting = Metric("gpuledger_spool_pending_records", "Records spooled and not yet acknowledged.", "gauge")
        waiting.add_sample(waiting.name, {}, float(self.spool.pending()))
        yield waiting
        size = Metric("gpuledger_spool_size_bytes", "Bytes on disk in the spool.", "gauge")
        size.add_sample(size.name, {}, float(self.spool.size_bytes()))
        bound = Metric("gpuledger_spool_max_bytes", "The spool's bound (spool_max_bytes): past it the oldest "
                       "records are dropped.", "gauge")
        bound.add_sample(bound.name, {}, float(self.spool.max_bytes))
        up = Metric("gpuledger_spool_broker_up", "1 when the last send to the broker succeeded.", "gauge")
        up.add_sample(up.name, {}, 1.0 if self.connected else 0.0)
        yield from (size, bound, up)
