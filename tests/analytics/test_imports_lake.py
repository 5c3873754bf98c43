"""The importers into the lake: work units and Kueue's series as the DuckDB file gets them, served by a replica.

Real parts: Iceberg tables through pyiceberg on a SQLite catalog and a local
warehouse, a real Prometheus scraping vLLM- and Kueue-shaped counters (the
exporters of test_work_units.py and test_queues.py), the API over real HTTP
(a ``serve --lake`` replica, :class:`LakeReplica`, against ``serve --db``).
The first test drives the importers with the Prometheus seam's twin, to
state the replace semantics in a few lines.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

pytest.importorskip("pyiceberg", reason="the lake extra is not installed (pip install -e '.[test]')")

from gpuledger.analytics import kinds as K  # noqa: E402
from gpuledger.analytics import queues as qu  # noqa: E402
from gpuledger.analytics import work_units as wu  # noqa: E402
from gpuledger.analytics.hourly import rebuild_hourly  # noqa: E402
from gpuledger.api.app import create_app  # noqa: E402
from gpuledger.sim import promserver  # noqa: E402
from gpuledger.store import Store  # noqa: E402
from gpuledger.store.lake import LakeConfig, LakeStore, scan  # noqa: E402
from gpuledger.store.lake.meta import SqlTokens  # noqa: E402
from gpuledger.store.lake.products import LakeProducts  # noqa: E402
from gpuledger.timeutil import HOUR_NS  # noqa: E402
from tests.support.api_ledger import row, write_ledger  # noqa: E402
from tests.support.importers import KUEUE_METRICS, QUEUES, UNITS, VLLM_METRICS  # noqa: E402
from tests.support.lake_serving import Lake, bearer, make_lake, replica  # noqa: E402
from tests.support.live_server import serving  # noqa: E402
from tests.support.system import need_binary  # noqa: E402

HOUR = 1_741_392_000 * 10**9  # 2025-03-08T00:00Z


class Answers:
    """The Prometheus seam's twin: the answer of the first key found in the query, per evaluation time."""

    def __init__(self) -> None:
        self.by_time: dict[float, dict[str, list[tuple[dict[str, str], float]]]] = {}

    def at(self, hour: int, answers: dict[str, list[tuple[dict[str, str], float]]]) -> None:
        self.by_time[(hour + HOUR_NS) / 1e9] = answers

    def query(self, promql: str, at_s: float) -> list[tuple[dict[str, str], float]]:
        return next((v for k, v in self.by_time.get(at_s, {}).items() if k in promql), [])


def file_rows(store: Store, table: str) -> list[tuple[Any, ...]]:
    return sorted(store.query(f"SELECT * FROM {table}").rows(), key=repr)


def lake_rows(lake: LakeStore, table: str) -> list[tuple[Any, ...]]:
    rows = scan(lake, table).drop_columns(["hour"])
    return sorted((tuple(r.values()) for r in rows.to_pylist()), key=repr)


def both(db: Store, lake: LakeProducts, answers: Answers, units: wu.WorkUnits, hours: list[int]) -> int:
    """The same import into the file and the lake; returns the rows the lake wrote."""
    wu.import_hours(db, answers, units, hours)
    qu.import_queue_hours(db, answers, QUEUES, hours)
    written = wu.import_hours(lake, answers, units, hours).written
    qu.import_queue_hours(lake, answers, QUEUES, hours)
    return written


