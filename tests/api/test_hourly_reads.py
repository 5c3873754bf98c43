"""Hour-or-coarser answers read the hourly rollups where they are current, and
answer exactly what the interval-grain ledger gives."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from gpuledger.analytics.job import run_attribution
from gpuledger.api import views
from gpuledger.api.app import create_app
from gpuledger.api.params import Period
from gpuledger.api.reader import Database, Session
from gpuledger.store import Store
from gpuledger.timeutil import HOUR_NS
from tests.support.demo_data import START, build_demo_db
from tests.support.live_server import serving

pytestmark = pytest.mark.slow  # every test reads the module's demo file (simulated hours, built once)

#: Whole and cut periods, every grouping and bucket the hour-grain reads serve.
REQUESTS: list[tuple[str, dict[str, str]]] = [
    ("/v1/showback", {"start": "2026-10-01", "end": "2026-10-03", "group_by": "tenant"}),
    ("/v1/showback", {"start": "2026-10-01T18:30:00Z", "end": "2026-10-02T02:15:00Z",
                      "group_by": "tenant,node,gpu", "granularity": "hour"}),
    ("/v1/showback", {"start": "2026-10-01", "end": "2026-10-03", "group_by": "namespace,workload",
                      "granularity": "day"}),
    ("/v1/showback", {"start": "2026-10-01", "end": "2026-10-03", "group_by": "sharing,model", "tenant": "vision"}),
    ("/v1/series/showback", {"start": "2026-10-01", "end": "2026-10-03", "group_by": "tenant",
                             "granularity": "hour"}),
    ("/v1/efficiency", {"start": "2026-10-01", "end": "2026-10-03", "group_by": "tenant,node"}),
    ("/v1/efficiency/top-wasters", {"start": "2026-10-01T19:10:00Z", "end": "2026-10-03"}),
]
PERIOD = Period(dt.datetime(2026, 10, 1, tzinfo=dt.UTC), dt.datetime(2026, 10, 3, tzinfo=dt.UTC))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_db(tmp_path_factory.mktemp("hourly") / "demo.duckdb")


def answers(path: Path) -> list[Any]:
    out = []
    with serving(create_app(str(path), auth=False)) as api:
        for url, params in REQUESTS:
            r = api.get(url, params=params)
            assert r.status_code == 200, (url, r.text)
            body = r.json()
            assert body["rows"] if isinstance(body, dict) else body, (url, params)  # something to compare
            out.append(body)
    return out


def rows(path: Path, hourly: bool = True) -> pl.DataFrame:
    s = Session(Database(path, None))
    try:
        return views.read_rows(s, PERIOD, hourly=hourly).collect()
    finally:
        s.close()


def ledger_only(demo: Path, tmp_path: Path) -> Path:
    """A copy whose rollups are gone and every hour pending: readers must use the ledger."""
    path = tmp_path / "ledger-only.duckdb"
    shutil.copy(demo, path)
    with Store(path) as s:
        s.execute("DELETE FROM ledger_hourly")
        s.pend_ledger_hours()
    return path


def test_rollup_reads_answer_what_the_ledger_answers(demo: Path, tmp_path: Path) -> None:
    reference = ledger_only(demo, tmp_path)
    assert rows(reference).filter(pl.col("boot_id") == views.HOURLY_BOOT).is_empty()
    fast = rows(demo)
    hourly = fast.filter(pl.col("boot_id") == views.HOURLY_BOOT)
    # Nine simulated hours: the newest may still be filling and comes from the ledger, the rest
    # from the rollups, in far fewer rows.
    assert hourly["interval_start_ns"].n_unique() == 8
    assert START.timestamp() * 1e9 + 8 * HOUR_NS not in set(hourly["interval_start_ns"])
    assert fast.height < rows(demo, hourly=False).height / 4
    assert fast["gpu_seconds"].sum() == pytest.approx(rows(demo, hourly=False)["gpu_seconds"].sum(), rel=1e-12)
    assert answers(demo) == answers(reference)


def test_a_pending_hour_is_read_from_the_ledger(demo: Path, tmp_path: Path) -> None:
    path = tmp_path / "pending.duckdb"
    shutil.copy(demo, path)
    hour = int(START.timestamp()) * 10**9 + 3 * HOUR_NS
    with Store(path) as s:  # as after a crash between booking an hour's late data and its refresh
        s.execute("INSERT INTO ledger_hourly_pending VALUES (?)", [hour])
        s.execute("DELETE FROM ledger_hourly WHERE hour_start_ns = ? AND kind = 'busy'", [hour])  # now stale
    got = rows(path)
    assert hour not in set(got.filter(pl.col("boot_id") == views.HOURLY_BOOT)["interval_start_ns"])
    assert got.filter(pl.col("interval_start_ns").is_between(hour, hour + HOUR_NS - 1)).height > 100
    assert answers(path) == answers(demo)


def test_a_file_older_than_its_rollups_is_rolled_up_by_the_next_run(demo: Path, tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    shutil.copy(demo, path)
    want = answers(demo)
    with Store(path) as s:
        # as a gpuledger without rollups left the file (it recorded no migrations either)
        s.execute("DROP TABLE ledger_hourly; DROP TABLE schema_migrations")
    with Store(path) as s:  # a writer's open adds the table and marks every hour of the ledger pending
        assert s.count("ledger_hourly") == 0 and s.count("ledger_hourly_pending") == 9
    assert rows(path).filter(pl.col("boot_id") == views.HOURLY_BOOT).is_empty()
    assert answers(path) == want
    with Store(path) as s:
        run_attribution(s)
        assert s.count("ledger_hourly_pending") == 0 and s.count("ledger_hourly") > 0
    assert not rows(path).filter(pl.col("boot_id") == views.HOURLY_BOOT).is_empty()
    assert answers(path) == want
