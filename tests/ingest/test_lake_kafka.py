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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyiceberg", reason="the lake extra is not installed (pip install -e '.[test]')")

from gpuledger.ingest.consumer import run_ingest  # noqa: E402
from gpuledger.store import Store  # noqa: E402
from gpuledger.store.lake import LakeConfig, LakeStore, LakeUnavailable, materialize, scan  # noqa: E402
from tests.support.ingest_runs import assert_same, encoded, ingest_cmd, publish, reference, snapshot, started, stream  # noqa: E402
from tests.support.kafka import KAFKA_GROUP_TIMING  # noqa: E402
from tests.support.postgres import Postgres, running_postgres  # noqa: E402
from tests.support.s3 import CREDENTIALS, MotoS3, running_moto, with_credentials  # noqa: E402
from tests.support.system import wait_until  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.external, pytest.mark.slow]


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[Postgres]:
    """One cluster for the module (initdb once); each test gets a database of its own."""
    with running_postgres() as pg:
        yield pg


@dataclass
class Catalog:
    """A fresh database on the module's server: the test's Iceberg catalog; stop/start act on the server."""

    server: Postgres
    uri: str

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


@pytest.fixture
def postgres(postgres_server: Postgres) -> Catalog:
    if not postgres_server.running():  # a test stopped it and failed before starting it again
        postgres_server.start()
    return Catalog(postgres_server, postgres_server.database(f"catalog_{uuid.uuid4().hex[:8]}"))


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """One moto server for the module; each test writes to buckets of its own."""
    with running_moto(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def s3(s3_server: MotoS3, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    return s3_server


def lake_bucket(s3: MotoS3) -> str:
    """A bucket of this test's own, as a warehouse URI."""
    return s3.bucket(f"gpuledger-lake-{uuid.uuid4().hex[:8]}") + "/raw"


def lake_args(pg: Catalog, s3: MotoS3, warehouse: str) -> list[str]:
    return ["--lake", pg.uri, "--warehouse", warehouse, "--s3-endpoint", s3.endpoint]


def stored_keys(lake: LakeStore) -> tuple[int, int]:
    """(rows, distinct keys) of the lake's messages table."""
    keys = scan(lake, "messages").select(["agent_id", "boot_id", "seq"])
    return keys.num_rows, keys.group_by(["agent_id", "boot_id", "seq"]).aggregate([]).num_rows


def test_two_workers_one_killed_again_and_again_store_every_message_once_as_the_embedded_store(
    tansu: Any, postgres: Catalog, s3: MotoS3, tmp_path: Path
) -> None:
    topic = tansu.create_topic(partitions=4)
    messages = stream(12, nodes=8)  # 96 messages over 8 keys: every partition gets some
    values = encoded(messages)
    chunks = [values[i:i + 32] for i in range(0, len(values), 32)]  # one per kill; the survivor finishes the last
    warehouse = lake_bucket(s3)
    cmd = [*ingest_cmd(tansu.bootstrap, topic, "lake-workers", tmp_path / "unused.duckdb"),
           *lake_args(postgres, s3, warehouse), "--batch-max", "16", "--commit-interval", "0.3"]
    env = with_credentials()

    def spawn() -> subprocess.Popen[str]:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)

    steady, victim = spawn(), spawn()  # started together: their start-ups overlap
    held_at_kills: list[int] = []
    try:
        started(steady, timeout_s=90)
        started(victim, timeout_s=90)
        lake = LakeStore(LakeConfig(postgres.uri, warehouse, s3_endpoint=s3.endpoint))
        for kill, chunk in enumerate(chunks):
            before = stored_keys(lake)[0]
            publish(tansu.bootstrap, topic, chunk)
            # mid-run: a flush of these records has committed, more of them are being stored (a commit per table)
            wait_until(lambda before=before: stored_keys(lake)[0] > before, 90, "a flush of the new records",
                       interval_s=0.1)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            held_at_kills.append(stored_keys(lake)[0])
            if kill < len(chunks) - 1:
                victim = spawn()  # it rejoins the group: a rebalance while the killed batch is redelivered
                started(victim, timeout_s=90)
        # Done when every record's offset is committed (after its store): no redelivery can come after that.
        wait_until(lambda: sum(committed_offsets(tansu.bootstrap, "lake-workers").values()) == len(messages), 180,
                   "every offset committed", interval_s=0.3)
        steady.send_signal(signal.SIGTERM)
        assert steady.wait(60) == 0  # it stops cleanly
    finally:
        for p in (steady, victim):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert len(held_at_kills) == 3 and held_at_kills[0] < len(messages), held_at_kills  # killed mid-run
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
    tansu: Any, postgres: Catalog, s3: MotoS3, tmp_path: Path
) -> None:
    topic = tansu.create_topic(partitions=2)
    messages = stream(20, nodes=4)  # 80 messages
    warehouse = lake_bucket(s3)
    # GPULEDGER_LAKE_UNAVAILABLE_S: how long the writer retries (0.25 s, 0.5 s, ...) before it gives up
    config = LakeConfig(postgres.uri, warehouse, s3_endpoint=s3.endpoint, unavailable_s=1.0)
    lake = LakeStore(config)
    publish(tansu.bootstrap, topic, encoded(messages[:40]))
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
    wait_until(lambda: stored_keys(lake)[0] >= 16 or not thread.is_alive(), 60, "the first flushes in the lake",
               interval_s=0.1)
    assert thread.is_alive(), f"ingest stopped before the outage: {failure}"
    publish(tansu.bootstrap, topic, encoded(messages[40:]))
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
                       linger_s=0.2, handle_signals=False, max_messages=len(messages) - sum(committed.values()),
                       max_idle_s=30, **KAFKA_GROUP_TIMING)  # stops after the last record; idling is a failure
    assert stats.stored == len(messages) - before
    assert stored_keys(lake) == (len(messages), len(messages))
    assert committed_offsets(tansu.bootstrap, "lake-outage") == {0: stored_per_partition(lake)[0],
                                                                  1: stored_per_partition(lake)[1]}
