"""The lake's side of attribution by shard (SQLite catalog, local warehouse): which (hour, node) pairs have messages
added since a snapshot, from the files those snapshots added; and rollups replaced per (hour, nodes), idempotently,
redone on the refreshed table when a concurrent writer committed first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

pytest.importorskip("pyiceberg", reason="the lake extra is not installed (pip install -e '.[test]')")

from pyiceberg.table import Table  # noqa: E402

from gpuledger.store.lake import LakeConfig, LakeStore, lake_schema, scan  # noqa: E402
from gpuledger.store.lake.schema import HOUR_COLUMN  # noqa: E402
from gpuledger.store.lake.shards import LakeRun, LakeShards  # noqa: E402
from gpuledger.timeutil import HOUR_NS  # noqa: E402
from tests.support.ingest_runs import stream  # noqa: E402


def lake_at(tmp: Path) -> LakeStore:
    return LakeStore(LakeConfig(f"sqlite:///{tmp}/catalog.db", str(tmp / "warehouse")))


def pairs(table: pa.Table) -> set[tuple[int, str]]:
    return set(zip(table["hour_start_ns"].to_pylist(), table["node"].to_pylist(), strict=True))


def rollup(hour: int, node: str, gpu_seconds: float = 1.0) -> pa.Table:
    """One ledger_hourly row (the DuckDB table's columns) of ``node`` in ``hour``."""
    fields = [f for f in lake_schema("ledger_hourly").as_arrow() if f.name != HOUR_COLUMN]
    sample: dict[Any, Any] = {pa.string(): "x", pa.large_string(): "x", pa.int64(): 1, pa.int32(): 1,
                              pa.float64(): gpu_seconds}
    row = {f.name: [sample[f.type]] for f in fields}
    row.update(hour_start_ns=[hour], node=[node])
    return pa.table(row, schema=pa.schema(fields))


def test_new_messages_are_found_in_the_files_added_since_the_recorded_snapshot(tmp_path: Path) -> None:
    lake = lake_at(tmp_path)
    shards = LakeShards(lake)
    msgs = stream(3, nodes=3, n_gpus=1)
    lake.write_messages([m for m in msgs if m.node != "node-2"])
    first = shards.messages_snapshot()
    lake.write_messages([m for m in msgs if m.node == "node-2"])
    now = shards.messages_snapshot()
    assert first is not None and now is not None and now != first
    hour = {m.interval_start_ns // HOUR_NS * HOUR_NS for m in msgs}
    assert pairs(shards.touched(first, now)) == {(h, "node-2") for h in hour}
    assert pairs(shards.touched(None, now)) == {(h, f"node-{n}") for h in hour for n in range(3)}
    assert shards.touched(now, now).num_rows == 0
    assert pairs(shards.touched(12345, now)) == pairs(shards.touched(None, now))  # not in the lineage: everything
    assert pairs(shards.nodes_in(sorted(hour), first)) == {(h, f"node-{n}") for h in hour for n in range(2)}


def test_rollups_are_replaced_per_hour_and_nodes_and_the_run_is_recorded(tmp_path: Path) -> None:
    lake = lake_at(tmp_path)
    shards = LakeShards(lake)
    h = 1_700_000_000 // 3600 * HOUR_NS
    shards.replace([(h, ["a", "b"], pa.concat_tables([rollup(h, "a"), rollup(h, "b")])),
                    (h + HOUR_NS, ["a"], rollup(h + HOUR_NS, "a"))])
    shards.replace([(h, ["a"], rollup(h, "a", 2.0))])  # a re-run of (h, a) only
    shards.replace([(h, ["a"], rollup(h, "a", 2.0))])  # again: the same rows
    got = scan(lake, "ledger_hourly").sort_by([("hour_start_ns", "ascending"), ("node", "ascending")])
    assert list(zip(got["hour_start_ns"].to_pylist(), got["node"].to_pylist(), got["gpu_seconds"].to_pylist(),
                    strict=True)) == [(h, "a", 2.0), (h, "b", 1.0), (h + HOUR_NS, "a", 1.0)]
    assert got[HOUR_COLUMN].cast(pa.int64()).to_pylist() == [h // 1000, h // 1000, (h + HOUR_NS) // 1000]
    assert shards.last_run() == LakeRun(None, None)
    shards.record_run(LakeRun(42, "rules-1"))
    assert LakeShards(lake_at(tmp_path)).last_run() == LakeRun(42, "rules-1")


def test_a_booking_lost_to_a_concurrent_commit_is_redone_on_the_refreshed_table(tmp_path: Path) -> None:
    lake = lake_at(tmp_path)
    shards = LakeShards(lake)
    h = 1_700_000_000 // 3600 * HOUR_NS
    shards.replace([(h, ["a"], rollup(h, "a"))])
    stale = lake.table("ledger_hourly").refresh()
    LakeShards(lake_at(tmp_path)).replace([(h + HOUR_NS, ["b"], rollup(h + HOUR_NS, "b"))])  # another writer first
    real, calls = shards._rollups, []

    def stale_once() -> Table:
        calls.append(1)
        return stale if len(calls) == 1 else real()

    shards._rollups = stale_once  # type: ignore[method-assign]
    shards.replace([(h, ["a"], rollup(h, "a", 3.0))])
    assert lake.conflicts == 1 and len(calls) == 2
    got = scan(lake, "ledger_hourly")
    assert sorted(zip(got["node"].to_pylist(), got["gpu_seconds"].to_pylist(), strict=True)) == [("a", 3.0), ("b", 1.0)]
