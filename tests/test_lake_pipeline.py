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
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
from gpuledger.store.lake import LakeConfig, LakeStore  # noqa: E402
from gpuledger.store.lake.meta import SqlMetadata  # noqa: E402
from gpuledger.store.lake.replica import LakeReplica, copy_name  # noqa: E402
from gpuledger.transport import KafkaSubscriber  # noqa: E402
from tests.support.demo_data import START  # noqa: E402
from tests.support.ingest_runs import encoded, ingest_cmd, publish  # noqa: E402
from tests.support.kafka import KAFKA_GROUP_TIMING  # noqa: E402
from tests.support.live_server import serving  # noqa: E402
from tests.support.postgres import Postgres, need_postgres  # noqa: E402
from tests.support.s3 import CREDENTIALS, MotoS3, with_credentials  # noqa: E402
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


@dataclass
class Services:
    postgres: Postgres
    s3: MotoS3
    ray_address: str


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """PostgreSQL and moto's S3 started in threads while a local Ray (2 CPUs, no dashboard, auth off on
    loopback) starts here; other processes join the Ray at ``ray_address``. Ray's workers read the lake
    themselves, so the cluster gets the S3 credentials, as a production Ray's nodes must (docs/lake.md)."""
    bindir = need_postgres()
    s3 = MotoS3(tmp_path_factory.mktemp("moto"))
    with pytest.MonkeyPatch.context() as env, ThreadPoolExecutor(2) as pool:
        env.setenv("RAY_AUTH_MODE", "disabled")  # a test cluster on loopback; a real one keeps Ray's token auth
        for key, value in CREDENTIALS.items():  # without them every task's S3 client searches for some (slow)
            env.setenv(key, value)
        pg_started = pool.submit(lambda: started_postgres(bindir))
        s3_started = pool.submit(s3.start)
        try:
            ray.init(num_cpus=2, include_dashboard=False)
        finally:
            pg = pg_started.result()
            s3_started.result()
        try:
            yield Services(pg, s3, ray.get_runtime_context().gcs_address)
        finally:
            ray.shutdown()
            s3.stop()
            pg.remove()


def started_postgres(bindir: Path) -> Postgres:
    pg = Postgres(bindir)
    pg.start()
    return pg


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