def test_an_import_into_the_lake_replaces_hours_as_the_file_does(tmp_path: Path) -> None:
    units = wu.parse_work_units('[[unit]]\nname = "tokens"\nquery = "tok"\nper = 1000000\n'
                                '[[unit]]\nname = "steps"\nquery = "step"\n')
    answers = Answers()
    inf = {"namespace": "inf", "pod": "llm-0"}
    answers.at(HOUR, {"tok": [(inf, 10.0), ({**inf, "pod": "llm-1", "cluster": "eu"}, 5.0)], "step": [(inf, 3.0)],
                      "nominal_quota": [({"cluster_queue": "cq-ml"}, 2.0)],
                      "wait_time_seconds_bucket": [({"cluster_queue": "cq-ml", "le": "+Inf"}, 4.0)]})
    config = LakeConfig(f"sqlite:///{tmp_path}/catalog.db", str(tmp_path / "warehouse"), unavailable_s=0.5)
    lake = LakeStore(config)
    products = LakeProducts(lake)
    with Store(tmp_path / "w.duckdb") as db:
        assert both(db, products, answers, units, [HOUR + 5]) == 3
        want = {t: file_rows(db, t) for t in ("work_units", "queue_hourly")}
        assert len(want["work_units"]) == 3 and len(want["queue_hourly"]) == 2
        assert {t: lake_rows(lake, t) for t in want} == want
        snapshots = {t: lake.snapshot_id(t) for t in want}
        # the same range again: the same rows, and not even a new snapshot
        assert both(db, products, answers, units, [HOUR]) == 0
        assert {t: lake.snapshot_id(t) for t in want} == snapshots
        assert {t: lake_rows(lake, t) for t in want} == {t: file_rows(db, t) for t in want} == want
        # an overlapping range with new counts: replaced, never doubled; an hour Prometheus has nothing for: no rows
        answers.at(HOUR, {"tok": [(inf, 12.0)], "step": [(inf, 3.0)],
                          "nominal_quota": [({"cluster_queue": "cq-ml"}, 2.0)]})
        answers.at(HOUR + HOUR_NS, {"tok": [(inf, 7.0)]})
        assert both(db, products, answers, units, [HOUR, HOUR + HOUR_NS, HOUR + 2 * HOUR_NS]) == 3
        got = {t: file_rows(db, t) for t in want}
        assert [r[1:] for r in got["work_units"]] == [
            (None, "inf", "llm-0", "steps", 3.0), (None, "inf", "llm-0", "tokens", 12.0),
            (None, "inf", "llm-0", "tokens", 7.0)]
        assert {t: lake_rows(lake, t) for t in want} == got
        # one unit imported alone replaces that unit's hour only
        answers.at(HOUR, {"tok": [(inf, 20.0)], "step": []})
        wu.import_hours(db, answers, wu.WorkUnits(None, units.units[:1]), [HOUR])
        wu.import_hours(products, answers, wu.WorkUnits(None, units.units[:1]), [HOUR])
        assert [r[4:] for r in file_rows(db, "work_units")] == [("steps", 3.0), ("tokens", 20.0), ("tokens", 7.0)]
        assert lake_rows(lake, "work_units") == file_rows(db, "work_units")


