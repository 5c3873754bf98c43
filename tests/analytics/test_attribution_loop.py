"""The attribution loop (``gpuledger attribute --every``): each run recorded in its metrics, a failed run
counted by reason and never fatal, the loop served over HTTP and stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from functools import partial
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpuledger.analytics.loop import AttributionMetrics, attribute_once
from gpuledger.analytics.shards import run_shards
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.store import Store
from tests.support.factories import make_stream
from tests.support.system import free_port, wait_until


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(generate_latest(registry).decode()) for s in fam.samples}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "g.duckdb"
    with Store(path) as store:
        store.write_messages(make_stream(12))
    return path


def test_a_run_is_recorded(db: Path) -> None:
    registry = CollectorRegistry(auto_describe=False)
    metrics = AttributionMetrics(clock=lambda: 42.0).register(registry)
    assert attribute_once(db, TenancyRules(), metrics)
    got = samples(registry)
    assert got[("gpuledger_attribution_messages_total", ())] == 12
    assert got[("gpuledger_attribution_rows_written_total", ())] > 0
    assert got[("gpuledger_attribution_last_success_timestamp_seconds", ())] == 42.0
    assert got[("gpuledger_attribution_run_duration_seconds_count", ())] == 1
    assert got[("gpuledger_attribution_pending_messages", ())] == 12
    assert not [k for k in got if k[0] == "gpuledger_attribution_failures_total"]
    assert attribute_once(db, TenancyRules(), metrics)  # nothing new: a success with no messages
    again = samples(registry)
    assert again[("gpuledger_attribution_messages_total", ())] == 12
    assert again[("gpuledger_attribution_pending_messages", ())] == 0


def test_no_database_yet_is_a_counted_failure_not_a_crash_nor_a_file(tmp_path: Path) -> None:
    registry = CollectorRegistry(auto_describe=False)
    metrics = AttributionMetrics().register(registry)
    assert not attribute_once(tmp_path / "none.duckdb", TenancyRules(), metrics)
    got = samples(registry)
    assert got[("gpuledger_attribution_failures_total", (("reason", "no_database"),))] == 1
    assert ("gpuledger_attribution_last_success_timestamp_seconds", ()) not in got  # absent, not 0
    assert not (tmp_path / "none.duckdb").exists()


@pytest.mark.slow
def test_the_loop_runs_shards_when_given_the_shard_runner(db: Path) -> None:
    registry = CollectorRegistry(auto_describe=False)
    metrics = AttributionMetrics(clock=lambda: 42.0).register(registry)
    job = partial(run_shards, groups=2)
    assert attribute_once(db, TenancyRules(), metrics, job=job)
    assert samples(registry)[("gpuledger_attribution_messages_total", ())] == 12
    with Store(db) as store:
        assert store.count("attributed") == 12 and store.count("ledger_hourly_unmerged") == 0  # shards: no partials
        assert store.scalar("SELECT sum(intervals) FROM ledger_hourly") == store.count("ledger") > 0
    assert attribute_once(db, TenancyRules(), metrics, job=job)  # nothing pending: no shard runs
    assert samples(registry)[("gpuledger_attribution_messages_total", ())] == 12


def test_a_writer_holding_the_file_is_a_locked_failure(db: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb,time; c=duckdb.connect({str(db)!r}); "
                               "print('held', flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        metrics = AttributionMetrics().register(CollectorRegistry(auto_describe=False))
        assert not attribute_once(db, TenancyRules(), metrics, lock_wait_s=0.5)
        assert metrics.failures == {"locked": 1}
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_the_loop_serves_its_metrics_and_stops_on_sigterm(db: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gpuledger.cli", "attribute", "--db", str(db), "--every", "1",
                             "--metrics-port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "GPULEDGER_METRICS_HOST": "127.0.0.1"})
    try:
        def scraped() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return r.read().decode()
            except OSError:
                return ""

        wait_until(lambda: "gpuledger_attribution_last_success_timestamp_seconds" in scraped(), 60,
                   "the loop's first successful run")
        runs_before = next(s.value for f in text_string_to_metric_families(scraped()) for s in f.samples
                           if s.name == "gpuledger_attribution_runs_total")
        time.sleep(2.5)
        runs_after = next(s.value for f in text_string_to_metric_families(scraped()) for s in f.samples
                          if s.name == "gpuledger_attribution_runs_total")
        assert runs_after > runs_before  # it loops
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
