"""Kafka transport: the one module that imports ``kafka`` (kafka-python).

Implements the seams of :mod:`gpuledger.transport.protocols` against a
broker: :class:`KafkaPublisher` (agent side) and :class:`KafkaSubscriber`
(ingest side), with the delivery contract described there.

Every kafka-python exception is translated here into
:class:`gpuledger.errors.TransportError` with a hint; nothing else in the
project catches kafka's own exceptions.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Self

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka import errors as kafka_errors
from kafka.codec import has_zstd

from gpuledger.errors import GroupMembershipLost, TransportError
from gpuledger.transport.protocols import Record, next_offsets

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_COMPRESSION", "KafkaPublisher", "KafkaSubscriber", "quiet_client_logs"]


#: The producer's codec: zstd where the ``zstandard`` package is installed (a
#: dependency of gpuledger), else gzip (standard library). See KafkaPublisher.
DEFAULT_COMPRESSION = "zstd" if has_zstd() else "gzip"


def quiet_client_logs(*, verbose: bool = False) -> None:
    """Keep only kafka-python's CRITICAL log lines (``verbose``: all of them again).

    kafka-python logs every connection attempt and backoff, INFO to ERROR: while a
    broker is down that is ~20 lines per retry (measured: 77 lines in 10 s of an
    agent at a 1 s tick). A caller that reports the broker's state itself -- the
    agent's spool logs one line per change, with its counters -- calls this once.
    The logger is the process's: ingest, which runs in its own process, is not
    affected.
    """
    logging.getLogger("kafka").setLevel(logging.NOTSET if verbose else logging.CRITICAL)


# --- error translation ---------------------------------------------------------


def _hint_for(exc: BaseException | None, bootstrap: str) -> str:
    if isinstance(exc, kafka_errors.MessageSizeTooLargeError) or "max_request_size" in str(exc):
        return (
            "the record is larger than the producer's max_request_size (1 MiB by default): raise it with "
            "client_settings={'max_request_size': ...} and the broker's message.max.bytes to match"
        )
    if isinstance(exc, kafka_errors.AuthorizationError):
        return "the broker refused the credentials: check the SASL/TLS settings and the topic and group ACLs"
    if isinstance(exc, (kafka_errors.KafkaConfigurationError, ValueError, AssertionError, TypeError)):
        return ("a Kafka client setting is invalid: check client_settings against kafka-python's "
                "KafkaProducer/KafkaConsumer options")
    return f"check that the broker at {bootstrap!r} is running and reachable, and the TLS/SASL settings"


def _describe_error(exc: BaseException) -> str:
    text = str(exc)
    if text.startswith("Unrecognized configs"):  # kafka-python echoes the values: never log a password
        keys = re.findall(r"""['"]([^'"]+)['"]\s*:""", text)
        text = f"unrecognized client settings: {', '.join(keys) or '?'}"
    return f"{type(exc).__name__}: {text}"


#: A commit refused because this member is not in the group's current generation (see GroupMembershipLost).
_GENERATION_LOST = (kafka_errors.CommitFailedError, kafka_errors.RebalanceInProgressError,
                    kafka_errors.IllegalGenerationError, kafka_errors.UnknownMemberIdError)


@contextmanager
def _translated(what: str, bootstrap: str, *, settings: bool = False) -> Iterator[None]:
    """Re-raise kafka-python's exceptions as TransportError saying what failed.

    With ``settings=True`` (creating a client) the ValueError/AssertionError/
    TypeError kafka-python raises for bad options are translated as well.
    """
    config_errors: tuple[type[BaseException], ...] = (ValueError, AssertionError, TypeError) if settings else ()
    try:
        yield
    except kafka_errors.KafkaError as exc:
        raise TransportError(f"{what} failed: {_describe_error(exc)}", hint=_hint_for(exc, bootstrap)) from exc
    except OSError as exc:
        raise TransportError(f"{what} failed: {_describe_error(exc)}", hint=_hint_for(exc, bootstrap)) from exc
    except config_errors as exc:
        raise TransportError(f"{what} failed: {_describe_error(exc)}", hint=_hint_for(exc, bootstrap)) from None


# --- Kafka producer ------------------------------------------------------------


class KafkaPublisher:
    """Publishes wire messages to one topic with acks from all in-sync replicas.

    The producer is created lazily on the first ``publish`` (or by
    :meth:`connect`), so an agent can start while the broker is down and spool;
    every call then raises TransportError until the broker answers.

    Settings and why:

    - ``acks="all"``: no acknowledged record is lost on a leader change.
    - ``enable_idempotence=False`` with one request in flight per connection:
      retries keep a node's records in order; duplicates from a retry are
      harmless because ingest is idempotent on (agent_id, boot_id, seq). The
      idempotent producer's id/epoch state adds nothing here but a failure
      mode: after a broker loses that state the client stays failed
      (seen with kafka-python 3.0 against a restarted broker).
    - ``linger_ms=50``: a fleet's ticks arrive in bursts; 50 ms of batching
      costs nothing at a 10 s tick.
    - ``compression_type="zstd"`` (:data:`DEFAULT_COMPRESSION`; ``"gzip"`` when
      the ``zstandard`` package is missing): measured on node messages, zstd
      makes batches 10 % smaller than gzip (2.3 vs 2.5 KB per 9.7 KB message),
      compresses ~5x faster (less agent CPU) and decompresses ~3x faster (more
      ingest throughput; see benchmarks/bench_ingest.py). Consumers read any
      codec; brokers need Kafka >= 2.1 for zstd (pass ``compression_type="gzip"``
      for older ones).
    - ``delivery_timeout_ms`` (default 30 s, not Kafka's 120 s): how long a
      record may retry before ``flush`` reports it failed, so the agent notices
      an outage within a few ticks and spools.
    - ``max_block_ms`` (default 5 s): how long ``publish`` may block waiting for
      metadata or buffer space before raising.

    ``client_settings`` go to ``KafkaProducer`` unchanged and win over the
    defaults above: TLS/SASL (``security_protocol``, ``sasl_mechanism``,
    ``sasl_plain_username``, ``ssl_cafile``, ...) or any tuning.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        client_settings: Mapping[str, Any] | None = None,
        linger_ms: int = 50,
        compression_type: str | None = DEFAULT_COMPRESSION,
        delivery_timeout_ms: int = 30_000,
        max_block_ms: int = 5_000,
        bootstrap_timeout_ms: int = 10_000,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "acks": "all",
            "enable_idempotence": False,
            "max_in_flight_requests_per_connection": 1,
            "linger_ms": linger_ms,
            "batch_size": 256 * 1024,
            "compression_type": compression_type,
            "delivery_timeout_ms": delivery_timeout_ms,
            "request_timeout_ms": min(30_000, delivery_timeout_ms - linger_ms),
            "max_block_ms": max_block_ms,
            "bootstrap_timeout_ms": bootstrap_timeout_ms,
            "client_id": "gpuledger-agent",
            **(client_settings or {}),
        }
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()
        self._connect_lock = threading.Lock()
        self._pending: list[Any] = []  # kafka FutureRecordMetadata since the last flush
        self._closed = False

    def connect(self) -> None:
        """Create the producer now (contacting the broker); raise TransportError if it cannot."""
        self._client()

    def _client(self) -> KafkaProducer:
        if self._closed:
            raise TransportError("publish on a closed KafkaPublisher", hint="create a new publisher")
        with self._connect_lock:  # one producer even when several threads publish at once
            if self._producer is None:
                with _translated(f"connecting a producer to {self.bootstrap}", self.bootstrap, settings=True):
                    self._producer = KafkaProducer(**self._config)
            return self._producer

    def publish(self, key: bytes, value: bytes) -> None:
        producer = self._client()
        with _translated(f"publishing {len(value)} bytes to {self.topic}", self.bootstrap):
            future = producer.send(self.topic, key=key, value=value)
        future.add_errback(self._on_failure)
        with self._lock:
            self._pending.append(future)

    def _on_failure(self, exc: BaseException) -> None:
        # Runs on the client's I/O thread; flush() raises for the same record (and the caller reports it):
        # a line per record would repeat one outage once per spooled record.
        log.debug("record to %s not delivered: %s: %s", self.topic, type(exc).__name__, exc)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait for every record published since the last flush; raise if any failed.

        On failure the error names how many records failed; all records since
        the previous successful flush should be treated as not delivered (some
        may have been: ingest deduplicates them).
        """
        if self._producer is None:
            return
        with self._lock:
            pending, self._pending = self._pending, []
        with _translated(f"flushing {len(pending)} records to {self.topic}", self.bootstrap):
            self._producer.flush(timeout=timeout_s)
        failures = [f.exception for f in pending if f.failed()]
        unfinished = sum(1 for f in pending if not f.is_done)
        if failures or unfinished:
            first = failures[0] if failures else None
            detail = _describe_error(first) if first is not None else "timed out"
            raise TransportError(
                f"{len(failures) + unfinished} of {len(pending)} records to {self.topic} were not acknowledged ({detail})",
                hint=_hint_for(first, self.bootstrap),
            )

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush (bounded by ``timeout_s`` seconds) and close; idempotent."""
        if self._closed:
            return
        try:
            self.flush(timeout_s)
        finally:
            self._closed = True
            if self._producer is not None:
                with _translated("closing the producer", self.bootstrap):
                    self._producer.close(timeout=timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- Kafka consumer ------------------------------------------------------------


class KafkaSubscriber:
    """A member of consumer group ``group_id`` reading ``topic`` from the earliest
    uncommitted offset, committing only when told (``enable_auto_commit=False``).

    Group timing (milliseconds), and why it is configurable:

    - ``max_poll_interval_ms`` (default 300 000): longest gap between polls
      before the member is evicted. Kafka also uses it as the rebalance
      timeout, and some brokers (tansu, used in tests) complete a join only
      after it elapses, so tests pass ~1000-5000.
    - ``session_timeout_ms`` (default 45 000): heartbeats missed before eviction.
    - ``max_poll_records`` (default 500): records per poll; ingest stores one
      poll as one DuckDB transaction.

    The constructor contacts the broker and raises TransportError if it is
    unreachable (within ``bootstrap_timeout_ms``).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group_id: str,
        *,
        client_settings: Mapping[str, Any] | None = None,
        max_poll_interval_ms: int = 300_000,
        session_timeout_ms: int = 45_000,
        max_poll_records: int = 500,
        bootstrap_timeout_ms: int = 10_000,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.max_poll_interval_ms = max_poll_interval_ms
        session_timeout_ms = min(session_timeout_ms, max_poll_interval_ms)
        config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_interval_ms": max_poll_interval_ms,
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": max(100, min(3_000, session_timeout_ms // 3)),
            "max_poll_records": max_poll_records,
            "bootstrap_timeout_ms": bootstrap_timeout_ms,
            "client_id": "gpuledger-ingest",
            **(client_settings or {}),
        }
        #: Next offsets of records stored but not committed (a commit refused after a lost generation):
        #: committed with the next commit, and where a partition comes back to this member its position
        #: is set there, so the stored records are not read again.
        self._owed: dict[TopicPartition, int] = {}
        with _translated(f"joining group {group_id!r} on {topic} at {bootstrap}", bootstrap, settings=True):
            self._consumer = KafkaConsumer(**config)
            self._consumer.subscribe([topic], listener=_Rejoin(self))
        self._closed = False

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[Record]:
        with _translated(f"polling {self.topic}", self.bootstrap):
            batches = self._consumer.poll(timeout_ms=max(0, int(timeout_s * 1000)), max_records=max_records)
        return [
            Record(r.topic, r.partition, r.offset, r.key, r.value)
            for records in batches.values()
            for r in records
        ]

    def keepalive(self) -> None:
        """Poll with every assigned partition paused: the member stays in the group (kafka-python counts
        ``max_poll_interval_ms`` from the last poll; heartbeats run on their own thread) and no record
        is consumed. A record that still comes back (a partition assigned during this very poll) is
        un-read: the position goes back to it."""
        with _translated(f"keeping group {self.group_id!r} membership", self.bootstrap):
            paused = self._consumer.assignment()
            self._consumer.pause(*paused)
            try:
                batches = self._consumer.poll(timeout_ms=0)
            finally:
                self._consumer.resume(*(tp for tp in paused if tp in self._consumer.assignment()))
            for tp, records in batches.items():
                if records:
                    self._consumer.seek(tp, min(r.offset for r in records))

    def commit(self, records: Sequence[Record]) -> None:
        """Commit past ``records`` and any offsets still owed, for the partitions this member holds; on a
        lost generation the offsets stay owed and :class:`GroupMembershipLost` says why (the records are
        stored: nothing is lost). Offsets of a partition now held by another member are not committed
        (that would move its position under it); it reads those records again and skips them as
        duplicates."""
        for (topic, partition), offset in next_offsets(records).items():
            tp = TopicPartition(topic, partition)
            self._owed[tp] = max(offset, self._owed.get(tp, 0))
        assigned = self._consumer.assignment()
        if assigned:  # a partition that moved to another member is its now: it re-reads from the last commit
            self._owed = {tp: offset for tp, offset in self._owed.items() if tp in assigned}
        if not self._owed:
            return
        offsets = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in self._owed.items()}
        try:
            self._consumer.commit(offsets)
        except _GENERATION_LOST as exc:
            raise GroupMembershipLost(
                f"committing offsets {_describe(offsets)} for group {self.group_id!r} failed: "
                f"{_describe_error(exc)}",
                hint=(f"this consumer lost its place in the group before the commit: a rebalance, or more than "
                      f"max_poll_interval_ms ({self.max_poll_interval_ms} ms) passed between polls and it left "
                      "the group. The records are stored; their offsets are committed once it rejoins (or they "
                      "are redelivered and skipped as duplicates). If this repeats, raise --max-poll-interval-ms "
                      "above the longest flush (linger + store) or lower --batch-max / --linger"),
            ) from exc
        except kafka_errors.KafkaError as exc:
            raise TransportError(f"committing offsets {_describe(offsets)} for group {self.group_id!r} failed: "
                                 f"{_describe_error(exc)}", hint=_hint_for(exc, self.bootstrap)) from exc
        except OSError as exc:
            raise TransportError(f"committing offsets for group {self.group_id!r} failed: {_describe_error(exc)}",
                                 hint=_hint_for(exc, self.bootstrap)) from exc
        self._owed.clear()

    def _assigned(self, assigned: Sequence[TopicPartition]) -> None:
        """After a (re)join: resume owed partitions at their stored offsets; forget the others (another
        member reads them from the last commit; what it reads again is skipped as duplicates)."""
        mine = set(assigned)
        self._owed = {tp: offset for tp, offset in self._owed.items() if tp in mine}
        for tp, offset in self._owed.items():
            self._consumer.seek(tp, offset)
        if self._owed:
            log.info("rejoined group %r: resuming %s at the stored offsets", self.group_id,
                     ", ".join(f"{tp.topic}/{tp.partition}@{o}" for tp, o in sorted(self._owed.items())))

    def partition_lag(self) -> dict[tuple[str, int], int]:
        """Per partition assigned to this member: end offset - the group's committed offset (from the
        partition's beginning when nothing is committed). A few broker round trips: call it sparingly,
        from the thread that polls (kafka-python's consumer is not thread-safe)."""
        with _translated(f"reading the lag of {self.topic}", self.bootstrap):
            assigned = sorted(self._consumer.assignment())
            if not assigned:
                return {}
            ends = self._consumer.end_offsets(assigned)
            starts = self._consumer.beginning_offsets(assigned)
            out = {}
            for tp in assigned:
                committed = self._consumer.committed(tp)
                base = committed if committed is not None else starts[tp]
                out[(tp.topic, tp.partition)] = max(0, ends[tp] - base)
            return out

    def close(self) -> None:
        """Leave the group (so a successor gets the partitions at once); idempotent. Owed offsets are
        committed first where possible."""
        if self._closed:
            return
        self._closed = True
        if self._owed:
            try:
                self.commit([])
            except TransportError as exc:
                log.warning("owed offsets not committed at close (%s); they are redelivered and skipped", exc)
        with _translated("closing the consumer", self.bootstrap):
            self._consumer.close(autocommit=False, timeout_ms=5_000)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Rejoin(ConsumerRebalanceListener):  # type: ignore[misc]
    """kafka-python calls this inside ``poll`` when the group's assignment changes."""

    def __init__(self, subscriber: KafkaSubscriber) -> None:
        self.subscriber = subscriber

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.subscriber._assigned(assigned)


def _describe(offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}@{om.offset}" for tp, om in sorted(offsets.items()))