def test_units_import_refuses_lake_with_db(tmp_path: Path, capsys: Any) -> None:
    from gpuledger.cli import main

    assert main(["units", "import", "--db", str(tmp_path / "w.duckdb"), "--lake", f"sqlite:///{tmp_path}/c.db",
                 "--warehouse", str(tmp_path / "wh"), "--prometheus-url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "error: --lake and --db do not go together" in err and "hint: drop --db" in err
    assert not (tmp_path / "c.db").exists()  # refused before anything was opened


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[str]:
    binary = need_binary("prometheus", "/usr/bin/prometheus", hint="apt-get install prometheus, or "
                         "scripts/system-deps.sh as root")
    with promserver.TextExporter(lambda: VLLM_METRICS + KUEUE_METRICS) as exporter, \
            promserver.prometheus(binary, [exporter.target], tmp_path / "prom",
                                  ready_query="kueue_admission_wait_time_seconds_bucket") as url:
        yield url


def lake_app(lake: Lake, rep: Any) -> Any:
    """The app `gpuledger serve --lake` builds (cli/serve.py), with the work units and queues configured."""
    return create_app(rep.path, tokens=SqlTokens(lake.meta.engine), token_version=lake.meta.token_version,
                      health=rep.health, work_units=UNITS, queues=QUEUES)


@pytest.mark.external
@pytest.mark.slow  # a real Prometheus, a lake, a replica and two servers (~10 s on the loaded 2-core VM)
def test_a_lake_replica_serves_imported_units_and_queues_as_serve_db(tmp_path: Path, prometheus: str,
                                                                     capsys: Any) -> None:
    hour = time.time_ns() // HOUR_NS * HOUR_NS  # the hour the scrapes are in
    month = time.strftime("%Y-%m", time.gmtime(hour / 1e9))
    db = tmp_path / "w.duckdb"
    with Store(db) as store:  # llm-0 busy 30 min and held idle 30 min; the tenant ml busy an hour; nlp's pod too
        write_ledger(store, [
            {**row("inf", K.BUSY, 1800, seq=1, start_ns=hour, energy_j=2.4e6), "pod": "llm-0"},
            {**row("inf", K.ALLOCATED_IDLE, 1800, seq=1, start_ns=hour, energy_j=1.2e6), "pod": "llm-0"},
            {**row("ml", K.BUSY, 3600, seq=1, gpu=1, start_ns=hour), "pod": "train-0"},
            {**row("nlp", K.BUSY, 3600, seq=1, gpu=2, start_ns=hour), "pod": "llm-1"}])
        rebuild_hourly(store)
    lake = make_lake(tmp_path / "lake", db)  # the ledger's rollups (and tokens) into the lake, as migrate does
    try:
        products = LakeProducts(lake.store)
        prom = wu.PrometheusHTTP(prometheus)
        with Store(lake.db) as store:
            file_units = wu.import_hours(store, prom, UNITS, [hour])
            file_queues = qu.import_queue_hours(store, prom, QUEUES, [hour])
            want = {t: file_rows(store, t) for t in ("work_units", "queue_hourly")}
        lake_units = wu.import_hours(products, prom, UNITS, [hour])
        assert (lake_units.rows, lake_units.written) == (file_units.rows, 3)
        assert qu.import_queue_hours(products, prom, QUEUES, [hour]) == file_queues > 0
        assert {t: lake_rows(lake.store, t) for t in want} == want
        again = {t: lake.store.snapshot_id(t) for t in want}
        assert wu.import_hours(products, prom, UNITS, [hour]).written == 0  # re-import: nothing new
        qu.import_queue_hours(products, prom, QUEUES, [hour])
        assert {t: lake.store.snapshot_id(t) for t in want} == again
        assert {t: lake_rows(lake.store, t) for t in want} == want

        rep = replica(lake, "cache")
        paths = [f"/v1/units?month={month}", f"/v1/queues?month={month}"]
        with serving(lake_app(lake, rep)) as on_lake, \
                serving(create_app(lake.db, work_units=UNITS, queues=QUEUES)) as on_file:
            for token in (lake.admin, lake.tenant):
                for path in paths:
                    got, expected = (c.get(path, headers=bearer(token)) for c in (on_lake, on_file))
                    assert got.status_code == expected.status_code == 200, (path, got.text)
                    assert got.content == expected.content, path
            units = on_lake.get(paths[0], headers=bearer(lake.admin)).json()["rows"]
            assert {(r["unit"], r["pod"], r["count"]) for r in units} >= {("tokens", "llm-0", 2_000_000.0)}
            assert {q["cluster_queue"] for q in on_lake.get(paths[1], headers=bearer(lake.admin)).json()["queues"]} \
                == {"cq-cv", "cq-ml"}
            mine = on_lake.get(paths[0], headers=bearer(lake.tenant)).json()["rows"]
            assert {r["tenant"] for r in mine} <= {"nlp"}

        # the command: the last complete hour into the lake (nothing was scraped then: no rows, and an error-free run)
        from gpuledger.cli import main

        assert main(["units", "import", "--kueue", "--lake", lake.config.catalog_uri, "--warehouse",
                     lake.config.warehouse, "--prometheus-url", prometheus]) == 0
        err = capsys.readouterr().err
        assert f"into the lake {lake.config.warehouse}" in err
        assert {t: lake_rows(lake.store, t) for t in want} == want  # the current hour's rows stay
    finally:
        lake.meta.close()


def test_rows_are_compared_as_multisets() -> None:
    from gpuledger.store.lake.products import _same_rows

    target = pa.schema([("a", pa.string()), ("n", pa.float64()), ("hour", pa.timestamp("us", "UTC"))])
    have = pa.table({"a": ["x", "x", "y"], "n": [1.0, 1.0, None], "hour": pa.array([0, 0, 0], pa.timestamp("us", "UTC"))})
    same = pa.table({"a": ["y", "x", "x"], "n": [None, 1.0, 1.0], "hour": pa.array([0, 0, 0], pa.timestamp("us", "UTC"))})
    once = pa.table({"a": ["y", "x", "z"], "n": [None, 1.0, 1.0], "hour": pa.array([0, 0, 0], pa.timestamp("us", "UTC"))})
    assert _same_rows(have, [same], target) and not _same_rows(have, [once], target)
    assert not _same_rows(have, [same.slice(0, 2)], target)


def test_an_import_lost_to_a_concurrent_commit_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = LakeConfig(f"sqlite:///{tmp_path}/catalog.db", str(tmp_path / "warehouse"), unavailable_s=0.5)
    lake = LakeStore(config)
    products = LakeProducts(lake)
    answers = Answers()
    answers.at(HOUR, {"tok": [({"namespace": "inf", "pod": "llm-0"}, 10.0)]})
    answers.at(HOUR + HOUR_NS, {"tok": [({"namespace": "inf", "pod": "llm-0"}, 4.0)]})
    units = wu.parse_work_units('[[unit]]\nname = "tokens"\nquery = "tok"\n')
    stale = lake.table("work_units").refresh()
    wu.import_hours(LakeProducts(LakeStore(config)), answers, units, [HOUR + HOUR_NS])  # another import first
    real, calls = lake.table, []

    class FirstStale:
        def refresh(self) -> Any:
            calls.append(1)
            return stale if len(calls) == 1 else real("work_units").refresh()

    monkeypatch.setattr(lake, "table", lambda name: FirstStale())
    assert wu.import_hours(products, answers, units, [HOUR]).written == 1
    assert lake.conflicts == 1 and len(calls) == 2  # refused on the stale table, redone on the refreshed one
    monkeypatch.undo()
    assert [r[4:] for r in lake_rows(lake, "work_units")] == [("tokens", 10.0), ("tokens", 4.0)]
