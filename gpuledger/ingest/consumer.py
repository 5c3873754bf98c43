"""Ingest: transport records -> decoded wire messages -> DuckDB, then commit.

One flush is one unit of work::

    records = subscriber.poll()                  # up to batch_max records (linger_s to fill)
    batch = decode_batch(values)                 # whole poll -> Arrow tables (ingest.batch);
                                                 # failures -> dead letters (reason, payload, where)
    clock check                                  # implausible intervals -> quarantined dead letters
    with opener() as store:                      # the file is held only now (ingest.opener)
        store.write_arrow(batch)                 # one transaction, idempotent on
                                                 # (agent_id, boot_id, seq)
        store.write_dead_letters(dead)           # idempotent on topic/partition/offset
    subscriber.commit(records)                   # only after both writes returned

Delivery is at-least-once (a crash between store and commit redelivers the
batch) and the store is idempotent, so the effect is exactly once. Bad input
never crashes ingest, never blocks a partition and never vanishes: it becomes a
dead letter with its bytes and the reason. A failing *database* is different:
``StoreError`` propagates and nothing is committed, so the records come again
once the store is fixed.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from gpuledger import wire
from gpuledger.errors import StoreError, TransportError, WireError
from gpuledger.ingest.batch import ArrowBatch, HeaderCache, decode_batch
from gpuledger.ingest.clock import ClockCheck
from gpuledger.ingest.metrics import IngestMetrics, MeasuredOpener, MeasuredSubscriber
from gpuledger.ingest.opener import FileOpener
from gpuledger.store import DeadLetter, RawWriter, Store
from gpuledger.transport import KafkaSubscriber, Record, Subscriber

if TYPE_CHECKING:  # the lake is an optional extra (pyiceberg): imported only when ingest is given one
    from gpuledger.store.lake import LakeConfig, LakeStore

log = logging.getLogger(__name__)

__all__ = ["ClockCheck", "IngestStats", "Ingestor", "decode_record", "run_ingest"]


@dataclass
class IngestStats:
    """Counters for one step or a whole run (all counts of records/messages)."""

    records: int = 0  # records polled from the transport
    bytes: int = 0  # their value bytes
    stored: int = 0  # messages new to the store
    duplicates: int = 0  # decoded but already stored (redelivery, replay, repeat in a batch)
    dead_letters: int = 0  # undecodable or unstorable records sent to dead_letters
    batches: int = 0  # non-empty polls processed
    quarantined: int = 0  # of the dead letters: decodable, but the interval fails the clock check
    rows: int = 0  # record-table rows (devices, processes, allocations, field errors) decoded
    commit_failures: int = 0  # commits the broker refused (records will be redelivered)

    def add(self, other: IngestStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def copy(self) -> IngestStats:
        return IngestStats(**{f.name: getattr(self, f.name) for f in fields(self)})

    def summary(self) -> str:
        return (
            f"{self.records} records ({self.bytes / 1e6:.1f} MB): {self.stored} stored, "
            f"{self.duplicates} duplicates, {self.dead_letters} dead letters ({self.quarantined} quarantined)"
        )


def decode_record(record: Record) -> wire.Message | DeadLetter:
    """Decode one record, or say why it cannot be: never raises."""
    if record.value is None:
        return _dead(record, "record has no value (a tombstone)")
    try:
        return wire.decode(record.value)
    except WireError as exc:
        return _dead(record, str(exc))
    except Exception as exc:  # noqa: BLE001  # a decoder bug must not stop the partition either
        reason = f"decoder failed unexpectedly: {type(exc).__name__}: {exc}"
        log.error("%s at %s", reason, record.source)
        return _dead(record, reason)


def _dead(record: Record, reason: str, *, quarantined: bool = False) -> DeadLetter:
    return DeadLetter(reason=reason, payload=record.value or b"", topic=record.topic,
                      partition=record.partition, offset=record.offset, quarantined=quarantined)


class _Fallback(Exception):
    """The batch decoder failed: store this flush message by message."""


@dataclass
class _Flush:
    """One poll's records on their way: decoded (``batch``; None: decode failed), not yet stored."""

    records: list[Record]
    stats: IngestStats
    batch: ArrowBatch | None
    dead: list[DeadLetter]


