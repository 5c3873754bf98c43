"""The lake through a real Iceberg REST catalog (lakana-server on PostgreSQL): ingest and a read.

What the SQL catalog tests show, through ``--lake http://...``: idempotent
appends, the same rows as the embedded store, and a conflicting commit refused
by the server (HTTP 409 -> ``CommitFailedException``) then retried after
re-reading the keys. lakana-server lives in a virtualenv of its own under
``.cache/`` that ``make test`` prepares (tests/support/rest_catalog.py says why
it is not a dependency); missing, the tests skip, and fail under ``CI=true``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("pyiceberg", reason="the lake extra is not installed (pip install -e '.[test]')")

from gpuledger.store import Store  # noqa: E402
from gpuledger.store.lake import LakeConfig, LakeStore, materialize, scan  # noqa: E402
from gpuledger.store.lake.schema import KEYED  # noqa: E402
from tests.support.ingest_runs import stream  # noqa: E402
from tests.support.lake_race import race_on_devices  # noqa: E402
from tests.support.postgres import running_postgres  # noqa: E402
from tests.support.rest_catalog import LakanaRest, need_lakana  # noqa: E402

pytestmark = [pytest.mark.external, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LakanaRest]:
    """One PostgreSQL and one lakana-server for the module (their start is most of the tests' time)."""
    exe = need_lakana()
    with running_postgres() as pg:
        lakana = LakanaRest(exe, pg, tmp_path_factory.mktemp("lakana"))
        try:
            lakana.start()
            yield lakana
        finally:
            lakana.stop()


@pytest.fixture
def rest(server: LakanaRest, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> LakanaRest:
    """The server with a fresh environment (a catalog of its own) for this test, in pyiceberg's variables."""
    server.new_environment("t-" + request.node.name.removeprefix("test_")[:40].replace("_", "-"))
    for key, value in server.client_env().items():
        monkeypatch.setenv(key, value)
    return server


def rest_config(rest: LakanaRest) -> LakeConfig:
    # lakana admits tables only under the top-level namespaces bronze, silver and gold (its medallion rule)
    return LakeConfig(rest.uri, rest.storage_root, namespace="bronze")


def test_ingest_and_a_read_through_a_rest_catalog(rest: LakanaRest) -> None:
    config = rest_config(rest)
    assert config.properties()["type"] == "rest"
    lake = LakeStore(config)
    msgs = stream(4, nodes=2)
    assert lake.write_messages(msgs) == len(msgs)
    assert lake.write_messages(msgs) == 0  # idempotent through the REST catalog too
    with Store(":memory:") as want, Store(":memory:") as got:
        want.write_messages(msgs)
        assert materialize(LakeStore(config), got) == len(msgs)  # a second client reads what the first wrote
        for name in KEYED:
            assert got.count(name) == want.count(name), name
        assert got.query("SELECT * FROM devices ORDER BY ALL").equals(want.query("SELECT * FROM devices ORDER BY ALL"))


def test_a_commit_the_rest_server_refuses_is_retried_without_doubling(rest: LakanaRest) -> None:
    config = rest_config(rest)
    first, second = LakeStore(config), LakeStore(config)
    msgs = stream(3, nodes=2)
    race_on_devices(first, second, msgs)
    assert first.write_messages(msgs) == 0
    assert first.conflicts >= 1  # the server answered 409 to the stale commit
    with Store(":memory:") as want:
        want.write_messages(msgs)
        assert {t: scan(first, t).num_rows for t in KEYED} == {t: want.count(t) for t in KEYED}
