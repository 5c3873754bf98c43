"""Serving and closing from the lake: migrate a DuckDB file, two stateless replicas, the month close.

Real parts: the demo pipeline's DuckDB file (simulated fleet -> ingest ->
attribution), Iceberg tables through pyiceberg on a SQLite catalog and a local
warehouse (PostgreSQL + S3 add nothing to what is checked here; the same with
them: test_lake_serving_services.py), the API served over real HTTP (uvicorn),
the exports through the command's own functions. The replicas are built as
``gpuledger serve --lake`` builds them (``cli/serve.py``); one test runs the
command itself.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from prometheus_client import CollectorRegistry

pytest.importorskip("pyiceberg", reason="the lake extra is not installed (pip install -e '.[test]')")

from gpuledger.analytics.export_cmd import ExportRequest, run_export, run_lake_export  # noqa: E402
from gpuledger.analytics.focus import ExportContext  # noqa: E402
from gpuledger.analytics.prices import default_price_book  # noqa: E402
from gpuledger.api.app import create_app  # noqa: E402
from gpuledger.api.metrics import LakeSnapshotAge  # noqa: E402
from gpuledger.api.tokens import create_token, revoke_token  # noqa: E402
from gpuledger.store import Store  # noqa: E402
from gpuledger.store.lake import LakeConfig, LakeStore, scan  # noqa: E402
from gpuledger.store.lake.meta import SqlMetadata  # noqa: E402
from gpuledger.store.lake.migrate import migrate_to_lake  # noqa: E402
from gpuledger.timeutil import DAY_NS  # noqa: E402
from tests.support.demo_data import build_demo_db  # noqa: E402
from tests.support.ingest_runs import stream  # noqa: E402
from tests.support.lake_serving import Lake, bearer, lake_app, make_lake, replica  # noqa: E402
from tests.support.live_server import serving  # noqa: E402

MONTH = "2026-10"
NOW = datetime(2026, 12, 7, tzinfo=UTC)
#: What the replicas and `serve --db` are compared on (each with an admin and a tenant token).
PATHS = ("/v1/showback", "/v1/showback?format=csv", "/v1/showback?group_by=tenant,model&granularity=day",
         "/v1/series/showback?granularity=hour", "/v1/efficiency", "/v1/fleet", "/v1/efficiency/idle-gpus",
         "/v1/values?dimension=tenant", f"/v1/chargeback.csv?month={MONTH}")


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_db(tmp_path_factory.mktemp("demo") / "demo.duckdb", nodes=2, gpus_per_node=4, hours=3)


@pytest.fixture
def lake(tmp_path: Path, demo_db: Path) -> Iterator[Lake]:
    made = make_lake(tmp_path / "lake", demo_db)
    try:
        yield made
    finally:
        made.meta.close()


def test_migrate_copies_raw_rollups_tokens_and_closes_once(lake: Lake) -> None:
    with Store(lake.db, read_only=True) as store:
        messages, hourly = store.count("messages"), store.count("ledger_hourly")
    assert scan(lake.store, "messages").num_rows == messages
    lake_hourly = scan(lake.store, "ledger_hourly")
    assert lake_hourly.num_rows == hourly
    # the lake-only hour column is the hour start as a timestamp
    assert pc.all(pc.equal(lake_hourly["hour"].cast(pa.int64()), pc.divide(lake_hourly["hour_start_ns"], 1000))).as_py()
    with lake.meta.tokens() as tokens:
        assert tokens.scalar("SELECT count(*) FROM api_tokens") == 2
    again = migrate_to_lake(lake.db, lake.store, lake.meta)
    assert not again.copied_anything, again
    assert again.months_skipped == [f"ledger_hourly {MONTH}"]
    assert scan(lake.store, "messages").num_rows == messages
    assert scan(lake.store, "ledger_hourly").num_rows == hourly


@pytest.mark.slow  # three servers, 14 requests each (~10 s on the loaded 2-core VM)
def test_two_replicas_answer_as_serve_db_does(lake: Lake) -> None:
    a, b = replica(lake, "cache-a"), replica(lake, "cache-b")
    with serving(lake_app(lake, a)) as ca, serving(lake_app(lake, b)) as cb, serving(create_app(lake.db)) as cd:
        for token, paths in ((lake.admin, PATHS), (lake.tenant, PATHS[:4] + PATHS[5:6])):
            for path in paths:
                got_a, want = (c.get(path, headers=bearer(token)) for c in (ca, cd))
                assert got_a.status_code == want.status_code, (path, got_a.text)
                assert got_a.content == want.content, path
                if path in PATHS[:2] or path == PATHS[5]:  # B built its own copy: the same answers
                    assert cb.get(path, headers=bearer(token)).content == got_a.content, path
        # a tenant token sees only its tenant, on the lake as on the file
        rows = ca.get("/v1/showback?group_by=tenant", headers=bearer(lake.tenant)).json()["rows"]
        assert {r["tenant"] for r in rows} == {"nlp"}
        health = ca.get("/healthz").json()
        assert health["lake_snapshot"].startswith("lake-") and health["lake_snapshot_age_s"] >= 0
        assert health["lake_error"] is None


def test_a_token_made_on_one_replica_works_on_the_other_and_a_revocation_too(lake: Lake) -> None:
    a, b = replica(lake, "cache-a"), replica(lake, "cache-b")
    with serving(lake_app(lake, a)) as ca, serving(lake_app(lake, b)) as cb:
        assert ca.get("/v1/whoami", headers=bearer(lake.admin)).status_code == 200
        with SqlMetadata(lake.config.catalog_uri).tokens() as elsewhere:  # e.g. `gpuledger token create --lake` by A
            token_id, token = create_token(elsewhere, "finance", name="fin")
        assert cb.get("/v1/whoami", headers=bearer(token)).json()["role"] == "finance"
        assert ca.get("/v1/whoami", headers=bearer(token)).status_code == 200  # cached on A ...
        with lake.meta.tokens() as tokens:
            revoke_token(tokens, token_id)  # ... revoked through B's side
        for client in (ca, cb):
            refused = client.get("/v1/whoami", headers=bearer(token))
            assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
        with lake.meta.tokens() as tokens:  # only the hash is kept
            assert token not in str(tokens.query("SELECT * FROM api_tokens").rows())


def test_new_rows_in_the_lake_reach_both_replicas_at_their_refresh(lake: Lake) -> None:
    a, b = replica(lake, "cache-a"), replica(lake, "cache-b")
    assert (a.refresh(), a.builds) == (False, 1)  # nothing moved: nothing read, nothing rebuilt
    day = "start=2026-10-02T00:00:00Z&end=2026-10-04T00:00:00Z"
    with serving(lake_app(lake, a)) as ca, serving(lake_app(lake, b)) as cb:
        before = ca.get(f"/v1/showback?{day}", headers=bearer(lake.admin)).json()
        # attribution (another engineer's job on the lake) commits a day later's rollups: here, a copy shifted a day
        hourly = lake.store.table("ledger_hourly")
        rows = scan(lake.store, "ledger_hourly")
        shifted = rows.set_column(0, "hour_start_ns", pc.add(rows["hour_start_ns"], DAY_NS))
        shifted = shifted.set_column(shifted.schema.get_field_index("hour"), "hour",
                                     pc.divide(shifted["hour_start_ns"], 1000).cast(rows.schema.field("hour").type))
        hourly.append(pa.Table.from_arrays(shifted.columns, schema=rows.schema))
        assert ca.get(f"/v1/showback?{day}", headers=bearer(lake.admin)).json() == before  # not yet refreshed
        assert a.refresh() and b.refresh()
        assert a.rows_read == b.rows_read == rows.num_rows  # only the new data file was read; the rest was local
        after_a = ca.get(f"/v1/showback?{day}", headers=bearer(lake.admin)).json()
        assert after_a == cb.get(f"/v1/showback?{day}", headers=bearer(lake.admin)).json()
        assert after_a != before and after_a["rows"]


@pytest.mark.slow  # six exports each way and a replica (~7 s on the loaded 2-core VM)
def test_export_from_the_lake_is_byte_identical_and_a_closed_month_stays_closed(lake: Lake, tmp_path: Path) -> None:
    book, context = default_price_book(), ExportContext()
    for final in (False, True):  # the preview, then the close
        for fmt in ("csv", "parquet"):
            if final and fmt == "parquet":
                continue
            want, got = tmp_path / f"db-{final}.{fmt}", tmp_path / f"lake-{final}.{fmt}"
            request = ExportRequest("chargeback", MONTH, str(lake.db), format=fmt, final=final, force=True)  # type: ignore[arg-type]
            assert run_export(ExportRequest(**{**request.__dict__, "out": str(want)}), book, context, NOW) == 0
            assert run_lake_export(ExportRequest(**{**request.__dict__, "out": str(got)}), lake.store, lake.meta,
                                   book, context, NOW) == 0
            assert got.read_bytes() == want.read_bytes(), (final, fmt)
    for where in ("db", "lake"):  # the reconciliation report too
        request = ExportRequest("reconciliation", MONTH, str(lake.db), out=str(tmp_path / f"{where}.txt"))
        code = (run_export(request, book, context, NOW) if where == "db"
                else run_lake_export(request, lake.store, lake.meta, book, context, NOW))
        assert code == 0
    assert (tmp_path / "lake.txt").read_text() == (tmp_path / "db.txt").read_text()
    closed = lake.meta.closes()
    assert closed["month"].to_list() == [MONTH]
    first = (tmp_path / "lake-True.csv").read_bytes()
    # the lake changes after the close (a late rollup row); the closed file does not, and no second close is recorded
    rows = scan(lake.store, "ledger_hourly").slice(0, 1)
    late = rows.set_column(rows.schema.get_field_index("gpu_seconds"), "gpu_seconds", pa.array([1234.0]))
    lake.store.table("ledger_hourly").append(pa.Table.from_arrays(late.columns, schema=rows.schema))
    again = tmp_path / "again.csv"
    assert run_lake_export(ExportRequest("chargeback", MONTH, "", out=str(again), final=True, force=True),
                           lake.store, lake.meta, book, context, NOW) == 0
    assert again.read_bytes() == first
    assert lake.meta.closes().height == 1
    # a replica serves the closed file
    rep = replica(lake, "cache-close")
    with serving(lake_app(lake, rep)) as client:
        assert client.get(f"/v1/chargeback.csv?month={MONTH}", headers=bearer(lake.admin)).content == first


def test_a_lake_written_by_the_previous_version_is_read_after_the_upgrade(tmp_path: Path, demo_db: Path) -> None:
    # before this version: ingest wrote the raw tables only (no product tables, no metadata tables)
    config = LakeConfig(f"sqlite:///{tmp_path}/catalog.db", str(tmp_path / "warehouse"), unavailable_s=0.5)
    old = LakeStore(config)
    messages = stream(4, nodes=2, n_gpus=2)
    assert old.write_messages(messages) == len(messages)
    catalog = old.catalog
    assert {t[1] for t in catalog.list_tables("gpuledger")} == {"messages", "devices", "processes", "allocations",
                                                                 "field_errors", "pods", "dead_letters"}
    lake = Lake(tmp_path / "x", config, LakeStore(config), SqlMetadata(config.catalog_uri), tmp_path, "", "")
    rep = replica(lake, "cache")  # product tables created empty; raw tables served to the fleet view
    with serving(create_app(rep.path, auth=False)) as client:
        fleet = client.get("/v1/fleet?start=2026-01-01T00:00:00Z&end=2026-01-31T00:00:00Z").json()
        with Store(":memory:") as want:
            want.write_messages(messages)
            with serving(create_app(store=want, auth=False)) as embedded:
                assert fleet == embedded.get("/v1/fleet?start=2026-01-01T00:00:00Z&end=2026-01-31T00:00:00Z").json()
    lake.meta.close()


def test_a_replica_keeps_serving_its_last_snapshot_while_the_lake_is_away(lake: Lake) -> None:
    rep = replica(lake, "cache")
    registry = CollectorRegistry()
    registry.register(LakeSnapshotAge(rep.age_s))
    assert registry.get_sample_value("gpuledger_lake_snapshot_age_seconds") is not None
    with serving(lake_app(lake, rep)) as client:
        want = client.get("/v1/showback?format=csv", headers=bearer(lake.admin)).content
        away = lake.root / "warehouse-away"
        (lake.root / "warehouse").rename(away)  # the object store does not answer
        assert rep.refresh() is False
        health = client.get("/healthz").json()
        assert "did not answer" in health["lake_error"] and health["lake_snapshot_age_s"] is not None
        assert list((lake.root / "cache").glob("*.building*")) == []  # the failed build left nothing
        assert client.get("/v1/showback?format=csv", headers=bearer(lake.admin)).content == want
        away.rename(lake.root / "warehouse")
        rep.refresh()
        assert client.get("/healthz").json()["lake_error"] is None


@pytest.mark.slow  # a subprocess: the command's start-up
def test_serve_lake_unreachable_at_start_is_an_error_with_a_hint(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "gpuledger.cli", "serve", "--lake",
                          "postgresql+psycopg://gl:secret@127.0.0.1:1/gl", "--warehouse", str(tmp_path / "w"),
                          "--cache-dir", str(tmp_path / "cache"), "--port", "0"],
                         capture_output=True, text=True, timeout=60,
                         env={"GPULEDGER_LAKE_UNAVAILABLE_S": "0.5", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2, run.stderr
    assert "error: cannot serve from the lake" in run.stderr and "hint:" in run.stderr
    assert "secret" not in run.stderr
