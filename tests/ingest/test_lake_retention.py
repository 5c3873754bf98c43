"""Retention on the lake: whole day partitions of raw samples and month partitions of rollups are dropped
(Iceberg deletes that rewrite no data file), past the same tiers as the DuckDB file and behind the same
guards where the lake has the evidence: unattributed messages and unclosed months stay."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

pytest.importorskip("pyiceberg", reason="the lake extra is not installed (pip install -e '.[test]')")

from gpuledger.analytics.job import run_attribution  # noqa: E402
from gpuledger.analytics.shard_lake import run_lake_shards  # noqa: E402
from gpuledger.analytics.tenancy import TenancyRules  # noqa: E402
from gpuledger.ingest.lake_retention import enforce_lake_retention  # noqa: E402
from gpuledger.store import Store  # noqa: E402
from gpuledger.store.lake import LakeConfig, LakeStore, materialize, scan  # noqa: E402
from gpuledger.store.lake.meta import SqlMetadata  # noqa: E402
from gpuledger.store.lake.upkeep import partitions  # noqa: E402
from tests.support.closes import a_close  # noqa: E402
from tests.support.factories import make_message  # noqa: E402


def ns(y: int, m: int, d: int, h: int = 0) -> int:
    return int(dt.datetime(y, m, d, h, tzinfo=dt.UTC).timestamp()) * 10**9


NOW = ns(2026, 11, 22)
DAYS = [(2026, 8, 31), (2026, 9, 15), (2026, 9, 30), (2026, 10, 1), (2026, 11, 20)]  # cut-off (2 months): 10-01


def lake_at(tmp: Path) -> LakeStore:
    return LakeStore(LakeConfig(f"sqlite:///{tmp}/catalog.db", str(tmp / "warehouse")))


def seqs(lake: LakeStore, table: str = "messages") -> list[int]:
    return sorted(set(scan(lake, table)["seq"].to_pylist()))


def rollups_to_lake(store: Store, lake: LakeStore) -> None:
    """The file's hourly rollups appended to the lake's ledger_hourly (what `attribute --lake` will write)."""
    table = lake.table("ledger_hourly")
    rows = store.query("SELECT * FROM ledger_hourly").to_arrow()
    rows = rows.append_column("hour", pa.array(rows["hour_start_ns"].to_numpy() // 1000).cast(pa.timestamp("us", "UTC")))
    table.append(rows.select(table.schema().as_arrow().names).cast(table.schema().as_arrow()))


@pytest.mark.slow
def test_attributed_old_days_are_dropped_whole_and_an_unattributed_day_stays(tmp_path: Path) -> None:
    lake = lake_at(tmp_path)
    lake.write_messages([make_message(seq=i, start_ns=ns(*d)) for i, d in enumerate(DAYS)])
    store = Store(tmp_path / "gpuledger.duckdb")
    materialize(lake, store)
    run_attribution(store)
    lake.write_messages([make_message(seq=99, start_ns=ns(2026, 9, 15, 5))])  # late: not attributed yet

    res = enforce_lake_retention(lake, months=2, store=store, now_ns=NOW)
    assert res.days_dropped == ["2026-08-31", "2026-09-30"]
    assert res.days_kept == {"2026-09-15": f"1 messages not attributed in {store.path} (merge --lake, then attribute)"}
    assert seqs(lake) == [1, 3, 4, 99] and seqs(lake, "devices") == [1, 3, 4, 99]
    for name in ("messages", "devices", "processes", "allocations", "field_errors"):
        snap = lake.table(name).current_snapshot()
        assert snap is not None and snap.summary is not None
        summary = snap.summary.additional_properties
        # whole partitions: files removed from the manifests, none written
        assert snap.summary.operation.value == "delete", name
        assert int(summary["deleted-data-files"]) >= 2 and "added-data-files" not in summary, name
    assert res.files_removed >= 10 and res.rows_removed > 0
    assert [p.label for p in partitions(lake, "devices")] == ["2026-09-15", "2026-10-01", "2026-11-20"]

    materialize(lake, store)
    run_attribution(store)  # the late message attributed: its day may go now
    again = enforce_lake_retention(lake, months=2, store=store, now_ns=NOW)
    assert again.days_dropped == ["2026-09-15"] and not again.days_kept
    assert seqs(lake) == [3, 4]
    assert enforce_lake_retention(lake, months=2, store=store, now_ns=NOW).files_removed == 0  # idempotent


@pytest.mark.slow
def test_on_the_lake_alone_a_day_goes_once_the_lake_attribution_record_covers_every_message_of_it(tmp_path: Path) -> None:
    lake = lake_at(tmp_path)
    lake.write_messages([make_message(seq=i, start_ns=ns(*d)) for i, d in enumerate(DAYS)])
    none = enforce_lake_retention(lake, months=2, now_ns=NOW)  # no attribution run yet: nothing raw goes
    assert none.days_dropped == [] and sorted(none.days_kept) == ["2026-08-31", "2026-09-15", "2026-09-30"]
    assert "no attribution run is recorded on the lake" in none.days_kept["2026-08-31"]

    run_lake_shards(lake.config, lake=lake)
    lake.write_messages([make_message(seq=99, start_ns=ns(2026, 9, 15, 5))])  # late: not attributed yet
    pending = enforce_lake_retention(lake, months=2, rules_version="2027-01", now_ns=NOW)  # rules change pending
    assert pending.days_dropped == [] and "tenancy rules 2027-01 differ" in pending.days_kept["2026-09-15"]

    res = enforce_lake_retention(lake, months=2, rules_version=TenancyRules().version, now_ns=NOW)
    assert res.guard.startswith("the lake's attribution record")
    assert res.days_dropped == ["2026-08-31", "2026-09-30"]
    assert res.days_kept == {"2026-09-15": "holds messages added since the last attribution run (attribute --lake)"}
    assert seqs(lake) == [1, 3, 4, 99] and seqs(lake, "devices") == [1, 3, 4, 99]

    run_lake_shards(lake.config, lake=lake)  # the late message attributed (the drops above are not messages added)
    again = enforce_lake_retention(lake, months=2, now_ns=NOW)
    assert again.days_dropped == ["2026-09-15"] and not again.days_kept
    assert seqs(lake) == [3, 4]


def test_a_rollup_month_goes_only_when_the_lake_metadata_store_records_it_closed(tmp_path: Path) -> None:
    lake = lake_at(tmp_path)
    with Store() as store:
        store.write_messages([make_message(seq=i, start_ns=ns(*d)) for i, d in enumerate([(2023, 5, 10),
                                                                                       (2023, 6, 10), (2026, 11, 1)])])
        run_attribution(store)
        rollups_to_lake(store, lake)
    meta = SqlMetadata(lake.config.catalog_uri)  # the catalog's own database, as export --lake --final uses it
    meta.record_close(*a_close("2023-05"))
    assert meta.closed() == {"2023-05"}

    unknown = enforce_lake_retention(lake, months=2, now_ns=NOW)  # no closed month known: every month stays
    assert unknown.rollup_months_dropped == [] and sorted(unknown.rollup_kept) == ["2023-05", "2023-06"]

    res = enforce_lake_retention(lake, months=2, closed=meta.closed(), now_ns=NOW)
    assert res.rollup_months_dropped == ["2023-05"]
    assert res.rollup_kept == {"2023-06": "not closed (export --lake --final closes a month in the lake's metadata store)"}
    hours = sorted(set(scan(lake, "ledger_hourly")["hour_start_ns"].to_pylist()))
    assert hours == [ns(2023, 6, 10), ns(2026, 11, 1)]
    snap = lake.table("ledger_hourly").current_snapshot()
    assert snap is not None and snap.summary is not None and "added-data-files" not in snap.summary.additional_properties
    meta.close()


def test_a_rollup_month_goes_only_when_the_file_records_it_closed_and_holds_no_ledger_of_it(tmp_path: Path) -> None:
    lake = lake_at(tmp_path)
    months = [(2023, 5, 10), (2023, 6, 10), (2026, 11, 1)]
    store = Store(tmp_path / "gpuledger.duckdb")
    store.write_messages([make_message(seq=i, start_ns=ns(*d)) for i, d in enumerate(months)])
    run_attribution(store)
    rollups_to_lake(store, lake)
    store.execute("DELETE FROM ledger WHERE interval_start_ns < ?", [ns(2023, 6, 1)])  # retired by the file
    store.execute("INSERT INTO chargeback_closes SELECT m, now(), 'month', 'USD', '0', '0', '0', '0', 0, "
                  "''::BLOB, '', ''::BLOB, '', '{}' FROM (VALUES ('2023-05'), ('2023-06')) t(m)")

    res = enforce_lake_retention(lake, months=2, store=store, now_ns=NOW)
    assert res.rollup_months_dropped == ["2023-05"]
    assert res.rollup_kept == {"2023-06": f"its interval-grain ledger is still stored in {store.path}"}
    hours = sorted(set(scan(lake, "ledger_hourly")["hour_start_ns"].to_pylist()))
    assert hours == [ns(2023, 6, 10), ns(2026, 11, 1)]
