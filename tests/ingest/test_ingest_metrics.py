"""Ingest's own /metrics: what a run stored, dead-lettered (by reason class), how long flushes took, when it
last committed, and how far behind each partition is -- measured around a real Ingestor writing a real DuckDB
file through the file opener, and scraped over real HTTP."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpuledger import wire
from gpuledger.cli.common import metrics_registry
from gpuledger.errors import TransportError
from gpuledger.ingest.consumer import Ingestor
from gpuledger.ingest.metrics import IngestMetrics, MeasuredOpener, MeasuredSubscriber, reason_class
from gpuledger.ingest.opener import FileOpener
from gpuledger.store import DeadLetter
from gpuledger.transport import MemoryTransport
from tests.support.factories import make_message, make_stream
from tests.support.system import free_port


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def run(transport: MemoryTransport, db: Path, metrics: IngestMetrics, **kw) -> None:
    opener = FileOpener(db)
    try:
        Ingestor(MeasuredOpener(opener, metrics), MeasuredSubscriber(transport, metrics, lag_every_s=0),
                 batch_max=7, progress=metrics.progress, wall_clock_ns=lambda: 1_800_000_000 * 10**9,
                 **kw).run(max_idle_s=3)
    finally:
        opener.close()


def test_a_run_is_counted_timed_and_its_lag_measured(tmp_path: Path) -> None:
    transport = MemoryTransport("samples", partitions=2)
    for m in make_stream(20):
        transport.publish(m.node.encode(), wire.encode(m))
    transport.publish(b"x", b"hello, kafka")  # not a message
    transport.publish(b"y", wire.encode(make_message(seq=99))[:4] + (7).to_bytes(2, "little")
                      + wire.encode(make_message(seq=99))[6:])  # a version from the future
    registry = CollectorRegistry(auto_describe=False)
    metrics = IngestMetrics(registry, clock=lambda: 1234.5)
    run(transport, tmp_path / "g.duckdb", metrics)
    got = samples(generate_latest(registry).decode())
    assert got[("gpuledger_ingest_records_total", ())] == 22
    assert got[("gpuledger_ingest_messages_stored_total", ())] == 20
    assert got[("gpuledger_ingest_rows_total", ())] > 20  # devices, processes, allocations, field errors
    assert got[("gpuledger_ingest_dead_letters_total", (("reason", "not_a_message"),))] == 1
    assert got[("gpuledger_ingest_dead_letters_total", (("reason", "unknown_version"),))] == 1
    assert got[("gpuledger_ingest_last_commit_timestamp_seconds", ())] == 1234.5
    flushes = got[("gpuledger_ingest_flush_duration_seconds_count", ())]
    assert flushes == 4  # 22 records, 7 per flush
    assert got[("gpuledger_ingest_flush_duration_seconds_sum", ())] > 0
    lag = {dict(k[1])["partition"]: v for k, v in got.items() if k[0] == "gpuledger_ingest_consumer_lag_messages"}
    assert lag == {"0": 0, "1": 0}  # all committed
    # More arrives after the last commit: the next commit measures it.
    for m in make_stream(3):
        transport.publish(m.node.encode(), wire.encode(m))
    assert sum(transport.partition_lag().values()) == 3
    metrics_before = samples(generate_latest(registry).decode())
    assert sum(v for k, v in metrics_before.items() if k[0] == "gpuledger_ingest_consumer_lag_messages") == 0
    measured = MeasuredSubscriber(transport, metrics, lag_every_s=0)
    measured.commit(measured.poll(0.1, max_records=1))
    after = samples(generate_latest(registry).decode())
    assert sum(v for k, v in after.items() if k[0] == "gpuledger_ingest_consumer_lag_messages") == 2
    measured.commit(measured.poll(0.1))  # the rest
    assert measured.poll(0.05) == []  # idle: the lag is measured again, not left at its last commit's
    idle = samples(generate_latest(registry).decode())
    assert sum(v for k, v in idle.items() if k[0] == "gpuledger_ingest_consumer_lag_messages") == 0


def test_a_lag_that_cannot_be_read_is_not_a_failed_commit() -> None:
    class NoLag(MemoryTransport):
        def partition_lag(self) -> dict[tuple[str, int], int]:
            raise TransportError("broker gone", hint="-")

    transport = NoLag("t")
    transport.publish(b"k", b"v")
    metrics = IngestMetrics(CollectorRegistry(auto_describe=False), clock=lambda: 7.0)
    MeasuredSubscriber(transport, metrics, lag_every_s=0).commit(transport.poll(0.1))  # does not raise
    assert metrics.last_commit == 7.0 and metrics.lag == {}


def test_no_commit_no_commit_time() -> None:
    registry = CollectorRegistry(auto_describe=False)
    IngestMetrics(registry)
    text = generate_latest(registry).decode()
    assert "gpuledger_ingest_last_commit_timestamp_seconds" not in text  # absent, not 0
    assert "gpuledger_ingest_messages_stored_total 0.0" in text


def test_dead_letter_reasons_are_a_few_classes() -> None:
    def letter(reason: str, quarantined: bool = False) -> DeadLetter:
        return DeadLetter(reason=reason, payload=b"", topic="t", partition=0, offset=1, quarantined=quarantined)

    assert reason_class(letter("interval ends 3600 s in the future", quarantined=True)) == "clock"
    assert reason_class(letter("unknown schema version 7 (this build reads [1])")) == "unknown_version"
    assert reason_class(letter("JSON header unreadable: x")) == "bad_header"
    assert reason_class(letter("devices.slice_fraction must be in (0, 1]")) == "bad_tables"
    assert reason_class(letter("record has no value (a tombstone)")) == "tombstone"


def test_served_over_http(tmp_path: Path) -> None:
    port = free_port()
    registry = metrics_registry(port, "127.0.0.1")
    IngestMetrics(registry)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert "gpuledger_ingest_records_total" in text
    assert metrics_registry(None, "127.0.0.1") is None


def test_the_measured_subscriber_keeps_the_group_membership_through_the_wrapped_one() -> None:
    # The ingest loop keeps its consumer-group membership during a slow flush by calling keepalive(): with
    # metrics on (the chart's default) it must still reach the Kafka subscriber, not vanish behind the wrapper.
    calls: list[str] = []

    class Inner(MemoryTransport):
        def keepalive(self) -> None:
            calls.append("keepalive")

    transport = Inner(["t"])
    MeasuredSubscriber(transport, IngestMetrics(CollectorRegistry()), lag_every_s=0).keepalive()
    assert calls == ["keepalive"]
