"""The lake pipeline end to end with real parts, against the embedded DuckDB path on the same messages (issue 17).

Simulated agents (``gpuledger.sim``: three 8-GPU nodes of the demo fleet, time-slicing, MIG, MPS and fractional
GPUs included, 90 minutes at a 60 s tick) publish to a tansu topic; two ``gpuledger ingest --lake`` workers in
one consumer group write the Iceberg tables (a PostgreSQL catalog, moto's S3); ``gpuledger attribute --lake
--ray`` books the hourly rollups from a local Ray (2 CPUs); two ``gpuledger serve --lake`` processes (cache
directories of their own) answer with a token made by ``gpuledger token create --lake``. The same messages,
read from the same topic by the embedded ingest, ``gpuledger attribute --db`` and the API over the file give
the reference: per-tenant showback (JSON and CSV) and the chargeback CSV must come out byte for byte the same
from both replicas and from the file, and ``gpuledger export --lake --month`` byte-identical to ``export --db``.

Commands run as processes wherever the stage can overlap another one's wait; the reference's ingest and API
run in this process (the same code ``ingest --db`` and ``serve --db`` run), to keep the test short.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("pyiceberg", reason="the lake extra is not installed (pip install -e '.[test]')")
ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[test]')")

from gpuledger import wire  # noqa: E402
from gpuledger.agent.sampler import Sampler  # noqa: E402
from gpuledger.api.app import create_app  # noqa: E402
from gpuledger.api.tokens import TokenStore, create_token, token_path  # noqa: E402
from gpuledger.ingest.consumer import Ingestor  # noqa: E402
from gpuledger.sim.fleetsim import demo_fleet  # noqa: E402
from gpuledger.store import Store  # noqa: E402
from gpuledger.transport import KafkaSubscriber  # noqa: E402
from tests.support.demo_data import START  # noqa: E402
from tests.support.ingest_runs import encoded, ingest_cmd, publish  # noqa: E402
from tests.support.kafka import KAFKA_GROUP_TIMING  # noqa: E402
from tests.support.live_server import serving  # noqa: E402
from tests.support.postgres import Postgres, need_postgres  # noqa: E402
from tests.support.s3 import MotoS3, with_credentials  # noqa: E402
from tests.support.system import free_port, wait_until  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.external, pytest.mark.slow]

MONTH = "2026-10"  # START's month
#: Compared between both replicas and the file: per-tenant totals (JSON, CSV) and the month's chargeback file.
PATHS = ("/v1/showback?group_by=tenant", "/v1/showback?format=csv", f"/v1/chargeback.csv?month={MONTH}")


def sim_messages(nodes: int = 3, hours: float = 1.5, tick_s: float = 60.0) -> list[wire.Message]:
    """What the agents of ``nodes`` demo-fleet nodes send over ``hours`` from START, in order."""
    fleet = demo_fleet(n_nodes=nodes, gpus_per_node=8, seed=17, horizon_s=hours * 3600,
                       start_us=int(START.timestamp() * 1e6))
    samplers = [Sampler(n, n, node=n.spec.name, boot_id="e2e") for n in fleet.nodes]
    for s in samplers:
        s.tick()  # prime
    out: list[wire.Message] = []
    for _ in range(round(hours * 3600 / tick_s)):
        fleet.advance(tick_s)
        out.extend(m for m in (s.tick() for s in samplers) if m is not None)
    return out


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    pg = Postgres(need_postgres())
    pg.start()
    try:
        yield pg
    finally:
        pg.remove()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray (2 CPUs, no dashboard, auth off on loopback) that other processes join at this address."""
    before = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a test cluster on loopback; a real one keeps Ray's token auth
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = before


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gpuledger.cli", *args]


def finished(proc: subprocess.Popen[str], timeout_s: float = 180) -> str:
    """Wait for a command; its stdout (stderr in the failure)."""
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, f"{proc.args!r}: exit {proc.returncode}\n{err[-3000:]}"
    return out


