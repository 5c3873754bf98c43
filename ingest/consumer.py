"""Ingest: transport records -> decoded wire messages -> DuckDB, then commit.

One poll is one unit of work::

    records = subscriber.poll()                  # up to batch_max records
    decode each: ok -> messages, failure -> dead letters (reason, payload, where)
    store.write_messages(messages)               # one transaction, idempotent on
                                                 # (agent_id, boot_id, seq)
    store.write_dead_letters(dead)               # idempotent on topic/partition/offset
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
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from types import FrameType
from typing import Any

from gpuledger import wire
from gpuledger.errors import StoreError, TransportError, WireError
from gpuledger.store import DeadLetter, Store
from gpuledger.transport import KafkaSubscriber, Record, Subscriber

log = logging.getLogger(__name__)

__all__ = ["IngestStats", "Ingestor", "decode_record", "run_ingest"]


@dataclass
class IngestStats:
    """Counters for one step or a whole run (all counts of records/messages)."""

    records: int = 0  # records polled from the transport
    bytes: int = 0  # their value bytes
    stored: int = 0  # messages new to the store
    duplicates: int = 0  # decoded but already stored (redelivery, replay, repeat in a batch)
    dead_letters: int = 0  # undecodable or unstorable records sent to dead_letters
    batches: int = 0  # non-empty polls processed
    commit_failures: int = 0  # commits the broker refused (records will be redelivered)

    def add(self, other: IngestStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def copy(self) -> IngestStats:
        return IngestStats(**{f.name: getattr(self, f.name) for f in fields(self)})

    def summary(self) -> str:
        return (
            f"{self.records} records ({self.bytes / 1e6:.1f} MB): {self.stored} stored, "
            f"{self.duplicates} duplicates, {self.dead_letters} dead letters"
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


def _dead(record: Record, reason: str) -> DeadLetter:
    return DeadLetter(reason=reason, payload=record.value or b"", topic=record.topic,
                      partition=record.partition, offset=record.offset)


class Ingestor:
    """Moves records from a Subscriber into a Store, one committed batch at a time.

    ``batch_max`` caps the records per poll, hence per DuckDB transaction
    (500 records of ~10 KB: a few MB, tens of milliseconds to store).
    ``progress`` is called after every step with the running totals.
    ``clock`` (seconds, monotonic) is injectable for tests of ``max_idle_s``.
    """

    def __init__(
        self,
        store: Store,
        subscriber: Subscriber,
        *,
        batch_max: int = 500,
        progress: Callable[[IngestStats], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be >= 1")
        self.store = store
        self.subscriber = subscriber
        self.batch_max = batch_max
        self.progress = progress
        self.clock = clock
        self.totals = IngestStats()

    def step(self, timeout_s: float = 1.0) -> IngestStats:
        """Poll once (waiting up to ``timeout_s`` seconds), store, commit; return this step's counts."""
        stats = IngestStats()
        records = self.subscriber.poll(timeout_s, max_records=self.batch_max)
        if records:
            stats.records, stats.batches = len(records), 1
            stats.bytes = sum(len(r.value) for r in records if r.value is not None)
            messages: list[wire.Message] = []
            origins: list[Record] = []
            dead: list[DeadLetter] = []
            for record in records:
                decoded = decode_record(record)
                if isinstance(decoded, DeadLetter):
                    dead.append(decoded)
                else:
                    messages.append(decoded)
                    origins.append(record)
            stored, unstorable = self._store(messages, origins)
            dead.extend(unstorable)
            stats.stored = stored
            stats.duplicates = len(messages) - len(unstorable) - stored
            stats.dead_letters = len(dead)
            self.store.write_dead_letters(dead)
            try:
                self.subscriber.commit(records)
            except TransportError as exc:
                # Stored already; a later commit covers these offsets, or they are
                # redelivered and skipped as duplicates.
                stats.commit_failures = 1
                log.warning("offset commit failed (%s); %s", exc, exc.hint)
        self.totals.add(stats)
        if self.progress is not None:
            self.progress(self.totals.copy())
        return stats

    def _store(self, messages: Sequence[wire.Message], origins: Sequence[Record]) -> tuple[int, list[DeadLetter]]:
        """Write messages in one transaction; returns (new count, unstorable as dead letters).

        ``StoreError`` (the database refused or failed) propagates: it is not
        the message's fault. Any other exception comes from turning a decoded
        message into rows; the batch is then retried one message at a time so
        that only the offending messages become dead letters.
        """
        sources = [r.source for r in origins]
        try:
            return self.store.write_messages(messages, sources=sources), []
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001  # a conversion failure: isolate the offending messages
            log.error("batch of %d messages not storable (%s: %s); isolating", len(messages), type(exc).__name__, exc)
        stored, dead = 0, []
        for message, record in zip(messages, origins):
            try:
                stored += self.store.write_messages([message], sources=[record.source])
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
        """Ingest until ``stop`` is set, no record came for ``max_idle_s`` seconds,
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
        while not stop.is_set():
            if max_messages is not None and run.records >= max_messages:
                break
            wait = poll_s
            if max_idle_s is not None:
                idle_left = max_idle_s - (self.clock() - last_record)
                if idle_left <= 0:
                    break
                wait = min(wait, idle_left)
            try:
                step = self.step(wait)
            except TransportError as exc:
                backoff = min(retry_max_s, max(0.5, backoff * 2))
                log.warning("transport failed: %s (%s); retrying in %.1f s", exc, exc.hint, backoff)
                stop.wait(backoff)
                continue
            backoff = 0.0
            run.add(step)
            if step.records:
                last_record = self.clock()
        return run


# --- the long-running service ------------------------------------------------


def run_ingest(
    bootstrap: str,
    topic: str,
    group_id: str,
    db_path: str | Path,
    *,
    client_settings: Mapping[str, Any] | None = None,
    batch_max: int = 500,
    log_every_s: float = 10.0,
    max_idle_s: float | None = None,
    max_messages: int | None = None,
    stop: threading.Event | None = None,
    max_poll_interval_ms: int = 300_000,
    session_timeout_ms: int = 45_000,
    handle_signals: bool = True,
) -> IngestStats:
    """Run ``gpuledger ingest``: consume ``topic`` as a member of ``group_id`` into
    the DuckDB file ``db_path`` until stopped; return the run's counts.

    This process becomes the database's single writer (see gpuledger.store).
    Scale out with more partitions and more ingest processes in the same group,
    each with its own database or segment directory.

    Args:
        bootstrap: Kafka bootstrap servers, ``host:port[,host:port...]``.
        client_settings: passed to the Kafka client unchanged (TLS/SASL:
            ``security_protocol``, ``sasl_mechanism``, ``ssl_cafile``, ...).
        batch_max: records per poll and per DuckDB transaction.
        log_every_s: seconds between progress log lines (INFO, logger
            ``gpuledger.ingest.consumer``).
        max_idle_s / max_messages: stop conditions for batch jobs and tests;
            None runs until ``stop`` is set or a signal arrives.
        max_poll_interval_ms / session_timeout_ms: consumer-group timing, see
            :class:`gpuledger.transport.KafkaSubscriber`.
        handle_signals: on SIGINT/SIGTERM finish the current batch (store and
            commit), leave the group and close the database. A second signal
            interrupts at once. Only possible from the main thread; ignored
            elsewhere.

    Raises:
        TransportError: the broker cannot be reached at start-up.
        StoreError: the database cannot be opened or written.
    """
    stop = stop or threading.Event()
    store = Store(db_path)
    try:
        subscriber = KafkaSubscriber(
            bootstrap,
            topic,
            group_id,
            client_settings=client_settings,
            max_poll_interval_ms=max_poll_interval_ms,
            session_timeout_ms=session_timeout_ms,
            max_poll_records=batch_max,
        )
    except BaseException:
        store.close()
        raise
    reporter = _ProgressLog(log_every_s)
    ingestor = Ingestor(store, subscriber, batch_max=batch_max, progress=reporter)
    log.info("ingesting %s (group %s) from %s into %s", topic, group_id, bootstrap, db_path)
    try:
        with _stop_on_signals(stop, enabled=handle_signals):
            stats = ingestor.run(stop, max_idle_s=max_idle_s, max_messages=max_messages)
    finally:
        try:
            subscriber.close()
        finally:
            store.close()
    log.info("ingest stopped: %s", ingestor.totals.summary())
    return stats


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
