"""A closed month as the close tables hold it: one close row and one billed row (the metadata stores' tests)."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from gpuledger.store import Store


def a_close(month: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One close row and one billed row, in the DuckDB tables' columns (read back from a real file)."""
    with Store(":memory:") as store:
        store.execute("INSERT INTO chargeback_closes VALUES (?, ?, 'month', 'USD', '10.00', '10.00', '0', '10.00', 1, "
                      "?, 'aa', ?, 'bb', '{}')", [month, datetime(2026, 11, 1, tzinfo=UTC), b"csv,bytes\n", b"PAR1"])
        store.execute("INSERT INTO chargeback_billed VALUES (?, ?, NULL, '2026-10-01T00:00:00Z', '2026-11-01T00:00:00Z', "
                      "'nlp', 'H100', '', 'used', 'e1', 'GPU-hour', '2.5', false, 'exclusive', '10.00', '4', '4', NULL, "
                      "NULL, NULL, NULL, 'default')", [month, month])
        return store.query("SELECT * FROM chargeback_closes"), store.query("SELECT * FROM chargeback_billed")
