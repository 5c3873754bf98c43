"""The importers' product tables in the lake: whole (hour, scope) parts of ``work_units`` and ``queue_hourly``.

:class:`LakeProducts` is the lake's :class:`~gpuledger.store.protocol.HourlyWriter`:
``gpuledger units import [--kueue] --lake ...`` writes through it what it
writes into a DuckDB file's tables otherwise (:meth:`gpuledger.store.Store.replace_hours`).

One call is **one Iceberg transaction** on the table: delete the parts' rows
(each part: its hour -- the ``month(hour)`` partition and ``hour_start_ns``
-- and its scope's columns, e.g. ``unit = 'tokens'``), append the new rows as
one data file (the lake-only ``hour`` column added). One file per call, not
one per hour as attribution's booking writes: each append in a pyiceberg
transaction costs a copy of the table metadata (measured 2026-12-07 on the
loaded 2-core VM, 24 hours x 2 units x 200 pods re-imported with new counts:
6.0 s with 24 appends, 1.0 s with one); the tables are small, so the
copy-on-write of a file a later import overlaps is cheap. So a re-import
of a range replaces it, an overlapping range replaces the overlap, and
nothing is ever doubled. A re-import that brings exactly the rows the lake
holds commits nothing (no snapshot: an API replica has nothing to read
again). A commit lost to a concurrent writer is redone from the refreshed
table, an unreachable lake retried: :meth:`LakeStore.replacing`, the loop
attribution's booking uses (:meth:`gpuledger.store.lake.shards.LakeShards.replace`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import pyarrow as pa
from pyiceberg.expressions import And, BooleanExpression, EqualTo
from pyiceberg.table import Table

from gpuledger.errors import StoreError
from gpuledger.store.lake.schema import HOUR_COLUMN
from gpuledger.store.lake.shards import _any, _hour_filter_rollups, conform_hour
from gpuledger.store.lake.writer import LakeStore

__all__ = ["IMPORTED_TABLES", "LakeProducts"]

#: The product tables the importers write (``ledger_hourly`` is attribution's: :class:`LakeShards`).
IMPORTED_TABLES = ("work_units", "queue_hourly")


class LakeProducts:
    """Replaces (hour, scope) parts of the lake's ``work_units`` and ``queue_hourly`` (module doc)."""

    def __init__(self, lake: LakeStore) -> None:
        self.lake = lake
        self.unchanged = 0  # calls whose rows the lake already held: nothing committed

    def replace_hours(self, table: str, parts: Sequence[tuple[int, Mapping[str, str], pa.Table]]) -> int:
        """Replace each part's rows by its rows in one commit; returns the rows written (0: already held)."""
        if table not in IMPORTED_TABLES:
            raise StoreError(f"lake table {table} is not an imported product table",
                             hint=f"the importers write {', '.join(IMPORTED_TABLES)}")
        if not parts:
            return 0
        drop = _any(_part_filter(hour, scope) for hour, scope, _ in parts)
        by_hour: dict[int, list[pa.Table]] = {}
        for hour, _, rows in parts:
            if rows.num_rows:
                by_hour.setdefault(hour, []).append(rows)
        written = 0

        def once(lake_table: Table) -> None:
            nonlocal written
            target = lake_table.schema().as_arrow()
            new = [conform_hour(pa.concat_tables(by_hour[h], promote_options="permissive"), target, h, table)
                   for h in sorted(by_hour)]
            if _same_rows(lake_table.scan(row_filter=drop).to_arrow(), new, target):
                written = 0
                return
            with warnings.catch_warnings():  # a first import deletes nothing: pyiceberg warns, nothing is wrong
                warnings.filterwarnings("ignore", "Delete operation did not match any records")
                with lake_table.transaction() as tx:
                    tx.delete(drop)
                    tx.append(pa.concat_tables(new))
            written = sum(r.num_rows for r in new)

        self.lake.replacing(table, f"importing into lake table {table}", once,
                            hint=f"another import is writing {table} at the same time: run one import at a time "
                            "(an hourly CronJob with concurrencyPolicy: Forbid)")
        if not written and by_hour:
            self.unchanged += 1
        return written


def _part_filter(hour_start_ns: int, scope: Mapping[str, str]) -> BooleanExpression:
    """One part's rows: its hour (month partition and ``hour_start_ns``) and its scope's columns."""
    expr = _hour_filter_rollups(hour_start_ns)
    for column, value in sorted(scope.items()):
        expr = And(expr, EqualTo(column, value))  # type: ignore[call-arg,misc,unused-ignore]
    return expr


def _same_rows(have: pa.Table, new: Sequence[pa.Table], target: pa.Schema) -> bool:
    """Whether the lake's rows of the parts are exactly the new rows (as multisets; the ``hour`` column aside)."""
    count = sum(t.num_rows for t in new)
    if have.num_rows != count:
        return False
    if count == 0:
        return True
    columns = [f.name for f in target if f.name != HOUR_COLUMN]
    order = [(c, "ascending") for c in columns]
    left = have.select(columns).cast(target.remove(target.get_field_index(HOUR_COLUMN))).sort_by(order)
    right = pa.concat_tables(new).select(columns).sort_by(order)
    return bool(left.equals(right.cast(left.schema)))