class Ingestor:
    """Moves records from a Subscriber into a Store, one committed batch at a time.

    ``batch_max`` caps the records per flush, hence per DuckDB transaction
    (500 records of ~10 KB: a few MB, tens of milliseconds to store);
    ``linger_s`` keeps polling up to that many seconds after the first record
    to fill a flush. ``store`` is an open Store, or a :class:`FileOpener` that
    holds the file only while a flush writes. ``pipeline``: in :meth:`run`,
    decode the next poll while a background thread writes the previous flush
    (DuckDB releases the GIL); commits stay in order, each after its write.
    ``progress`` is called after every step with the running totals.
    ``clock`` (seconds, monotonic) is injectable for tests of ``max_idle_s``;
    ``wall_clock_ns`` (ns since the epoch) and ``clock_check`` decide which
    intervals are quarantined as implausible (see :class:`ClockCheck`; the
    default checks nothing, for replays of simulated or recorded data; the
    ``gpuledger ingest`` service passes the configured bounds).
    ``keepalive_s``: in :meth:`run` with ``pipeline``, decoding and storing run
    on worker threads and the loop calls ``subscriber.keepalive()`` every
    ``keepalive_s`` seconds while it waits for them, so a slow flush (poison on
    the per-message path, a database lock) never outlasts the consumer group's
    max poll interval and costs the membership.
    """

    def __init__(
        self,
        store: Store | Callable[[], AbstractContextManager[RawWriter]],
        subscriber: Subscriber,
        *,
        batch_max: int = 500,
        progress: Callable[[IngestStats], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        clock_check: ClockCheck | None = None,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        linger_s: float = 0.0,
        pipeline: bool = False,
        keepalive_s: float = 1.0,
    ) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be >= 1")
        self.store = store
        self._open: Callable[[], AbstractContextManager[RawWriter]] = (
            (lambda: nullcontext(store)) if isinstance(store, Store) else store
        )
        self.subscriber = subscriber
        self.batch_max = batch_max
        self.progress = progress
        self.clock = clock
        self.totals = IngestStats()
        self.clock_check = clock_check or ClockCheck(max_future_s=None, max_age_s=None)
        self.wall_clock_ns = wall_clock_ns
        self.linger_s = linger_s
        self.pipeline = pipeline
        self.keepalive_s = keepalive_s
        self._headers = HeaderCache()

    def step(self, timeout_s: float = 1.0) -> IngestStats:
        """Poll once (waiting up to ``timeout_s`` seconds), store, commit; return this step's counts."""
        records = self._poll(timeout_s)
        stats = IngestStats()
        if records:
            flush = self._prepare(records)
            self._write(flush)
            self._finish(flush)
            stats = flush.stats
        self._account(stats)
        return stats

    def _poll(self, timeout_s: float) -> list[Record]:
        records = self.subscriber.poll(timeout_s, max_records=self.batch_max)
        if records and self.linger_s > 0:  # fill the flush: bigger batches, fewer file opens
            deadline = self.clock() + self.linger_s
            while len(records) < self.batch_max and (left := deadline - self.clock()) > 0:
                more = self.subscriber.poll(left, max_records=self.batch_max - len(records))
                if not more:
                    break
                records.extend(more)
        return records

    def _prepare(self, records: list[Record]) -> _Flush:
        """Decode the whole poll into Arrow and quarantine bad clocks (no database work)."""
        stats = IngestStats(records=len(records), batches=1,
                            bytes=sum(len(r.value) for r in records if r.value is not None))
        try:
            batch = decode_batch([r.value for r in records], [r.source for r in records], self._headers)
            dead = [_dead(records[i], reason) for i, reason in sorted(batch.failed.items())]
            kept, late = self.clock_check.apply(batch, self.wall_clock_ns())
            dead.extend(_dead(records[i], reason, quarantined=True) for i, reason in late)
            stats.rows = kept.rows()
            return _Flush(records, stats, kept, dead)
        except Exception as exc:  # noqa: BLE001  # a batch-decoder bug: take the slow, strict path
            log.error("batch decode failed (%s: %s); decoding message by message", type(exc).__name__, exc)
            return _Flush(records, stats, None, [])

    def _write(self, flush: _Flush) -> None:
        """Store one flush in one transaction, and its dead letters (touches only the store)."""
        stats = flush.stats
        with self._open() as store:  # the file is held only for this flush (see ingest.opener)
            try:
                if flush.batch is None:
                    raise _Fallback
                stored = store.write_arrow(flush.batch.tables)
                duplicates, dead = flush.batch.n_messages - stored, flush.dead
            except StoreError:
                raise
            except Exception as exc:  # noqa: BLE001  # not storable as a batch: isolate message by message
                if not isinstance(exc, _Fallback):
                    log.error("batch not storable (%s: %s); storing message by message", type(exc).__name__, exc)
                stored, duplicates, dead = self._store_one_by_one(store, flush.records)
            stats.stored, stats.duplicates, stats.dead_letters = stored, duplicates, len(dead)
            stats.quarantined = sum(1 for d in dead if d.quarantined)
            store.write_dead_letters(dead)

    def _finish(self, flush: _Flush) -> None:
        """Commit past the flush's records: only after ``_write`` returned."""
        try:
            self.subscriber.commit(flush.records)
        except TransportError as exc:
            # Stored already; the subscriber owes these offsets and commits them with the next
            # commit (after rejoining its group), or they are redelivered and skipped as duplicates.
            flush.stats.commit_failures = 1
            log.warning("offset commit failed (%s); %s", exc, exc.hint)

    def _wait(self, future: Future[Any]) -> Any:
        """The worker's result, keeping the group membership while it runs (``keepalive_s``)."""
        keepalive = getattr(self.subscriber, "keepalive", None)
        while True:
            try:
                return future.result(timeout=self.keepalive_s if keepalive is not None else None)
            except FutureTimeout:
                try:
                    keepalive()  # type: ignore[misc]
                except TransportError as exc:  # the broker is away: the flush goes on; its commit will tell
                    log.warning("keepalive failed (%s); %s", exc, exc.hint)

    def _account(self, stats: IngestStats) -> None:
        self.totals.add(stats)
        if self.progress is not None:
            self.progress(self.totals.copy())

    def _store_one_by_one(self, store: RawWriter, records: Sequence[Record]) -> tuple[int, int, list[DeadLetter]]:
        messages: list[wire.Message] = []
        origins: list[Record] = []
        dead: list[DeadLetter] = []
        now = self.wall_clock_ns()
        for record in records:
            decoded = decode_record(record)
            if isinstance(decoded, DeadLetter):
                dead.append(decoded)
                continue
            reason = self.clock_check.reason(decoded.interval_start_ns, decoded.interval_end_ns, now)
            if reason is not None:
                dead.append(_dead(record, reason, quarantined=True))
                continue
            messages.append(decoded)
            origins.append(record)
        stored, unstorable = self._store(store, messages, origins)
        dead.extend(unstorable)
        return stored, len(messages) - len(unstorable) - stored, dead

    def _store(self, store: RawWriter, messages: Sequence[wire.Message],
               origins: Sequence[Record]) -> tuple[int, list[DeadLetter]]:
        """Write messages in one transaction; returns (new count, unstorable as dead letters).

        ``StoreError`` (the database refused or failed) propagates: it is not
        the message's fault. Any other exception comes from turning a decoded
        message into rows; the batch is then retried one message at a time so
        that only the offending messages become dead letters.
        """
        sources = [r.source for r in origins]
        try:
            return store.write_messages(messages, sources=sources), []
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001  # a conversion failure: isolate the offending messages
            log.error("batch of %d messages not storable (%s: %s); isolating", len(messages), type(exc).__name__, exc)
        stored, dead = 0, []
        for message, record in zip(messages, origins):
            try:
                stored += store.write_messages([message], sources=[record.source])
            except StoreError:
                raise
            except Exception as exc:  # noqa: BLE001  # this message cannot be stored: dead letter, with why
                dead.append(_dead(record, f"decoded but not storable: {type(exc).__name__}: {exc}"))
        return stored, dead

    def run(
        self,
        stop: threading.Event | None = None,
        *,
        max_idle_s: float | None = None,
        max_messages: int | None = None,
        poll_s: float = 0.5,
        retry_max_s: float = 30.0,
    ) -> IngestStats:
        """Ingest until ``stop`` is set, nothing came or was written for ``max_idle_s`` seconds,
        or at least ``max_messages`` records were processed; return this run's counts.

        ``poll_s`` bounds how long a stop request waits. Transport failures are
        logged and retried with backoff (doubling up to ``retry_max_s`` seconds);
        a ``StoreError`` stops the run (nothing uncommitted is lost: it is
        redelivered after a restart).
        """
        stop = stop or threading.Event()
        run = IngestStats()
        last_record = self.clock()
        backoff = 0.0
        pool = ThreadPoolExecutor(1, thread_name_prefix="ingest-store") if self.pipeline else None
        decoder = ThreadPoolExecutor(1, thread_name_prefix="ingest-decode") if self.pipeline else None
        pending: tuple[Future[None], _Flush] | None = None

        def complete() -> None:  # wait for the flush in flight, then commit it
            nonlocal pending
            if pending is None:
                return
            future, flush = pending
            pending = None
            self._wait(future)  # StoreError propagates: nothing of this flush is committed
            self._finish(flush)
            self._account(flush.stats)
            run.add(flush.stats)

        def prepare(records: list[Record]) -> _Flush:  # overlaps the flush in flight; polls meanwhile
            if decoder is None:
                return self._prepare(records)
            flush: _Flush = self._wait(decoder.submit(self._prepare, records))
            return flush

        try:
            while not stop.is_set():
                in_flight = len(pending[1].records) if pending is not None else 0
                if max_messages is not None and run.records + in_flight >= max_messages:
                    break
                wait = poll_s
                if max_idle_s is not None:
                    idle_left = max_idle_s - (self.clock() - last_record)
                    if idle_left <= 0:
                        break
                    wait = min(wait, idle_left)
                try:
                    records = self._poll(wait)
                except TransportError as exc:
                    backoff = min(retry_max_s, max(0.5, backoff * 2))
                    log.warning("transport failed: %s (%s); retrying in %.1f s", exc, exc.hint, backoff)
                    complete()
                    stop.wait(backoff)
                    continue
                backoff = 0.0
                flush = prepare(records) if records else None
                writing = pending is not None
                complete()
                if flush is None:
                    if writing:  # idle counts from the end of the last write, not from its records' arrival
                        last_record = self.clock()
                    self._account(IngestStats())
                    continue
                if pool is not None:
                    pending = (pool.submit(self._write, flush), flush)
                else:
                    self._write(flush)
                    self._finish(flush)
                    self._account(flush.stats)
                    run.add(flush.stats)
                last_record = self.clock()
            complete()
        finally:
            if pending is not None:  # leaving on an error: let the write end, commit nothing more
                pending[0].exception()
            for executor in (pool, decoder):
                if executor is not None:
                    executor.shutdown(wait=True)
        return run


# --- the long-running service ------------------------------------------------


def run_ingest(
    bootstrap: str,
    topic: str,
    group_id: str,
    db_path: str | Path,
    *,
    client_settings: Mapping[str, Any] | None = None,
    batch_max: int = 5000,
    linger_s: float = 1.0,
    hold_db: bool = False,
    lock_wait_s: float = 30.0,
    clock_check: ClockCheck | None = None,
    lake: LakeConfig | None = None,
    log_every_s: float = 10.0,
    max_idle_s: float | None = None,
    max_messages: int | None = None,
    stop: threading.Event | None = None,
    max_poll_interval_ms: int = 300_000,
    session_timeout_ms: int = 45_000,
    handle_signals: bool = True,
    metrics: IngestMetrics | None = None,
) -> IngestStats:
    """Run ``gpuledger ingest``: consume ``topic`` as a member of ``group_id`` into
    the DuckDB file ``db_path`` until stopped; return the run's counts.

    This process becomes the database's single writer (see gpuledger.store).
    One file has one writer: to scale out, run more ingest processes in the same
    group on the lake (``lake``), which they share.

    Args:
        bootstrap: Kafka bootstrap servers, ``host:port[,host:port...]``.
        client_settings: passed to the Kafka client unchanged (TLS/SASL:
            ``security_protocol``, ``sasl_mechanism``, ``ssl_cafile``, ...).
        batch_max / linger_s: a flush (one DuckDB transaction, then one
            offset commit) takes up to ``batch_max`` records, polling up to
            ``linger_s`` seconds after the first to fill it.
        hold_db / lock_wait_s: see :mod:`gpuledger.ingest.opener`: by default
            the file is opened per flush and released between flushes, so the
            API and jobs can open it; a flush waits up to ``lock_wait_s``
            seconds for a reader to let go.
        clock_check: quarantine bounds (:class:`ClockCheck`); None checks nothing.
        lake: append to these Iceberg tables instead of the DuckDB file
            (:mod:`gpuledger.store.lake`, docs/lake.md): N workers in one group
            write the same tables; a flush is one commit per table, and
            ``linger_s`` should be the lake's commit interval (the CLI passes it).
            A catalog or object store that does not answer is retried with
            backoff for a minute, then ``LakeUnavailable`` stops the run with
            nothing committed to Kafka.
        log_every_s: seconds between progress log lines (INFO, logger
            ``gpuledger.ingest.consumer``).
        max_idle_s / max_messages: stop conditions for batch jobs and tests;
            None runs until ``stop`` is set or a signal arrives.
        max_poll_interval_ms / session_timeout_ms: consumer-group timing, see
            :class:`gpuledger.transport.KafkaSubscriber`. Two separate limits: the
            session timeout bounds missed heartbeats (a background thread sends them),
            the max poll interval bounds the time between polls. ``linger_s`` is
            capped at a quarter of the max poll interval, and while a flush decodes
            or stores the loop keeps the membership alive (``Subscriber.keepalive``)
            every min(1 s, a quarter of it), so no flush outlasts it.
        handle_signals: on SIGINT/SIGTERM finish the current batch (store and
            commit), leave the group and close the database. A second signal
            interrupts at once. Only possible from the main thread; ignored
            elsewhere.
        metrics: record this run's metrics there (:mod:`gpuledger.ingest.metrics`).

    Raises:
        TransportError: the broker cannot be reached at start-up.
        StoreError: the database cannot be opened or written.
    """
    stop = stop or threading.Event()
    opener: FileOpener | LakeStore
    if lake is not None:
        from gpuledger.store.lake import LakeStore

        opener = LakeStore(lake)
    else:
        opener = FileOpener(db_path, hold=hold_db, lock_wait_s=lock_wait_s)
    try:
        subscriber = KafkaSubscriber(
            bootstrap,
            topic,
            group_id,
            client_settings={**_FETCH, **(client_settings or {})},
            max_poll_interval_ms=max_poll_interval_ms,
            session_timeout_ms=session_timeout_ms,
            max_poll_records=batch_max,
        )
    except BaseException:
        opener.close()
        raise
    reporter = _ProgressLog(log_every_s)
    # A flush never costs the group membership: the loop polls at least every quarter of the max poll
    # interval -- lingering included -- and keeps polling (paused) while a flush decodes or stores.
    quarter_s = max_poll_interval_ms / 4000
    if linger_s > quarter_s:
        log.warning("--linger %.3g s is more than a quarter of the max poll interval (%d ms): lingering %.3g s",
                    linger_s, max_poll_interval_ms, quarter_s)
        linger_s = quarter_s
    if metrics is not None:  # measured from outside the loop (ingest.metrics)
        def progress(totals: IngestStats) -> None:
            reporter(totals)
            metrics.progress(totals)

        ingestor = Ingestor(MeasuredOpener(opener, metrics), MeasuredSubscriber(subscriber, metrics),
                            batch_max=batch_max, progress=progress, linger_s=linger_s, clock_check=clock_check,
                            pipeline=True, keepalive_s=min(1.0, quarter_s))
    else:
        ingestor = Ingestor(opener, subscriber, batch_max=batch_max, progress=reporter, linger_s=linger_s,
                            clock_check=clock_check, pipeline=True, keepalive_s=min(1.0, quarter_s))
    target = f"the lake {lake.warehouse} (catalog {lake.namespace})" if lake is not None else db_path
    log.info("ingesting %s (group %s) from %s into %s", topic, group_id, bootstrap, target)
    try:
        with _stop_on_signals(stop, enabled=handle_signals):
            stats = ingestor.run(stop, max_idle_s=max_idle_s, max_messages=max_messages)
    finally:
        try:
            subscriber.close()
        finally:
            opener.close()
    log.info("ingest stopped: %s", ingestor.totals.summary())
    return stats


#: Consumer fetch sizes for large flushes (kafka-python's defaults: 50 MiB per
#: fetch, 1 MiB per partition, which caps a poll at ~100 node messages per partition).
_FETCH = {"fetch_max_bytes": 64 * 2**20, "max_partition_fetch_bytes": 16 * 2**20}


class _ProgressLog:
    """Logs the running totals and the rate at most once per ``every_s`` seconds."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self._last_t = clock()
        self._last_records = 0

    def __call__(self, totals: IngestStats) -> None:
        now = self.clock()
        if now - self._last_t < self.every_s:
            return
        rate = (totals.records - self._last_records) / (now - self._last_t)
        log.info("ingest: %s; %.0f records/s", totals.summary(), rate)
        self._last_t, self._last_records = now, totals.records


@contextmanager
def _stop_on_signals(stop: threading.Event, *, enabled: bool) -> Iterator[None]:
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in sigs}

    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("%s received: finishing the current batch, then stopping", signal.Signals(signum).name)
        stop.set()
        for s in sigs:  # a second signal interrupts at once
            signal.signal(s, previous[s])

    for s in sigs:
        signal.signal(s, handle)
    try:
        yield
    finally:
        for s in sigs:
            signal.signal(s, previous[s])
