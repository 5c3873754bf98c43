"""Retention in three tiers: raw samples, then the interval-grain ledger, then
hourly rollups -- each goes only after the tier that summarises it has it, and
a retired month's closed bill is never corrected from an emptied ledger."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gpuledger import wire
from gpuledger.analytics import closing
from gpuledger.analytics.hourly import mark_hours, refresh_hourly
from gpuledger.analytics.job import run_attribution
from gpuledger.analytics.prices import default_price_book
from gpuledger.analytics.reconcile import reconcile
from gpuledger.api.app import create_app
from gpuledger.errors import GpuledgerError
from gpuledger.ingest.batch import decode_batch
from gpuledger.ingest.retention import enforce_retention
from gpuledger.store import Store
from tests.support.factories import make_message
from tests.support.live_server import serving

BOOK = default_price_book()
NOW = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)


def ns(y: int, m: int, d: int = 1, h: int = 0) -> int:
    return int(dt.datetime(y, m, d, h, tzinfo=dt.UTC).timestamp()) * 10**9


def now_ns() -> int:
    return int(NOW.timestamp()) * 10**9


def write(store: Store, seq: int, start_ns: int, **kw: object) -> None:
    store.write_arrow(decode_batch([wire.encode(make_message(seq=seq, start_ns=start_ns, **kw))]).tables)  # type: ignore[arg-type]


def month_rows(store: Store, table: str, column: str, y: int, m: int) -> int:
    lo, hi = ns(y, m), ns(y + (m == 12), m % 12 + 1)
    return int(store.scalar(f"SELECT count(*) FROM {table} WHERE {column} >= ? AND {column} < ?", [lo, hi]))


@pytest.fixture
def store() -> Store:
    s = Store()
    for i, (y, m) in enumerate([(2025, 7), (2025, 8), (2025, 9), (2025, 10), (2026, 11)]):
        write(s, i, ns(y, m, 3, 5))
        write(s, 100 + i, ns(y, m, 20, 17))
    run_attribution(s)
    for month in ("2025-07", "2025-08", "2025-10"):  # 2025-09 is never closed
        closing.export(s, month, BOOK, final=True, now=NOW)
    return s


def test_only_closed_rolled_up_months_without_raw_samples_lose_their_ledger(store: Store) -> None:
    write(store, 50, ns(2025, 10, 9))  # late raw sample of October, not attributed yet
    mark_hours(store, [ns(2025, 7, 20, 17)])  # a July hour whose rollup a crashed job left pending
    rollups_before = store.count("ledger_hourly")
    august = month_rows(store, "ledger_hourly", "hour_start_ns", 2025, 8)
    assert august == month_rows(store, "ledger", "interval_start_ns", 2025, 8) > 0  # one interval per hour here

    res = enforce_retention(store, months=2, now_ns=now_ns(), ledger_months=13, rollup_months=36)

    assert res.kept_unattributed == 1 and res.messages_deleted == 8
    assert res.ledger_months_retired == ["2025-08"]
    assert set(res.ledger_kept) == {"2025-07", "2025-09", "2025-10"}
    assert "not rolled up" in res.ledger_kept["2025-07"]
    assert "not closed" in res.ledger_kept["2025-09"]
    assert "raw samples" in res.ledger_kept["2025-10"]
    assert month_rows(store, "ledger", "interval_start_ns", 2025, 8) == 0
    assert month_rows(store, "ledger", "interval_start_ns", 2025, 9) > 0
    assert res.ledger_rows_deleted == store.scalar("SELECT ledger_rows FROM ledger_retired WHERE month = '2025-08'")
    assert store.count("ledger_hourly") == rollups_before  # every rollup stays (36 months)
    assert month_rows(store, "ledger_hourly", "hour_start_ns", 2025, 8) == august
    # Running it again changes nothing.
    again = enforce_retention(store, months=2, now_ns=now_ns(), ledger_months=13, rollup_months=36)
    assert (again.messages_deleted, again.ledger_rows_deleted, again.rollup_rows_deleted) == (0, 0, 0)
    # A retired month's hours are never recomputed from its emptied ledger: they keep their rollups.
    hour = ns(2025, 8, 3, 5)
    refreshed = refresh_hourly(store, [hour])  # also recomputes July's pending hour
    assert refreshed.retired_pending == [hour] and refreshed.hours == 1
    assert month_rows(store, "ledger_hourly", "hour_start_ns", 2025, 8) == august
    # July is rolled up now: the next run retires it.
    assert enforce_retention(store, months=2, now_ns=now_ns()).ledger_months_retired == ["2025-07"]


def test_a_retired_month_is_not_corrected_by_the_next_open_month(store: Store) -> None:
    before = closing.export(store, "2026-11", BOOK, now=NOW)
    assert set(before.corrections) == {"2025-07", "2025-08", "2025-10"}  # each closed month checked...
    assert not any(before.corrections.values())  # ...and nothing changed since the closes
    res = enforce_retention(store, months=2, now_ns=now_ns(), ledger_months=13, rollup_months=36)
    assert res.ledger_months_retired == ["2025-07", "2025-08", "2025-10"]
    after = closing.export(store, "2026-11", BOOK, now=NOW)
    # Recomputing them from their emptied ledger would credit each whole bill back; they are final instead.
    assert after.corrections == {} and after.expected_corrections == {}
    assert after.content == before.content
    stored = closing.export(store, "2025-08", BOOK, now=NOW)
    assert stored.closed  # the closed file is still served, byte for byte


def test_rollups_go_only_after_their_ledger(store: Store) -> None:
    later = int(dt.datetime(2028, 9, 5, tzinfo=dt.UTC).timestamp()) * 10**9  # rollup cut: 2025-10-01
    july_august = sum(month_rows(store, "ledger_hourly", "hour_start_ns", 2025, m) for m in (7, 8))
    res = enforce_retention(store, months=2, now_ns=later, ledger_months=13, rollup_months=36)
    # July: closed, rolled up, retired, then its rollups go; September's ledger was never closed, so it stays.
    assert "2025-07" in res.ledger_months_retired and "2025-08" in res.ledger_months_retired
    assert month_rows(store, "ledger_hourly", "hour_start_ns", 2025, 7) == 0
    assert month_rows(store, "ledger_hourly", "hour_start_ns", 2025, 8) == 0
    assert month_rows(store, "ledger_hourly", "hour_start_ns", 2025, 9) > 0
    assert "ledger" in res.rollup_kept["2025-09"]
    assert res.rollup_rows_deleted == july_august
    assert month_rows(store, "ledger_hourly", "hour_start_ns", 2026, 11) > 0


def test_forever_keeps_the_tier_and_tiers_must_nest(store: Store) -> None:
    res = enforce_retention(store, months=2, now_ns=now_ns(), ledger_months=0, rollup_months=0)
    assert res.ledger_cutoff_ns is None and res.ledger_months_retired == []
    with pytest.raises(GpuledgerError, match="must nest"):
        enforce_retention(store, months=3, ledger_months=2)
    with pytest.raises(GpuledgerError, match="must nest"):
        enforce_retention(store, months=2, ledger_months=0, rollup_months=24)


def test_full_reattribution_keeps_the_ledger_of_months_without_raw_samples(store: Store) -> None:
    before = {m: month_rows(store, "ledger", "interval_start_ns", *m) for m in [(2025, 7), (2026, 11)]}
    total = store.scalar("SELECT sum(gpu_seconds) FROM ledger")
    enforce_retention(store, months=2, now_ns=now_ns(), ledger_months=0, rollup_months=0)
    assert store.scalar("SELECT count(*) FROM messages WHERE interval_start_ns < ?", [ns(2026, 10)]) == 0

    run_attribution(store, full=True)

    after = {m: month_rows(store, "ledger", "interval_start_ns", *m) for m in before}
    assert after == before and all(after.values())  # the ledger rows of every month, kept
    assert store.scalar("SELECT sum(gpu_seconds) FROM ledger") == pytest.approx(total, rel=1e-12)


@pytest.mark.slow
def test_the_api_answers_a_retired_month_from_its_rollups(tmp_path: Path) -> None:
    path = tmp_path / "g.duckdb"
    with Store(path) as s:
        for seq, day in enumerate((3, 9, 20)):
            write(s, seq, ns(2025, 8, day, 5), n_gpus=2)
        run_attribution(s)
        closing.export(s, "2025-08", BOOK, final=True, now=NOW)
    august = {"start": "2025-08-01", "end": "2025-09-01", "group_by": "tenant,node,gpu"}
    days = {**august, "granularity": "day"}

    def answers() -> tuple[dict[str, Any], dict[str, Any]]:
        with serving(create_app(str(path), auth=False)) as api:
            month, daily = api.get("/v1/showback", params=august), api.get("/v1/showback", params=days)
            assert month.status_code == daily.status_code == 200, month.text
            return month.json(), daily.json()

    def drilled() -> list[dict[str, Any]]:
        with serving(create_app(str(path), auth=False)) as api:
            r = api.get("/v1/drilldown", params={"start": "2025-08-01", "end": "2025-09-01", "limit": 1000})
            assert r.status_code == 200, r.text
            return r.json()["rows"]

    before, rows_before = answers(), drilled()
    assert rows_before and {r["grain"] for r in rows_before} == {"interval"}
    assert before[0]["rows"] and float(before[0]["total_cost"]) > 0
    with Store(path) as s:
        rec_before = reconcile(s, "2025-08", BOOK, now=NOW)
        assert enforce_retention(s, months=2, now_ns=now_ns()).ledger_months_retired == ["2025-08"]
        assert month_rows(s, "ledger", "interval_start_ns", 2025, 8) == 0
        # The reconciliation of the retired month: as closed, no drift (not "everything credited back").
        rec = reconcile(s, "2025-08", BOOK, now=NOW)
    assert rec_before.ok and rec_before.drift == 0
    assert rec.ok and rec.drift is None and "retired" in rec.text()
    assert (rec.fleet_cost, rec.billed_total, rec.tenants) == (rec_before.fleet_cost, rec_before.billed_total,
                                                               rec_before.tenants)
    assert rec.coverage == pytest.approx(rec_before.coverage, rel=1e-9)
    assert abs(rec.capacity_gpu_hours - rec_before.capacity_gpu_hours) <= Decimal("0.00001")  # 6-decimal rows
    after = answers()
    # Every figure of the month and of its days, read from the hourly rollups now.
    for a, b in zip(after, before):
        assert a == b, (a, b)
    # The drill-down says it is hourly now, and still adds up to the month.
    rows_after = drilled()
    assert rows_after and {r["grain"] for r in rows_after} == {"hour"}
    assert len(rows_after) <= len(rows_before)  # one row per hour and group (here one interval an hour)
    for field in ("gpu_seconds", "energy_j"):
        assert sum(r[field] or 0 for r in rows_after) == pytest.approx(sum(r[field] or 0 for r in rows_before), rel=1e-9)


def test_the_api_reads_a_file_written_before_ledger_retired_existed(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    with Store(path) as s:
        write(s, 0, ns(2025, 8, 3, 5), n_gpus=2)
        run_attribution(s)
        s.execute("DROP TABLE ledger_retired")  # as an older gpuledger left it; the API opens read-only
    with serving(create_app(str(path), auth=False)) as api:
        r = api.get("/v1/showback", params={"start": "2025-08-01", "end": "2025-09-01"})
        assert r.status_code == 200, r.text
        assert r.json()["rows"]