def committed(bootstrap: str, group: str) -> int:
    """Records whose offsets ``group`` has committed (all partitions)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    try:
        return sum(meta.offset for meta in admin.list_group_offsets({group: None})[group].values() if meta.offset >= 0)
    finally:
        admin.close()


def answering(client: httpx.Client, proc: subprocess.Popen[str]) -> bool:
    if proc.poll() is not None:
        return True  # exited: reported by the caller
    try:
        return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def test_agents_to_kafka_to_the_lake_on_ray_to_two_replicas_answer_as_the_embedded_path(
        tansu: Any, postgres: Postgres, s3: MotoS3, ray_address: str, tmp_path: Path) -> None:
    messages = sim_messages()
    topic = tansu.create_topic(partitions=2)
    publish(tansu.bootstrap, topic, encoded(messages))
    lake = ["--lake", postgres.database("e2e"), "--warehouse", s3.bucket("gpuledger-e2e") + "/raw",
            "--s3-endpoint", s3.endpoint]
    env = with_credentials({"PATH": os.environ["PATH"], "HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled"})

    def spawn(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(command(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # Two lake workers in one group; meanwhile the reference reads the same topic into a DuckDB file.
    worker = [*ingest_cmd(tansu.bootstrap, topic, "lake", tmp_path / "unused.duckdb")[3:], *lake,
              "--batch-max", "100", "--commit-interval", "0.5"]
    workers = [spawn(*worker), spawn(*worker)]
    made = spawn("token", "create", "--role", "admin", "--name", "e2e", "--lake", lake[1])
    db = tmp_path / "embedded.duckdb"
    try:
        with Store(db) as store:
            sub = KafkaSubscriber(tansu.bootstrap, topic, "embedded", **KAFKA_GROUP_TIMING)
            try:
                Ingestor(store, sub).run(max_messages=len(messages), max_idle_s=30)
            finally:
                sub.close()
            assert store.count("messages") == len(messages)
        attribute_db = spawn("attribute", "--db", str(db))
        wait_until(lambda: committed(tansu.bootstrap, "lake") == len(messages) or any(w.poll() is not None
                                                                                       for w in workers),
                   180, "the lake workers to commit every offset", interval_s=0.3)
        for w in workers:
            assert w.poll() is None, w.communicate()[1][-3000:]
            w.terminate()
        for w in workers:
            assert w.wait(60) == 0, w.communicate()[1][-3000:]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    admin = finished(made).strip()
    finished(attribute_db)
    attributed = finished(spawn("attribute", *lake, "--ray", ray_address, "--node-groups", "2"))
    assert f"on Ray at {ray_address}" in attributed, attributed

    # The month's file both ways, while the two replicas start.
    exports = {"db": spawn("export", "chargeback", "--month", MONTH, "--db", str(db),
                           "--out", str(tmp_path / "db.csv")),
               "lake": spawn("export", "chargeback", "--month", MONTH, *lake, "--out", str(tmp_path / "lake.csv"))}
    ports = [free_port(), free_port()]
    replicas = [spawn("serve", *lake, "--port", str(port), "--cache-dir", str(tmp_path / f"cache-{i}"))
                for i, port in enumerate(ports)]
    try:
        for proc in exports.values():
            finished(proc)
        assert (tmp_path / "lake.csv").read_bytes() == (tmp_path / "db.csv").read_bytes()
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) for port in ports]
        for client, proc in zip(clients, replicas, strict=True):
            wait_until(lambda c=client, p=proc: answering(c, p), 120, "serve --lake to answer")
            assert proc.poll() is None, proc.communicate()[1][-3000:]
        with TokenStore(token_path(db)) as tokens:
            _, embedded_admin = create_token(tokens, "admin", name="e2e")
        with serving(create_app(db)) as embedded:
            for path in PATHS:
                want = embedded.get(path, headers={"Authorization": f"Bearer {embedded_admin}"})
                assert want.status_code == 200, (path, want.text)
                for client in clients:
                    got = client.get(path, headers={"Authorization": f"Bearer {admin}"})
                    assert got.status_code == 200, (path, got.text)
                    assert got.content == want.content, (path, got.text, want.text)
        tenants = embedded_tenants(db)
        assert len(tenants) >= 3, tenants  # totals that mean something
        assert (tmp_path / "db.csv").read_bytes().count(b"\n") > len(tenants)
    finally:
        for proc in replicas:
            proc.terminate()
        for proc in replicas:
            proc.wait(10)
    with Store(db, read_only=True) as store:  # what the fleet exercised
        sharing = set(store.query("SELECT DISTINCT sharing FROM ledger")["sharing"].to_list())
    assert {"time_sliced", "mig"} <= sharing, sharing


def embedded_tenants(db: Path) -> list[str]:
    with Store(db, read_only=True) as store:
        return store.query("SELECT DISTINCT tenant FROM ledger_hourly ORDER BY ALL")["tenant"].to_list()
