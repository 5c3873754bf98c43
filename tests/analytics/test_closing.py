"""Month close and corrections: a closed file never changes; late usage is billed once, later."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuledger.analytics import closing
from gpuledger.analytics import kinds as K
from gpuledger.analytics.focus import ExportContext
from gpuledger.analytics.focus_rules import check_rows
from gpuledger.analytics.hourly import rebuild_hourly
from gpuledger.analytics.prices import default_price_book
from gpuledger.analytics.reconcile import reconcile
from gpuledger.store import Store
from gpuledger.timeutil import month_bounds, to_ns
from tests.support.chargeback_rows import HOUR_NS, billed, book, parse, random_ledgers, row

OCT = to_ns(datetime(2026, 10, 1, tzinfo=UTC))
NOV = to_ns(datetime(2026, 11, 1, tzinfo=UTC))
DEC = to_ns(datetime(2026, 12, 1, tzinfo=UTC))
AFTER_NOV = datetime(2026, 12, 2, tzinfo=UTC)  # "now" once November has ended
BOOK = default_price_book()  # H100 2.99 USD per GPU-hour


def write(store: Store, rows: list[dict[str, Any]]) -> None:
    book(store, rows)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with Store(tmp_path / "close.duckdb") as s:
        write(s, [row("ml", K.BUSY, 1800, seq=0, start_ns=OCT), row("", K.UNALLOCATED, 1800, seq=0, start_ns=OCT),
                  row("ml", K.BUSY, 3600, seq=1, start_ns=NOV)])
        yield s


def test_a_closed_month_re_exports_the_identical_bytes(store: Store) -> None:
    first = closing.export(store, "2026-10", BOOK, final=True, now=AFTER_NOV)
    assert first.closed and billed(first.content.decode()) == Decimal("2.99")
    write(store, [row("late", K.BUSY, 3600, seq=9, gpu=1, start_ns=OCT + HOUR_NS)])  # arrives after the close
    for final in (False, True):
        again = closing.export(store, "2026-10", BOOK, final=final, now=AFTER_NOV)
        assert again.closed and again.content == first.content and again.sha256 == first.sha256
    parquet = closing.export(store, "2026-10", BOOK, fmt="parquet", now=AFTER_NOV)
    assert parquet.content == first.files["parquet"]
    with pytest.raises(closing.ExportError, match="closed with charge period 'month'") as err:
        closing.export(store, "2026-10", BOOK, context=ExportContext(charge_period="day"))
    assert "--charge-period month" in err.value.hint


def test_late_data_becomes_correction_rows_in_the_next_open_month(store: Store) -> None:
    october = closing.export(store, "2026-10", BOOK, final=True, now=AFTER_NOV).content
    # An agent's spool replays an hour of October for tenant "late" on a second H100.
    write(store, [row("late", K.BUSY, 3600, seq=9, gpu=1, start_ns=OCT + HOUR_NS)])
    november = closing.export(store, "2026-11", BOOK, now=AFTER_NOV)
    out = parse(november.content.decode())
    regular = [r for r in out if not r["ChargeClass"]]
    fixes = [r for r in out if r["ChargeClass"] == "Correction"]
    assert [(r["SubAccountId"], r["BilledCost"]) for r in regular] == [("ml", "2.99")]
    assert [(r["SubAccountId"], r["BilledCost"], r["PricingQuantity"], r["ChargePeriodStart"], r["ChargePeriodEnd"],
             r["BillingPeriodStart"], r["x_CorrectedPeriod"]) for r in fixes] == [
        ("late", "2.99", "1.000000", "2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z", "2026-11-01T00:00:00Z",
         "2026-10")]
    assert "Correction to 2026-10" in fixes[0]["ChargeDescription"]
    assert november.corrections == november.expected_corrections == {"2026-10": Decimal("2.99")}
    assert closing.export(store, "2026-10", BOOK, now=AFTER_NOV).content == october  # untouched
    header = list(out[0])
    assert check_rows(out, header) == []
    # Closing November bills the difference once: December has no correction left.
    closing.export(store, "2026-11", BOOK, final=True, now=AFTER_NOV)
    december = closing.export(store, "2026-12", BOOK, now=datetime(2027, 1, 2, tzinfo=UTC))
    assert parse(december.content.decode()) == []
    report = reconcile(store, "2026-10", BOOK)
    assert report.ok and report.drift == 0 and report.closed


def test_a_tenancy_change_after_close_moves_money_between_tenants(store: Store) -> None:
    closing.export(store, "2026-10", BOOK, final=True, now=AFTER_NOV)
    store.execute("UPDATE ledger SET tenant = 'vision' WHERE tenant = 'ml'")  # a corrected rule, re-attributed
    rebuild_hourly(store)  # as `gpuledger attribute --full` does
    fixes = [r for r in parse(closing.export(store, "2026-11", BOOK, now=AFTER_NOV).content.decode())
             if r["ChargeClass"]]
    # 2.99 over two equal halves is 1.495 each: the tie's spare cent goes to the first line by name, which
    # was ml (before platform) and is now platform (before vision), so platform's line moves by a cent too.
    assert sorted((r["SubAccountId"], r["BilledCost"], r["PricingQuantity"]) for r in fixes) == [
        ("ml", "-1.50", "-0.500000"), ("platform", "0.01", "0.000000"), ("vision", "1.49", "0.500000")]
    assert sum(Decimal(r["BilledCost"]) for r in fixes) == 0


def test_a_month_cannot_close_before_it_ends_or_read_only(store: Store, tmp_path: Path) -> None:
    with pytest.raises(closing.ExportError, match="has not ended") as err:
        closing.export(store, "2026-11", BOOK, final=True, now=datetime(2026, 11, 30, 23, tzinfo=UTC))
    assert "without --final" in err.value.hint
    assert closing.closed_months(store) == {}
    store.close()
    with Store(tmp_path / "close.duckdb", read_only=True) as ro:
        assert closing.export(ro, "2026-10", BOOK, now=AFTER_NOV).closed is False  # preview works read-only
        with pytest.raises(closing.ExportError, match="read-only"):
            closing.export(ro, "2026-10", BOOK, final=True, now=AFTER_NOV)


def test_day_charge_periods_sum_to_the_same_month(store: Store) -> None:
    write(store, [row("ml", K.BUSY, 3600, seq=3, start_ns=OCT + 24 * HOUR_NS + 5)])
    month = closing.export(store, "2026-10", BOOK, now=AFTER_NOV)
    day = closing.export(store, "2026-10", BOOK, context=ExportContext(charge_period="day"), now=AFTER_NOV)
    rows = parse(day.content.decode())
    assert {(r["ChargePeriodStart"], r["ChargePeriodEnd"]) for r in rows} == {
        ("2026-10-01T00:00:00Z", "2026-10-02T00:00:00Z"), ("2026-10-02T00:00:00Z", "2026-10-03T00:00:00Z")}
    assert billed(day.content.decode()) == billed(month.content.decode()) == Decimal("5.98")
    assert check_rows(rows, list(rows[0])) == []


def test_reconciliation_fails_loudly_when_a_closed_file_was_tampered_with(store: Store) -> None:
    closing.export(store, "2026-10", BOOK, final=True, now=AFTER_NOV)
    report = reconcile(store, "2026-10", BOOK)
    assert report.ok, report.problems
    assert report.billed_total == report.fleet_cost == Decimal("2.99") and report.unallocated_cost == Decimal("1.49")
    store.execute("UPDATE chargeback_closes SET csv = ?::BLOB WHERE month = '2026-10'",
                  [b"BilledCost\r\n1000000.00\r\n"])
    bad = reconcile(store, "2026-10", BOOK)
    assert not bad.ok and "RECONCILIATION FAILED" in bad.text()
    assert any("SHA-256" in p for p in bad.problems)


def test_months_to_close_waits_for_the_grace_period(store: Store) -> None:
    assert closing.months_to_close(store, datetime(2026, 12, 1, 5, tzinfo=UTC), grace_hours=6) == ["2026-10"]
    assert closing.months_to_close(store, datetime(2026, 12, 1, 6, tzinfo=UTC), grace_hours=6) == \
        ["2026-10", "2026-11"]
    assert closing.resolve_month("previous", datetime(2027, 1, 5, tzinfo=UTC)) == "2026-12"


# --- the property: whatever arrives late, each closed month is billed exactly its cost, once ---


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_ledgers(), st.data())
def test_late_rows_are_billed_exactly_once_as_corrections(case: Any, data: st.DataObject) -> None:
    rows, _ = case  # March 2025 usage
    # Late data arrives per message (attribution books a message's rows in one transaction): a set of seqs.
    seqs = sorted({r["seq"] for r in rows})
    late_seqs = data.draw(st.sets(st.sampled_from(seqs)))
    late = {i for i, r in enumerate(rows) if r["seq"] in late_seqs}
    renamed = data.draw(st.booleans())  # and maybe a tenancy rule change after the close
    april = to_ns(datetime(2025, 4, 1, tzinfo=UTC))
    with Store() as store:
        write(store, [r for i, r in enumerate(rows) if i not in late])
        write(store, [row("apr", K.BUSY, 3600, seq=999, start_ns=april)])
        march = closing.export(store, "2025-03", BOOK, final=True, now=datetime(2025, 4, 2, tzinfo=UTC))
        write(store, [r for i, r in enumerate(rows) if i in late])
        if renamed:
            store.execute("UPDATE ledger SET tenant = 'renamed' WHERE tenant = 'ml'")
            rebuild_hourly(store)
        now = datetime(2025, 5, 2, tzinfo=UTC)
        cost_now = reconcile(store, "2025-03", BOOK, now=now).fleet_cost
        closing.export(store, "2025-04", BOOK, final=True, now=now)
        billed_for_march = store.scalar("SELECT sum(cost::DECIMAL(38, 2)) FROM chargeback_billed "
                                        "WHERE usage_month = '2025-03'")
        assert Decimal(billed_for_march or 0) == cost_now
        assert closing.export(store, "2025-03", BOOK).content == march.content
        for month in ("2025-03", "2025-04"):
            report = reconcile(store, month, BOOK, now=now)
            assert report.ok, report.problems
        may = closing.export(store, "2025-05", BOOK, now=datetime(2025, 6, 2, tzinfo=UTC))
        assert may.rows == []  # nothing left to correct


# --- the command line ------------------------------------------------------------------


def test_cli_closes_writes_files_and_reconciles(store: Store, tmp_path: Path, capsys: Any) -> None:
    from gpuledger.cli import main

    db = str(tmp_path / "close.duckdb")
    store.close()
    out = tmp_path / "exports"
    out.mkdir()
    base = ["export", "chargeback", "--month", "2026-10", "--db", db, "--out", str(out)]
    assert main(["export", "chargeback", "--month", "2026-10", "--db", db, "--focus-version", "1.2"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split(",")  # an open month, in the version asked
    assert "ProviderName" in header and "AllocatedMethodId" not in header
    assert main(base + ["--final", "--force"]) == 0  # the fixture books 1 GPU-hour of October: --force
    closed = (out / "gpuledger-chargeback-2026-10.csv").read_bytes()
    assert b"AllocatedMethodId" in closed.split(b"\r\n")[0]  # 1.4 by default
    err = capsys.readouterr().err
    assert "closed, sha256" in err and err.rstrip().endswith("idle policy holder")
    assert main(base + ["--format", "parquet"]) == 0 and (out / "gpuledger-chargeback-2026-10.parquet").exists()
    assert main(["export", "chargeback", "--month", "2026-10", "--db", db]) == 0
    assert capsys.readouterr().out.encode() == closed  # stdout: the same closed bytes
    assert main(["export", "reconciliation", "--month", "2026-10", "--db", db]) == 0
    assert capsys.readouterr().out.strip().endswith("RECONCILIATION PASSED")
    assert main(["export", "reconciliation", "--month", "2026-11", "--db", db, "--format", "json"]) == 0
    assert '"ok": true' in capsys.readouterr().out
    with Store(db) as s:  # tamper with the closed file: the report must fail, with exit code 1
        s.execute("UPDATE chargeback_closes SET csv_sha256 = 'x' WHERE month = '2026-10'")
    assert main(["export", "reconciliation", "--month", "2026-10", "--db", db]) == 1
    assert "reconciliation of 2026-10 failed" in capsys.readouterr().err
    assert main(["export", "chargeback", "--month", "2999-01", "--db", db, "--final"]) == 2
    assert "has not ended" in capsys.readouterr().err


def test_the_serve_closer_closes_due_months_and_waits_for_the_writer(store: Store, tmp_path: Path) -> None:
    from gpuledger.analytics.export_cmd import MonthCloser

    store.close()
    db = tmp_path / "close.duckdb"
    closer = MonthCloser(db, BOOK, ExportContext(), grace_hours=6,
                         clock=lambda: datetime(2026, 12, 1, 7, tzinfo=UTC),
                         min_capacity=0)  # the fixture's months are far below the fleet: tested below
    with Store(db):  # a writer holds the file: the close is postponed, not failed
        assert closer.run_once() == []
    assert closer.run_once() == ["2026-10", "2026-11"]
    assert closer.run_once() == []
    with Store(db, read_only=True) as ro:
        assert sorted(closing.closed_months(ro)) == ["2026-10", "2026-11"]


def test_the_cronjob_runs_commands_the_cli_accepts() -> None:
    import shlex

    from gpuledger.cli import build_parser
    from gpuledger.config import Settings
    from tests.support.chart import render

    manifest = render()["CronJob/gpuledger-month-close"]  # the Helm chart's (deploy/helm/gpuledger)
    assert manifest["spec"]["schedule"] == "0 6 1 * *"
    (container,) = manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    script = container["args"][0]
    commands = [shlex.split(c.strip()) for c in script.split(";") if c.strip().startswith("gpuledger")]
    assert len(commands) == 3 and "--final" in commands[0]
    parser = build_parser(Settings())
    for argv in commands:
        args = parser.parse_args(argv[1:])
        assert args.command == "export" and args.month == "previous"


@pytest.mark.parametrize("month", ["２０２６-１０", "2026-１０", "٢٠٢٦-10", "2026-10 ", " 2026-10", "2026-1", "26-10"])
def test_a_month_is_ascii_yyyy_mm_before_any_lookup(store: Store, month: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        closing.resolve_month(month)
    with pytest.raises(ValueError, match="YYYY-MM"):  # int() took full-width digits: a second key for one month
        closing.export(store, month, BOOK, final=True, now=AFTER_NOV)
    assert closing.closed_months(store) == {}


def test_a_month_out_of_range_says_so() -> None:
    with pytest.raises(ValueError, match=r"'9999-12' is out of range: months run 0001-01\.\.9999-11"):
        month_bounds("9999-12")  # was "year 10000 is out of range", a year nobody asked for
    with pytest.raises(ValueError, match="MM 01..12"):
        month_bounds("2026-13")
    assert month_bounds("9999-11")[1] == datetime(9999, 12, 1, tzinfo=UTC)


def test_cli_final_cannot_close_a_month_under_a_full_width_key(store: Store, tmp_path: Path, capsys: Any) -> None:
    from gpuledger.cli import main

    db = str(tmp_path / "close.duckdb")
    store.close()
    assert main(["export", "chargeback", "--month", "２０２６-１０", "--db", db, "--final", "--out", str(tmp_path)]) == 2
    assert "YYYY-MM" in capsys.readouterr().err
    assert main(["export", "chargeback", "--month", "2026-10", "--db", db, "--final", "--force",
                 "--out", str(tmp_path)]) == 0
    with Store(db, read_only=True) as s:
        assert list(closing.closed_months(s)) == ["2026-10"]  # one close of October, under its ASCII key


def test_a_month_without_data_fails_loudly_instead_of_an_empty_bill(store: Store, tmp_path: Path, capsys: Any) -> None:
    """Issue 15: a scheduled close or reconciliation must not go green while ingest is dead."""
    from gpuledger.cli import main

    db = str(tmp_path / "close.duckdb")
    store.close()
    for what in (["chargeback"], ["chargeback", "--final"], ["reconciliation"]):
        out = tmp_path / f"{what[0]}.out"
        assert main(["export", what[0], "--month", "2025-01", "--db", db, "--out", str(out), *what[1:]]) == 2
        err = capsys.readouterr().err
        assert "no data for 2025-01" in err and "ingest" in err and "hint:" in err
        assert not out.exists()
    with Store(db, read_only=True) as s:
        assert "2025-01" not in closing.closed_months(s)  # nothing was closed


def test_a_close_far_below_the_fleets_capacity_is_refused_unless_forced(store: Store, tmp_path: Path,
                                                                         capsys: Any) -> None:
    """Issue 15: the fixture's GPU booked 1 of October's 744 hours (ingest down the rest of the month):
    `--final` refuses, naming the figures, with a hint; `--final --force` closes it."""
    from gpuledger.cli import main

    db = str(tmp_path / "close.duckdb")
    store.close()
    args = ["export", "chargeback", "--month", "2026-10", "--db", db, "--final", "--out", str(tmp_path / "oct.csv")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "capacity far below the fleet: 2026-10 has 1.0 GPU-hours of capacity, 0% of the 744.0 GPU-hours" in err
    assert "hint:" in err and "--force" in err
    assert not (tmp_path / "oct.csv").exists()
    with Store(db, read_only=True) as s:
        assert closing.closed_months(s) == {}
    assert main(["export", "chargeback", "--month", "2026-10", "--db", db]) == 0  # a preview is not refused
    capsys.readouterr()
    assert main([*args, "--force"]) == 0
    with Store(db, read_only=True) as s:
        assert list(closing.closed_months(s)) == ["2026-10"]


def test_a_month_booked_in_full_closes_and_a_gpu_added_mid_month_is_expected_only_from_then(tmp_path: Path) -> None:
    from gpuledger.analytics.export_cmd import capacity_shortfall

    mid = to_ns(datetime(2026, 10, 16, tzinfo=UTC))
    with Store(tmp_path / "full.duckdb") as s:
        write(s, [row("ml", K.BUSY, 744 * 3600 * 0.6, seq=0, start_ns=OCT),  # GPU 0: all of October
                  row("", K.UNALLOCATED, 744 * 3600 * 0.4, seq=0, start_ns=OCT),
                  row("ml", K.BUSY, 16 * 24 * 3600, seq=1, start_ns=mid, gpu=1)])  # GPU 1: from the 16th
        assert capacity_shortfall(s, "2026-10") is None
        # November: GPU 1 stops reporting on the 2nd while GPU 0 books the month: 720 + 24 of 1,440 h
        write(s, [row("ml", K.BUSY, 720 * 3600, seq=2, start_ns=NOV),
                  row("ml", K.BUSY, 24 * 3600, seq=3, start_ns=NOV, gpu=1)])
        assert capacity_shortfall(s, "2026-11") is None  # 52 %: not far below
        assert capacity_shortfall(s, "2026-11", min_share=0.6) is not None
        # December: nothing booked for GPU 0 after the 1st hour: far below
        write(s, [row("ml", K.BUSY, 3600, seq=4, start_ns=DEC)])
        short = capacity_shortfall(s, "2026-12")
        assert short is not None and "the 2 GPUs seen in 2026-12 or the month before" in short


def test_the_serve_closer_does_not_close_a_month_far_below_the_fleet(store: Store, tmp_path: Path,
                                                                       caplog: Any) -> None:
    from gpuledger.analytics.export_cmd import MonthCloser

    store.close()
    db = tmp_path / "close.duckdb"
    closer = MonthCloser(db, BOOK, ExportContext(), grace_hours=6, clock=lambda: datetime(2026, 12, 1, 7, tzinfo=UTC))
    assert closer.run_once() == []
    assert "month close of 2026-10 refused: capacity far below the fleet" in caplog.text
    with Store(db, read_only=True) as ro:
        assert closing.closed_months(ro) == {}
