"""Ingest into the lake with real parts: the tansu broker, PostgreSQL as the Iceberg catalog, moto's S3.

Specification: two ``gpuledger ingest --lake`` workers in one consumer group
append to the same Iceberg tables on S3 (no merge step), and every message is
stored exactly once -- also when one worker is SIGKILLed again and again
mid-run; the lake holds the same raw rows, and gives the same ledger, as the
embedded DuckDB ingest of the same messages. When the catalog database goes
away mid-run, ingest retries, then stops with ``error:``/``hint:`` and no
offset past what the lake holds; once it is back, a restarted worker stores
the rest, exactly once.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyiceberg", reason="the lake extra is not installed (pip install -e '.[test]')")

from gpuledger.ingest.consumer import run_ingest  # noqa: E402
from gpuledger.store import Store  # noqa: E402
from gpuledger.store.lake import LakeConfig, LakeStore, LakeUnavailable, materialize, scan  # noqa: E402
from tests.support.ingest_runs import assert_same, encoded, ingest_cmd, publish, reference, snapshot, started, stream  # noqa: E402
from tests.support.kafka import KAFKA_GROUP_TIMING  # noqa: E402
from tests.support.postgres import Postgres, need_postgres  # noqa: E402
from tests.support.s3 import CREDENTIALS, MotoS3, with_credentials  # noqa: E402
from tests.support.system import wait_until  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.external, pytest.mark.slow]


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    pg = Postgres(need_postgres())
    pg.start()
    try:
        yield pg
    finally:
        pg.remove()


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path)
    server.start()
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    try:
        yield server
    finally:
        server.stop()


def lake_args(pg: Postgres, s3: MotoS3, warehouse: str) -> list[str]:
    return ["--lake", pg.uri, "--warehouse", warehouse, "--s3-endpoint", s3.endpoint]


def stored_keys(lake: LakeStore) -> tuple[int, int]:
    """(rows, distinct keys) of the lake's messages table."""
    keys = scan(lake, "messages").select(["agent_id", "boot_id", "seq"])
    return keys.num_rows, keys.group_by(["agent_id", "boot_id", "seq"]).aggregate([]).num_rows


def publish_slowly(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]], chunk: int, pause_s: float) -> None:
    for i in range(0, len(values), chunk):
        publish(bootstrap, topic, values[i:i + chunk])
        time.sleep(pause_s)


def test_two_workers_one_killed_again_and_again_store_every_message_once_as_the_embedded_store(
    tansu: Any, postgres: Postgres, s3: MotoS3, tmp_path: Path
) -> None:
    topic = tansu.create_topic(partitions=4)
    messages = stream(24, nodes=8)  # 192 messages over 8 keys: every partition gets some
    values = encoded(messages)
    warehouse = s3.bucket("gpuledger-lake") + "/raw"
    cmd = [*ingest_cmd(tansu.bootstrap, topic, "lake-workers", tmp_path / "unused.duckdb"),
           *lake_args(postgres, s3, warehouse), "--batch-max", "16", "--commit-interval", "0.3", "--max-idle", "6"]
    env = with_credentials()

    def worker() -> subprocess.Popen[str]:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        started(proc, timeout_s=90)
        return proc

    steady = worker()
    victim = worker()
    feeder = threading.Thread(target=publish_slowly, args=(tansu.bootstrap, topic, values, 16, 0.5), daemon=True)
    kills = 0
    held_at_kills: list[int] = []
    try:
        feeder.start()
        lake = LakeStore(LakeConfig(postgres.uri, warehouse, s3_endpoint=s3.endpoint))
        wait_until(lambda: stored_keys(lake)[0] > 0, 90, "the first messages in the lake", interval_s=0.3)
        while feeder.is_alive() or kills < 3:
            victim.send_signal(signal.SIGKILL)  # mid-run: flushes (one commit per table) are going on
            victim.wait()
            held_at_kills.append(stored_keys(lake)[0])
            kills += 1
            victim = worker()
            assert kills < 12, "the feeder did not finish"
            time.sleep(1.5)
        feeder.join()
        assert steady.wait(180) == 0 and victim.wait(180) == 0  # both drain, then idle out
    finally:
        for p in (steady, victim):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert held_at_kills[0] < len(messages), held_at_kills  # killed mid-run: some stored, not all
    rows, distinct = stored_keys(lake)
    assert (rows, distinct) == (len(messages), len(messages))  # every message, none twice
    want = reference(tansu.bootstrap, topic, len(messages), tmp_path / "ref.duckdb")
    with Store(tmp_path / "from-lake.duckdb") as store:
        assert materialize(lake, store) == len(messages)
        assert_same(snapshot(store), want)  # raw tables row for row, and the same ledger and totals


def committed_offsets(bootstrap: str, group: str) -> dict[int, int]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    try:
        offsets = admin.list_group_offsets({group: None})[group]
        return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
    finally:
        admin.close()


def stored_per_partition(lake: LakeStore) -> dict[int, int]:
    out: dict[int, int] = {}
    for source in scan(lake, "messages").column("source").to_pylist():
        partition = int(source.split("/")[1])
        out[partition] = out.get(partition, 0) + 1
    return out


def test_a_catalog_gone_mid_run_stops_ingest_with_nothing_committed_past_the_lake_and_a_restart_completes_it(
    tansu: Any, postgres: Postgres, s3: MotoS3, tmp_path: Path
) -> None:
    topic = tansu.create_topic(partitions=2)
    messages = stream(30, nodes=4)  # 120 messages
    warehouse = s3.bucket("gpuledger-lake") + "/raw"
    config = LakeConfig(postgres.uri, warehouse, s3_endpoint=s3.endpoint, unavailable_s=3.0)
    lake = LakeStore(config)
    publish(tansu.bootstrap, topic, encoded(messages[:60]))
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            run_ingest(tansu.bootstrap, topic, "lake-outage", "unused.duckdb", lake=config, batch_max=8, linger_s=0.2,
                       handle_signals=False, stop=stop, **KAFKA_GROUP_TIMING)
        except BaseException as exc:  # noqa: BLE001  # the test inspects it
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while stored_keys(lake)[0] < 16:
        assert time.monotonic() < deadline and thread.is_alive(), f"nothing stored: {failure}"
        time.sleep(0.2)
    publish(tansu.bootstrap, topic, encoded(messages[60:]))
    postgres.stop()  # the catalog database goes away mid-run
    thread.join(60)
    assert not thread.is_alive()
    assert len(failure) == 1 and isinstance(failure[0], LakeUnavailable), failure
    assert "nothing was committed to Kafka" in failure[0].hint
    postgres.start()
    committed = committed_offsets(tansu.bootstrap, "lake-outage")
    stored = stored_per_partition(lake)
    assert all(offset <= stored.get(p, 0) for p, offset in committed.items()), (committed, stored)
    assert sum(committed.values()) < len(messages)  # it did stop before the end
    # Back: a restarted worker resumes from the committed offsets; what the lake already holds is skipped.
    before = stored_keys(lake)[0]
    stats = run_ingest(tansu.bootstrap, topic, "lake-outage", "unused.duckdb", lake=config, batch_max=50,
                       linger_s=0.2, handle_signals=False, max_idle_s=4, **KAFKA_GROUP_TIMING)
    assert stats.stored == len(messages) - before
    assert stored_keys(lake) == (len(messages), len(messages))
    assert committed_offsets(tansu.bootstrap, "lake-outage") == {0: stored_per_partition(lake)[0],
                                                                  1: stored_per_partition(lake)[1]}

