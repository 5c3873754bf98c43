"""Ingest's own Prometheus metrics (``gpuledger ingest --metrics-port PORT``).

Rendered on each scrape from what the ingest thread last recorded (a custom
collector, as the agent's; no gauge is mutated from the scrape thread):

==============================================  ===========  ==============================================
series                                          type         what
==============================================  ===========  ==============================================
gpuledger_ingest_consumer_lag_messages          gauge        per topic/partition: end offset - committed,
                                                             measured after a commit or an empty poll (at
                                                             most every 5 s)
gpuledger_ingest_records_total                  counter      records polled
gpuledger_ingest_messages_stored_total          counter      messages new to the store
gpuledger_ingest_duplicates_total               counter      messages already stored (redelivery, replay)
gpuledger_ingest_rows_total                     counter      record-table rows (devices, processes, ...) of
                                                             the messages kept after the clock check
gpuledger_ingest_dead_letters_total             counter      by ``reason`` class (:func:`reason_class`)
gpuledger_ingest_commit_failures_total          counter      offset commits the broker refused
gpuledger_ingest_last_commit_timestamp_seconds  gauge        wall time of the last successful offset commit
                                                             (absent until the first)
gpuledger_ingest_store_waits_total              counter      flushes that waited for another process to
                                                             release the DuckDB file
gpuledger_ingest_flush_duration_seconds         histogram    one flush: open (and wait for) the store,
                                                             write, close; the commit is not included
==============================================  ===========  ==============================================

The wrappers here measure an :class:`~gpuledger.ingest.consumer.Ingestor`
from outside: :class:`MeasuredOpener` times each flush and classifies its dead
letters, :class:`MeasuredSubscriber` records commits and lag.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gpuledger.errors import TransportError
from gpuledger.store import DeadLetter, Store
from gpuledger.transport import Record, Subscriber
from gpuledger.transport.protocols import next_offsets

log = logging.getLogger(__name__)

__all__ = ["IngestMetrics", "MeasuredOpener", "MeasuredSubscriber", "reason_class"]

#: Dead-letter reason text (its start) -> the low-cardinality ``reason`` label.
_REASONS = (
    ("record has no value", "tombstone"),
    ("not a gpuledger message", "not_a_message"),
    ("length mismatch", "not_a_message"),
    ("message of ", "too_large"),
    ("unknown schema version", "unknown_version"),
    ("JSON header", "bad_header"),
    ("header ", "bad_header"),
    ("decoded but not storable", "unstorable"),
    ("decoder failed unexpectedly", "decoder_bug"),
)

FLUSH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def reason_class(letter: DeadLetter) -> str:
    """The ``reason`` label of a dead letter: ``clock`` for a quarantined one, else a class of its text."""
    if letter.quarantined:
        return "clock"
    for prefix, label in _REASONS:
        if letter.reason.startswith(prefix):
            return label
    return "bad_tables"  # the wire decoder's remaining checks: a table or column out of bounds


class IngestMetrics(Collector):
    """What one ingest process reports; register it (and its histogram) in ``registry``."""

    def __init__(self, registry: CollectorRegistry, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.totals: dict[str, float] = {"records": 0, "stored": 0, "duplicates": 0, "rows": 0,
                                         "commit_failures": 0}
        self.dead_letters: dict[str, int] = {}
        self.lag: dict[tuple[str, int], int] = {}
        self.last_commit: float | None = None
        self.store_waits: Callable[[], int] = lambda: 0
        self.flush_seconds = Histogram("gpuledger_ingest_flush_duration_seconds",
                                       "One flush: open (waiting for the file if held), write, close.",
                                       buckets=FLUSH_BUCKETS, registry=registry)
        registry.register(self)

    # --- recording (the ingest thread) --------------------------------------------------------

    def progress(self, totals: Any) -> None:
        """Take the running :class:`~gpuledger.ingest.consumer.IngestStats` (the Ingestor's progress hook)."""
        with self._lock:
            for name in self.totals:
                self.totals[name] = float(getattr(totals, name))

    def dead(self, letters: Sequence[DeadLetter]) -> None:
        with self._lock:
            for letter in letters:
                label = reason_class(letter)
                self.dead_letters[label] = self.dead_letters.get(label, 0) + 1

    def committed(self, lag: dict[tuple[str, int], int] | None) -> None:
        with self._lock:
            self.last_commit = self.clock()
            if lag is not None:
                self.lag = dict(lag)

    def lagged(self, lag: dict[tuple[str, int], int]) -> None:
        with self._lock:
            self.lag = dict(lag)

    # --- rendering (the scrape thread) --------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            totals, dead, lag, last = dict(self.totals), dict(self.dead_letters), dict(self.lag), self.last_commit
        lag_m = Metric("gpuledger_ingest_consumer_lag_messages",
                       "Messages on the partition not yet committed by this group (end offset - committed).", "gauge")
        for (topic, partition), n in sorted(lag.items()):
            lag_m.add_sample(lag_m.name, {"topic": topic, "partition": str(partition)}, float(n))
        yield lag_m
        for name, key, doc in (
            ("gpuledger_ingest_records", "records", "Records polled from the topic."),
            ("gpuledger_ingest_messages_stored", "stored", "Messages new to the store."),
            ("gpuledger_ingest_duplicates", "duplicates", "Messages already stored (redelivery or replay)."),
            ("gpuledger_ingest_rows", "rows", "Record-table rows (devices, processes, allocations, field errors) "
             "of the messages kept after the clock check."),
            ("gpuledger_ingest_commit_failures", "commit_failures", "Offset commits the broker refused."),
        ):
            m = Metric(name, doc, "counter")
            m.add_sample(name + "_total", {}, totals[key])
            yield m
        d = Metric("gpuledger_ingest_dead_letters", "Records sent to the dead_letters table, by reason class "
                   "(clock: quarantined by the clock check).", "counter")
        for reason, n in sorted(dead.items()):
            d.add_sample(d.name + "_total", {"reason": reason}, float(n))
        yield d
        w = Metric("gpuledger_ingest_store_waits", "Flushes that waited for another process to release the "
                   "DuckDB file.", "counter")
        w.add_sample(w.name + "_total", {}, float(self.store_waits()))
        yield w
        if last is not None:
            c = Metric("gpuledger_ingest_last_commit_timestamp_seconds", "Wall time of the last successful "
                       "offset commit, seconds since the epoch.", "gauge")
            c.add_sample(c.name, {}, last)
            yield c

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _DeadLetterTap:
    """A Store seen through: its dead letters are counted on the way in; everything else passes."""

    def __init__(self, store: Store, metrics: IngestMetrics) -> None:
        self._store = store
        self._metrics = metrics

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> Any:
        result = self._store.write_dead_letters(letters)
        self._metrics.dead(letters)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class MeasuredOpener:
    """Wraps an opener (``with opener() as store``): times each flush and counts its dead letters."""

    def __init__(self, opener: Callable[[], AbstractContextManager[Any]], metrics: IngestMetrics) -> None:
        self.opener = opener
        self.metrics = metrics
        waits = getattr(opener, "waits", None)
        if waits is not None:
            metrics.store_waits = lambda: int(getattr(opener, "waits", 0))

    def __call__(self) -> AbstractContextManager[Store]:
        return self._flush()

    @contextmanager
    def _flush(self) -> Iterator[Store]:
        t0 = time.monotonic()
        try:
            with self.opener() as store:
                yield _DeadLetterTap(store, self.metrics)  # type: ignore[misc]  # duck-typed Store
        finally:
            self.metrics.flush_seconds.observe(time.monotonic() - t0)

    def close(self) -> None:
        close = getattr(self.opener, "close", None)
        if close is not None:
            close()


class MeasuredSubscriber:
    """Wraps a Subscriber: each successful commit sets the commit time; the partitions' lag (when the subscriber
    can tell it: ``partition_lag()``) is measured after a commit, and after a poll that found nothing (so an
    idle consumer shows 0, not the lag of its last commit), at most every ``lag_every_s`` seconds."""

    def __init__(self, inner: Subscriber, metrics: IngestMetrics, *, lag_every_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.metrics = metrics
        self.lag_every_s = lag_every_s
        self.clock = clock
        self._lag_at: float | None = None

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[Record]:
        records = self.inner.poll(timeout_s, max_records)
        if not records:
            lag = self._lag()
            if lag is not None:
                self.metrics.lagged(lag)
        return records

    def keepalive(self) -> None:
        """The wrapped subscriber's: the ingest loop keeps the group membership through it during a slow flush."""
        self.inner.keepalive()

    def commit(self, records: Sequence[Record]) -> None:
        self.inner.commit(records)
        if next_offsets(records):
            self.metrics.committed(self._lag())

    def _lag(self) -> dict[tuple[str, int], int] | None:
        """The partitions' lag, or None when it is not time yet, not known, or cannot be read now."""
        partition_lag = getattr(self.inner, "partition_lag", None)
        now = self.clock()
        if partition_lag is None or (self._lag_at is not None and now - self._lag_at < self.lag_every_s):
            return None
        self._lag_at = now
        try:
            return dict(partition_lag())
        except TransportError as exc:  # a lag we cannot read is not a failed commit or poll
            log.warning("consumer lag not measured: %s", exc)
            return None

    def close(self) -> None:
        self.inner.close()