def test_agents_to_kafka_to_the_lake_on_ray_to_two_replicas_answer_as_the_embedded_path(
        tansu: Any, services: Services, tmp_path: Path) -> None:
    messages = sim_messages()
    topic = tansu.create_topic(partitions=2)
    publish(tansu.bootstrap, topic, encoded(messages))
    config = LakeConfig(services.postgres.database("e2e"), services.s3.bucket("gpuledger-e2e") + "/raw",
                        s3_endpoint=services.s3.endpoint)
    lake = ["--lake", config.catalog_uri, "--warehouse", config.warehouse, "--s3-endpoint", services.s3.endpoint]
    env = with_credentials({"PATH": os.environ["PATH"], "HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled"})

    def spawn(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(command(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def daemon(name: str, *args: str) -> subprocess.Popen[str]:
        """A long-running command, its log in a file (a pipe nobody reads would fill and block it)."""
        with open(tmp_path / f"{name}.log", "w") as log:
            return subprocess.Popen(command(*args), env=env, stdout=log, stderr=subprocess.STDOUT, text=True)

    def logs(*names: str) -> str:
        return "\n".join(f"--- {n}:\n" + (tmp_path / f"{n}.log").read_text()[-3000:] for n in names)

    # Two lake workers in one group; meanwhile the embedded path reads the same topic into a DuckDB file,
    # attributes and exports it (one command after the other, beside the lake's stages).
    worker = [*ingest_cmd(tansu.bootstrap, topic, "lake", tmp_path / "unused.duckdb")[3:], *lake,
              "--batch-max", "500", "--commit-interval", "1"]
    workers = [daemon(f"worker-{i}", *worker) for i in range(2)]
    made = spawn("token", "create", "--role", "admin", "--name", "e2e", "--lake", config.catalog_uri)
    db = tmp_path / "embedded.duckdb"
    background = ThreadPoolExecutor(1)
    try:
        with Store(db) as store:
            sub = KafkaSubscriber(tansu.bootstrap, topic, "embedded", **KAFKA_GROUP_TIMING)
            try:
                Ingestor(store, sub).run(max_messages=len(messages), max_idle_s=30)
            finally:
                sub.close()
            assert store.count("messages") == len(messages)
        embedded = background.submit(lambda: [finished(spawn(*args)) for args in (
            ("attribute", "--db", str(db)),
            ("export", "chargeback", "--month", MONTH, "--db", str(db), "--out", str(tmp_path / "db.csv")))])
        try:
            wait_until(lambda: committed(tansu.bootstrap, "lake") == len(messages) or any(w.poll() is not None
                                                                                           for w in workers),
                       180, "the lake workers to commit every offset", interval_s=0.3)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {committed(tansu.bootstrap, 'lake')} of {len(messages)}\n"
                                 f"{logs('worker-0', 'worker-1')}") from None
        for w in workers:
            assert w.poll() is None, logs("worker-0", "worker-1")
            w.terminate()
        for w in workers:
            assert w.wait(60) == 0, logs("worker-0", "worker-1")
        stored = [int(m) for m in re.findall(r"ingest stopped: .* records .*: (\d+) stored", logs("worker-0", "worker-1"))]
        assert len(stored) == 2 and sum(stored) == len(messages), stored  # each message stored once, by either
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    admin = finished(made).strip()

    # Attribution on Ray while the two replicas start (they serve the lake as they find it, then refresh).
    ports = [free_port(), free_port()]
    replicas = [daemon(f"replica-{i}", "serve", *lake, "--port", str(port), "--cache-dir", str(tmp_path / f"cache-{i}"),
                      "--lake-refresh", "1") for i, port in enumerate(ports)]
    try:
        attributed = finished(spawn("attribute", *lake, "--ray", services.ray_address, "--node-groups", "2"))
        assert f"on Ray at {services.ray_address}" in attributed, attributed
        export_lake = spawn("export", "chargeback", "--month", MONTH, *lake, "--out", str(tmp_path / "lake.csv"))
        meta = SqlMetadata(config.catalog_uri)
        try:
            current = copy_name(LakeReplica(LakeStore(config), meta, tmp_path / "probe").wanted())
        finally:
            meta.close()
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) for port in ports]
        for client, proc in zip(clients, replicas, strict=True):
            wait_until(lambda c=client, p=proc: serves(c, p, lambda: logs("replica-0", "replica-1")) == current, 120,
                       "serve --lake to serve the rollups")
        embedded.result(timeout=180)
        finished(export_lake)
        assert (tmp_path / "lake.csv").read_bytes() == (tmp_path / "db.csv").read_bytes()
        tenants = embedded_tenants(db)
        assert len(tenants) >= 3, tenants  # totals that mean something
        assert (tmp_path / "db.csv").read_bytes().count(b"\n") > len(tenants)
        with TokenStore(token_path(db)) as tokens:
            _, embedded_admin = create_token(tokens, "admin", name="e2e")
        with serving(create_app(db)) as reference:
            for path in PATHS:
                want = reference.get(path, headers={"Authorization": f"Bearer {embedded_admin}"})
                assert want.status_code == 200, (path, want.text)
                rows = len(want.json()["rows"]) if "json" in want.headers["content-type"] else want.text.count("\n") - 1
                assert rows >= len(tenants), (path, want.text)  # a row per tenant at least: not an empty answer
                for client in clients:
                    got = client.get(path, headers={"Authorization": f"Bearer {admin}"})
                    assert got.status_code == 200, (path, got.text)
                    assert got.content == want.content, (path, got.text, want.text)
        for client in clients:
            client.close()
    finally:
        background.shutdown(wait=True)
        for proc in replicas:
            proc.terminate()
        for proc in replicas:
            proc.wait(10)
    with Store(db, read_only=True) as store:  # what the fleet exercised
        sharing = set(store.query("SELECT DISTINCT sharing FROM ledger")["sharing"].to_list())
    assert {"time_sliced", "mig"} <= sharing, sharing


def serves(client: httpx.Client, proc: subprocess.Popen[str], log: Callable[[], str]) -> str | None:
    """The lake snapshot a replica serves (``/healthz``), None while it starts; its exit fails the test."""
    assert proc.poll() is None, log()
    try:
        health = client.get("/healthz")
    except httpx.TransportError:
        return None
    return health.json().get("lake_snapshot") if health.status_code == 200 else None


def embedded_tenants(db: Path) -> list[str]:
    with Store(db, read_only=True) as store:
        return store.query("SELECT DISTINCT tenant FROM ledger_hourly ORDER BY ALL")["tenant"].to_list()
