"""Storage under a running ingest: the API reads the file while ingest writes it.

Specification: a worker holds its DuckDB file only while a flush writes, so
the API answers from the file while ingest runs. Many workers share the lake,
not a file: tests/ingest/test_lake_kafka.py.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from gpuledger.api.app import create_app
from gpuledger.store import Store
from tests.support.ingest_runs import encoded, ingest_cmd, publish, started, stream
from tests.support.live_server import serving

pytestmark = pytest.mark.kafka


@pytest.mark.slow
def test_the_api_answers_from_the_file_while_ingest_writes_it(kafka_broker: str, kafka_topic: str,
                                                             tmp_path: Path) -> None:
    messages = stream(45)  # 180 messages
    publish(kafka_broker, kafka_topic, encoded(messages))
    db = tmp_path / "live.duckdb"
    Store(db).close()  # the file exists before the API starts
    proc = subprocess.Popen(ingest_cmd(kafka_broker, kafka_topic, "live", db, "--batch-max", "10", "--linger",
                                       "0", "--max-idle", "3"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    statuses: list[int] = []
    seen_nodes: list[int] = []
    try:
        started(proc)
        with serving(create_app(db, auth=False, cache_ttl_s=0)) as client:
            while proc.poll() is None:
                r = client.get("/v1/fleet", params={"start": "2025-01-01T00:00:00Z", "end": "2025-01-02T00:00:00Z"})
                statuses.append(r.status_code)
                if r.status_code == 503:
                    assert r.json()["error"]["code"] == "database_busy" and "retry-after" in r.headers
                else:
                    assert r.status_code == 200, r.text
                    seen_nodes.append(r.json()["total_rows"])  # GPUs the API sees in the file so far
                time.sleep(0.05)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ok = statuses.count(200)
    assert max(seen_nodes) == 16, f"the API never saw all 4 nodes x 4 GPUs: {seen_nodes}"
    # A worker flushing back to back (10 messages per flush) holds the file about half the time; at a
    # fleet's pace (one flush per second or less) it is free most of the time.
    assert ok >= 5 and ok / len(statuses) >= 0.25, f"{ok} of {len(statuses)} requests answered while ingest ran"
    assert len(set(seen_nodes)) >= 2, f"the API did not see the data arrive: {seen_nodes}"
    with Store(db, read_only=True) as store:
        assert store.count("messages") == len(messages)  # readers cost ingest nothing but short waits
