"""Retention: raw samples of the current and previous billing month stay; older
attributed raw data goes; the ledger and anything not yet attributed stay."""

from __future__ import annotations

import datetime as dt

import pytest

from gpuledger import wire
from gpuledger.analytics.job import run_attribution
from gpuledger.ingest.batch import decode_batch
from gpuledger.ingest.retention import cutoff_ns, enforce_retention
from gpuledger.store import Store
from tests.support.factories import make_message


def ns(y: int, m: int, d: int) -> int:
    return int(dt.datetime(y, m, d, tzinfo=dt.UTC).timestamp()) * 10**9


@pytest.mark.parametrize(("now", "months", "want"), [
    ((2026, 11, 22), 2, (2026, 10, 1)),
    ((2026, 1, 1), 2, (2025, 12, 1)),
    ((2026, 3, 31), 1, (2026, 3, 1)),
    ((2026, 3, 15), 15, (2025, 1, 1)),
])
def test_cutoff_is_the_start_of_the_oldest_kept_utc_month(now: tuple[int, int, int], months: int,
                                                         want: tuple[int, int, int]) -> None:
    assert cutoff_ns(ns(*now), months) == ns(*want)


def test_old_attributed_raw_data_goes_the_ledger_and_unattributed_data_stay() -> None:
    store = Store()
    days = [(2026, 8, 31), (2026, 9, 30), (2026, 10, 1), (2026, 11, 20)]
    msgs = [make_message(seq=i, start_ns=ns(*d)) for i, d in enumerate(days)]
    store.write_arrow(decode_batch([wire.encode(m) for m in msgs]).tables)
    run_attribution(store)
    ledger_before = store.count("ledger")
    late = make_message(seq=99, start_ns=ns(2026, 9, 15))  # arrived after attribution: not in the ledger yet
    store.write_arrow(decode_batch([wire.encode(late)]).tables)

    result = enforce_retention(store, months=2, now_ns=ns(2026, 11, 22))
    assert (result.messages_deleted, result.kept_unattributed) == (2, 1)
    assert result.rows_deleted == 2 * 4 * 2  # 2 messages x 4 tables x 2 GPUs
    assert sorted(store.query("SELECT seq FROM messages")["seq"].to_list()) == [2, 3, 99]
    assert store.count("devices") == 3 * 2
    assert store.count("ledger") == ledger_before  # the ledger is kept
    assert enforce_retention(store, months=2, now_ns=ns(2026, 11, 22)).messages_deleted == 0
