"""The showback summed in DuckDB (``views.SqlRows``) answers what the Polars path answers.

The route sums in DuckDB so a month of a large fleet never loads into memory;
this compares it with the Polars path (``read_rows`` + ``with_dimensions`` +
``costed``) on a simulated fleet with MIG, time-slicing and every agent
quirk, attributed with a ledger window (older hours are rollups only): every
grouping, granularity and filter, row for row.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from polars.testing import assert_frame_equal

from gpuledger.analytics.prices import default_price_book
from gpuledger.api import views
from gpuledger.api.params import Filters, Period
from gpuledger.api.reader import Database, Session
from gpuledger.sim import scenarios as simscenarios
from gpuledger.sim.accuracy import simulate
from gpuledger.sim.fleetsim import FleetSim, demo_fleet
from gpuledger.sim.spec import Quirks
from gpuledger.timeutil import from_ns

H = 3 * 3600.0


@pytest.fixture(scope="module")
def session() -> Session:
    store = simulate(demo_fleet(1, 8, seed=9, horizon_s=H, quirks=Quirks(missing_sample_rate=0.05, gpu_lost=True)),
                     tick_s=60.0, horizon_s=H)
    mig = simulate(FleetSim(simscenarios.mig_mix(6, H), seed=6), tick_s=60.0, horizon_s=H)
    for table in ("ledger", "ledger_hourly"):  # one store, two nodes' worth of rollups and ledger
        store.append(table, mig.query(f"SELECT * FROM {table}"))
    # Hours before the newest one exist only as rollups (a ledger window of an hour).
    newest = store.scalar("SELECT max(hour_start_ns) FROM ledger_hourly")
    store.execute("DELETE FROM ledger WHERE interval_start_ns < ?", [newest])
    store.execute("INSERT INTO ledger_window (id, kept_from_ns) VALUES (0, ?)", [newest])
    return Session(Database(None, store))


def _period(s: Session, cut: bool) -> Period:
    lo, hi = s.query("SELECT min(hour_start_ns) AS lo, max(hour_start_ns) AS hi FROM ledger_hourly").row(0)
    start, end = from_ns(lo), from_ns(hi) + timedelta(hours=1)
    return Period(start + timedelta(minutes=20), end - timedelta(minutes=7)) if cut else Period(start, end)


@pytest.mark.parametrize("by,granularity,filters,cut", [
    (["tenant"], None, {}, False),
    (["tenant", "model"], "hour", {}, True),
    (["namespace", "workload"], "day", {}, False),
    (["gpu", "sharing", "profile"], None, {"model": ("NVIDIA H100 80GB HBM3",)}, True),
    (["cluster", "node", "pod"], "month", {}, False),
    (["namespace"], "hour", {"node": ("mig-node",), "kind": ("busy", "allocated_idle")}, False),
])
def test_the_showback_summed_in_duckdb_is_the_polars_showback(session: Session, by: list[str],
                                                             granularity: str | None, filters: dict[str, tuple[str, ...]],
                                                             cut: bool) -> None:
    period, book, f = _period(session, cut), default_price_book(), Filters(dict(filters))
    nodes = f.values.get("node", ())
    polars_rows = views.with_dimensions(views.read_rows(session, period, nodes, hourly=True), granularity)
    want = views.showback_rows(polars_rows, book, by, f, granularity)
    sql_rows = views.SqlRows.of(session, period, nodes, granularity)
    got = views.showback_rows(sql_rows, book, by, f, granularity)
    assert want.height > 0
    assert_frame_equal(got.select(want.columns), want, check_dtypes=False, rel_tol=1e-9)
    assert sql_rows.data_span(period, f) == views.data_span(views.apply_filters(polars_rows, f), period)
