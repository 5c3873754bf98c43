"""The attribution loop (``gpuledger attribute --every SECONDS``) and its Prometheus metrics.

Runs the incremental ledger job every ``every_s`` seconds against the DuckDB
file, taking DuckDB's writer lock only for the run: ingest, which opens the
file per flush, waits for it (and the loop waits for ingest's flush in turn,
up to ``lock_wait_s``). A failed run is logged and counted, never fatal: the
next run starts from whatever the last successful one committed.

==================================================  ===========  ==========================================
series                                              type         what
==================================================  ===========  ==========================================
gpuledger_attribution_runs_total                    counter      runs started
gpuledger_attribution_failures_total                counter      by ``reason``: no_database, locked,
                                                                 store (another StoreError), error
gpuledger_attribution_last_success_timestamp_seconds  gauge      end of the last successful run (absent
                                                                 until the first)
gpuledger_attribution_run_duration_seconds          histogram    successful runs, lock wait included
gpuledger_attribution_messages_total                counter      messages attributed
gpuledger_attribution_rows_written_total            counter      ledger rows written
gpuledger_attribution_pending_messages              gauge        messages waiting when the last successful run
                                                                 started (a run attributes all it finds; ingest
                                                                 cannot add any during a run: it holds the lock)
==================================================  ===========  ==========================================
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gpuledger.analytics.job import run_attribution
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.errors import StoreError, StoreLocked
from gpuledger.store import Store

log = logging.getLogger(__name__)

__all__ = ["AttributionMetrics", "attribution_loop"]

RUN_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


@dataclass(eq=False)  # registries hold collectors in a set: identity, not value
class AttributionMetrics(Collector):
    """What the loop reports; register with :meth:`register`."""

    clock: Callable[[], float] = time.time
    runs: int = 0
    messages: int = 0
    rows: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    last_success: float | None = None
    last_pending: int | None = None
    duration: Histogram | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, registry: CollectorRegistry) -> AttributionMetrics:
        self.duration = Histogram("gpuledger_attribution_run_duration_seconds",
                                  "One successful attribution run, waiting for the writer lock included.",
                                  buckets=RUN_BUCKETS, registry=registry)
        registry.register(self)
        return self

    def succeeded(self, messages: int, rows: int, seconds: float) -> None:
        with self._lock:
            self.runs += 1
            self.messages += messages
            self.rows += rows
            self.last_success = self.clock()
            self.last_pending = messages
        if self.duration is not None:
            self.duration.observe(seconds)

    def failed(self, reason: str) -> None:
        with self._lock:
            self.runs += 1
            self.failures[reason] = self.failures.get(reason, 0) + 1

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            runs, messages, rows, failures, last, pending = (self.runs, self.messages, self.rows,
                                                             dict(self.failures), self.last_success, self.last_pending)
        for name, value, doc in (("gpuledger_attribution_runs", runs, "Attribution runs started."),
                                 ("gpuledger_attribution_messages", messages, "Messages attributed."),
                                 ("gpuledger_attribution_rows_written", rows, "Ledger rows written.")):
            m = Metric(name, doc, "counter")
            m.add_sample(name + "_total", {}, float(value))
            yield m
        f = Metric("gpuledger_attribution_failures", "Failed attribution runs, by reason (no_database, locked, "
                   "store, error).", "counter")
        for reason, n in sorted(failures.items()):
            f.add_sample(f.name + "_total", {"reason": reason}, float(n))
        yield f
        if last is not None:
            s = Metric("gpuledger_attribution_last_success_timestamp_seconds", "End of the last successful "
                       "attribution run, seconds since the epoch.", "gauge")
            s.add_sample(s.name, {}, last)
            yield s
        if pending is not None:
            w = Metric("gpuledger_attribution_pending_messages", "Messages waiting for attribution when the last "
                       "successful run started.", "gauge")
            w.add_sample(w.name, {}, float(pending))
            yield w

    def describe(self) -> Iterator[Metric]:
        return iter(())


class RunResult(Protocol):
    messages: int
    ledger_rows: int


def attribute_once(db_path: str | Path, rules: TenancyRules, metrics: AttributionMetrics, *,
                   lock_wait_s: float = 60.0, sleep: Callable[[float], None] = time.sleep,
                   job: Callable[[Store, TenancyRules], RunResult] = run_attribution) -> bool:
    """One incremental run, recorded in ``metrics``; True when it succeeded. Never raises a StoreError.

    ``job``: the message-chunk job, or the shard runner (``gpuledger attribute --shards --every``)."""
    t0 = time.monotonic()
    if not Path(db_path).exists():
        metrics.failed("no_database")
        log.warning("no database at %s yet (ingest creates it with its first flush); next run later", db_path)
        return False
    pause = 0.05
    try:
        while True:
            try:
                store = Store(db_path)
                break
            except StoreLocked:
                if time.monotonic() - t0 + pause > lock_wait_s:
                    raise
                sleep(pause)
                pause = min(pause * 2, 1.0)
        with store:
            result = job(store, rules)
    except StoreLocked as exc:
        metrics.failed("locked")
        log.warning("attribution skipped: %s held the file for %.0f s (%s)", db_path, lock_wait_s, exc)
        return False
    except StoreError as exc:
        metrics.failed("store")
        log.error("attribution failed: %s (%s)", exc, exc.hint)
        return False
    except Exception:
        metrics.failed("error")
        log.exception("attribution failed")
        return False
    seconds = time.monotonic() - t0
    metrics.succeeded(result.messages, result.ledger_rows, seconds)
    log.info("attributed %d messages into %d ledger rows in %.1f s", result.messages, result.ledger_rows, seconds)
    return True


def attribution_loop(db_path: str | Path, rules: TenancyRules, metrics: AttributionMetrics, every_s: float,
                     stop: threading.Event, *, lock_wait_s: float = 60.0,
                     job: Callable[[Store, TenancyRules], RunResult] = run_attribution) -> None:
    """Run :func:`attribute_once` every ``every_s`` seconds (start to start) until ``stop`` is set."""
    while not stop.is_set():
        t0 = time.monotonic()
        attribute_once(db_path, rules, metrics, lock_wait_s=lock_wait_s, job=job)
        stop.wait(max(0.0, every_s - (time.monotonic() - t0)))
