"""The lake's serving path with its production services and the real commands.

PostgreSQL (catalog and metadata database, ``tests/support/postgres.py``),
moto's S3 server (warehouse, ``tests/support/s3.py``), and the commands as an
operator runs them: ``gpuledger migrate --to lake``, two ``gpuledger serve
--lake`` processes, ``gpuledger token create --lake``, ``gpuledger export
--lake --final``; and the work-unit import into the lake (in this process).
The same checks on SQLite and a directory, in-process and in more detail:
test_lake_serving.py (test_imports_lake.py for the import).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

pytest.importorskip("pyiceberg", reason="the lake extra is not installed (pip install -e '.[test]')")

from gpuledger.analytics import work_units as wu  # noqa: E402
from gpuledger.api.tokens import TokenStore, create_token, token_path  # noqa: E402
from gpuledger.store.lake import LakeConfig, LakeStore, scan  # noqa: E402
from gpuledger.store.lake.products import LakeProducts  # noqa: E402
from gpuledger.timeutil import HOUR_NS  # noqa: E402
from tests.support.demo_data import build_demo_db  # noqa: E402
from tests.support.postgres import Postgres, running_postgres  # noqa: E402
from tests.support.s3 import CREDENTIALS, MotoS3, running_moto, with_credentials  # noqa: E402
from tests.support.system import free_port, wait_until  # noqa: E402

pytestmark = [pytest.mark.external, pytest.mark.slow]


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    with running_postgres() as pg:
        yield pg


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[MotoS3]:
    with running_moto(tmp_path) as server:
        yield server


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([sys.executable, "-m", "gpuledger.cli", *args], capture_output=True, text=True, env=env,
                         timeout=180)
    assert run.returncode == 0, run.stderr
    return run


def test_migrate_then_two_serve_lake_processes_and_an_export_on_postgresql_and_s3(
        tmp_path: Path, postgres: Postgres, s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> None:
    db = build_demo_db(tmp_path / "demo.duckdb", nodes=1, gpus_per_node=4, hours=2)
    with TokenStore(token_path(db)) as tokens:
        _, admin = create_token(tokens, "admin")
    lake = ["--lake", postgres.uri, "--warehouse", s3.bucket("gpuledger-lake") + "/raw", "--s3-endpoint", s3.endpoint]
    env = with_credentials({"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    first = cli("migrate", "--to", "lake", "--db", str(db), *lake, env=env)
    assert "1 tokens" in first.stderr and "months copied" in first.stderr
    # (a second run copies nothing: test_lake_serving.py; each command start costs ~5 s on the loaded test VM)

    # the work-unit import into the same lake (the replace semantics in detail, on SQLite: test_imports_lake.py)
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    products = LakeProducts(LakeStore(LakeConfig(postgres.uri, s3.bucket("gpuledger-lake") + "/raw",
                                                 s3_endpoint=s3.endpoint, unavailable_s=5)))
    hour, answers = 1_741_392_000 * 10**9, {"q": [({"namespace": "inf", "pod": "llm-0"}, 10.0)]}

    class Twin:  # the Prometheus seam's twin
        def query(self, promql: str, at_s: float) -> list[tuple[dict[str, str], float]]:
            return answers.get(promql, [])

    units = wu.parse_work_units('[[unit]]\nname = "tokens"\nquery = "q"\n')
    assert wu.import_hours(products, Twin(), units, [hour]).written == 1
    snapshot = products.lake.snapshot_id("work_units")
    assert wu.import_hours(products, Twin(), units, [hour]).written == 0  # the same again: no commit
    assert products.lake.snapshot_id("work_units") == snapshot
    answers["q"] = [({"namespace": "inf", "pod": "llm-0"}, 12.0)]
    assert wu.import_hours(products, Twin(), units, [hour, hour + HOUR_NS]).written == 2  # replaced, not added
    rows = [r for r in scan(products.lake, "work_units").to_pylist() if r["hour_start_ns"] in (hour, hour + HOUR_NS)]
    assert sorted((r["hour_start_ns"], r["pod"], r["count"]) for r in rows) == [
        (hour, "llm-0", 12.0), (hour + HOUR_NS, "llm-0", 12.0)]

    ports = [free_port(), free_port()]
    servers = [subprocess.Popen([sys.executable, "-m", "gpuledger.cli", "serve", *lake, "--port", str(port),
                                 "--cache-dir", str(tmp_path / f"cache-{port}"), "--lake-refresh", "1"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for port in ports]
    try:
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) for port in ports]

        def up(client: httpx.Client) -> bool:
            try:
                return client.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        for client, server in zip(clients, servers, strict=True):
            wait_until(lambda c=client, s=server: up(c) or s.poll() is not None, 120, "serve --lake to answer")
            assert server.poll() is None, server.communicate()[1]
        auth = {"Authorization": f"Bearer {admin}"}
        answers = [c.get("/v1/showback?format=csv", headers=auth) for c in clients]
        assert answers[0].status_code == 200 and answers[0].content == answers[1].content
        # a token created with the command is accepted by both replicas at their next request
        made = cli("token", "create", "--role", "tenant", "--tenant", "nlp", "--lake", postgres.uri, env=env)
        tenant = made.stdout.strip()
        views = [c.get("/v1/showback?format=csv", headers={"Authorization": f"Bearer {tenant}"}) for c in clients]
        assert views[0].status_code == 200 and views[0].content == views[1].content
        assert views[0].content != answers[0].content  # its own tenant only

        # the close from the lake, through the command; byte-identical to the file's
        month = "2026-10"
        now_env = {**env, "GPULEDGER_DB_PATH": str(db)}
        cli("export", "chargeback", "--month", month, "--final", "--force", *lake, "--out", str(tmp_path / "lake.csv"),
            env=now_env)
        cli("export", "chargeback", "--month", month, "--final", "--force", "--db", str(db),
            "--out", str(tmp_path / "db.csv"), env=now_env)
        assert (tmp_path / "lake.csv").read_bytes() == (tmp_path / "db.csv").read_bytes()
        assert datetime.now(UTC) > datetime(2026, 11, 1, tzinfo=UTC)  # the month has ended (the close needs it)
        # both replicas serve the closed file after their refresh (1 s here)
        for client in clients:
            wait_until(lambda c=client: c.get(f"/v1/chargeback.csv?month={month}", headers=auth).content
                       == (tmp_path / "lake.csv").read_bytes(), 60, "the closed month on the replica")
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)
