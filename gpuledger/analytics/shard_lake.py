"""Attribution on the lake: shards read from the lake's raw Iceberg tables, their rollups booked into its ``ledger_hourly``.

:class:`LakeShardStore` is the lake as a :class:`~gpuledger.analytics.shards.ShardStore`;
:func:`run_lake_shards` runs every dirty shard of a lake. Nothing is copied
into a DuckDB file first: each shard's raw rows (one UTC hour x one node
group, a few MB) are read by Iceberg scans pruned to that hour's day
partition, interval range and nodes (:mod:`gpuledger.store.lake.shards`),
loaded into a throwaway in-memory DuckDB and coded by the same
:func:`~gpuledger.analytics.job.read_chunk` the embedded store uses, so the
kernel sees exactly the rows it sees there, and the rollups are the same
integers. Memory is bounded by the shards in flight, not by the lake.

Who reads: the worker that computes the shard (:class:`LakeShardReader`
travels to it: a LakeConfig, the tenancy rules and the ``messages`` snapshot
the run planned from -- not rows), in this process, a local pool or a Ray
task alike. Who books: this process, in shard order, one Iceberg commit per
batch of shards.

Dirty shards: those holding a message committed to the lake since the last
run (Iceberg's snapshot lineage, recorded on ``ledger_hourly``), all of them
on the first run, with ``full``, or when the tenancy rules' version differs
from the one the last run recorded. The lake keeps no interval-grain ledger:
rollups only (``explain`` recomputes intervals from raw).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from gpuledger.analytics.job import read_chunk
from gpuledger.analytics.ledger import Chunk
from gpuledger.analytics.shards import (
    DEFAULT_NODE_GROUPS,
    Executor,
    Shard,
    ShardOutput,
    ShardRunResult,
    book_shards,
    plan_shards,
)
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.store import Store
from gpuledger.store.lake import LakeConfig, LakeStore
from gpuledger.store.lake.shards import SHARD_TABLES, LakeRun, LakeShards
from gpuledger.wire import DEFAULT_CLUSTER

log = logging.getLogger(__name__)

__all__ = ["LakeShardReader", "LakeShardStore", "run_lake_shards"]

_PODS = "SELECT pod_uid, namespace, labels, name, coalesce(cluster, ?) AS cluster FROM pods"
_NO_PODS = pl.DataFrame(schema={"pod_uid": pl.String, "namespace": pl.String, "labels": pl.String})


@dataclass(frozen=True)
class LakeShardReader:
    """Reads one shard's rows from the lake where it is computed (picklable: sent to pool and Ray workers)."""

    config: LakeConfig
    rules: TenancyRules
    default_cluster: str
    snapshot: int  # the ``messages`` snapshot the run planned from: every worker reads the same messages

    def __call__(self, shard: Shard, nodes: tuple[str, ...]) -> tuple[pl.DataFrame, Chunk]:
        raw = _opened(self.config).raw(shard.hour_start_ns, nodes, self.snapshot)
        pods, pod_tenants = _pods(self.config, self.snapshot, self.rules, self.default_cluster)
        with Store(":memory:") as db:  # the shard's rows only: read_chunk codes them as in the DuckDB file
            db.append("pods", pods)
            for name in SHARD_TABLES:
                db.append(name, pl.from_arrow(raw[name]))  # type: ignore[arg-type]
            keys = db.query("SELECT agent_id, boot_id, seq, coalesce(cluster, ?) AS cluster FROM messages "
                            "ORDER BY interval_start_ns, agent_id, boot_id, seq", [self.default_cluster])
            jobs = db.query("SELECT DISTINCT slurm_job FROM processes WHERE slurm_job IS NOT NULL ORDER BY 1")
            # the tenant table of every pod (as the embedded store builds it) plus the shard's Slurm jobs
            tenants = pl.concat([pod_tenants, self.rules.tenant_table(_NO_PODS, jobs["slurm_job"].to_list())])
            return keys, read_chunk(db, keys, tenants.lazy())


def _opened(config: LakeConfig, lake: LakeStore | None = None) -> LakeShards:
    """The lake, opened once per process (a pool or Ray worker reads many shards); ``lake``: an open one to use."""
    if lake is not None and (config not in _lakes or _lakes[config].lake is not lake):
        _lakes[config] = LakeShards(lake)
    if config not in _lakes:
        _lakes[config] = LakeShards(LakeStore(config))
    return _lakes[config]


#: This process's open lakes, by configuration.
_lakes: dict[LakeConfig, LakeShards] = {}


def _pods(config: LakeConfig, snapshot: int, rules: TenancyRules,
          default_cluster: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Every pod's latest row and their tenants, read once per run and process (pods: a small table)."""
    key = (config, snapshot, repr(rules), default_cluster)  # TenancyRules holds dicts: keyed on its repr
    if key not in _pods_read:
        _pods_read.clear()
        frame = pl.from_arrow(_opened(config).pods())
        assert isinstance(frame, pl.DataFrame)
        with Store(":memory:") as db:
            db.append("pods", frame)
            _pods_read[key] = db.query("SELECT * FROM pods"), rules.tenant_table(db.query(_PODS, [default_cluster]))
    return _pods_read[key]


#: This process's pods of the current run (one entry): a pool or Ray worker reads many shards of one run.
_pods_read: dict[tuple[LakeConfig, int, str, str], tuple[pl.DataFrame, pl.DataFrame]] = {}


class LakeShardStore:
    """The lake as a :class:`~gpuledger.analytics.shards.ShardStore`: dirty shards, reads, bookings.

    ``finish()`` after every shard is booked records the run (the ``messages``
    snapshot read, the rules' version) so the next run starts from there; a
    run that failed records nothing, and its shards run again next time.
    """

    def __init__(self, config: LakeConfig, rules: TenancyRules, default_cluster: str = DEFAULT_CLUSTER,
                 lake: LakeStore | None = None) -> None:
        self.config, self.rules = config, rules
        self.lake = _opened(config, lake)
        self.snapshot = self.lake.messages_snapshot()
        self.last = self.lake.last_run()
        self.reader = LakeShardReader(config, rules, default_cluster, self.snapshot or 0)

    def rules_changed(self) -> bool:
        return self.last.messages_snapshot is not None and self.last.rules_version != self.rules.version

    def touched(self, full: bool) -> pl.DataFrame:
        if self.rules_changed():
            log.info("tenancy rules %s differ from the last run's (%s): every shard runs again", self.rules.version,
                     self.last.rules_version)
        since = None if full or self.rules_changed() else self.last.messages_snapshot
        return _frame(self.lake.touched(since, self.snapshot))

    def nodes_in(self, hours: Sequence[int]) -> pl.DataFrame:
        return _frame(self.lake.nodes_in(hours, self.snapshot))

    def read(self, shard: Shard, nodes: Sequence[str]) -> tuple[pl.DataFrame, Chunk]:
        return self.reader(shard, tuple(nodes))

    def book(self, outs: Sequence[ShardOutput]) -> None:
        self.lake.replace([(o.shard.hour_start_ns, o.nodes, o.rollups.to_arrow()) for o in outs])

    def finish(self) -> None:
        """Record this run, unless it is the run already recorded or the lake holds no message yet (then nothing
        is committed)."""
        run = LakeRun(self.snapshot, self.rules.version)
        if run != self.last and self.snapshot is not None:
            self.lake.record_run(run)
            self.last = run


def run_lake_shards(config: LakeConfig, rules: TenancyRules | None = None, *, groups: int = DEFAULT_NODE_GROUPS,
                    executor: Executor | None = None, full: bool = False,
                    progress: Callable[[int, int], None] | None = None, commit_messages: int = 5000,
                    default_cluster: str = DEFAULT_CLUSTER, lake: LakeStore | None = None) -> ShardRunResult:
    """Attribute every dirty shard of the lake ``config`` and book its rollups into the lake's ``ledger_hourly``.

    ``executor``: who reads and computes (default: this process; a
    :class:`~gpuledger.analytics.shards.ProcessPool`; a
    :class:`~gpuledger.analytics.shard_ray.RayExecutor`), each worker reading
    its shard from the lake; booking stays here. ``full``: every shard with raw
    messages. Returns the shards run, in booking order.
    """
    seam = LakeShardStore(config, rules or TenancyRules(), default_cluster, lake)
    result = book_shards(seam, plan_shards(seam, groups, full=full), executor=executor, progress=progress,
                         commit_messages=commit_messages, reader=seam.reader, ledger=False)
    seam.finish()
    return result


def _frame(rows: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(rows)
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(pl.col("hour_start_ns").cast(pl.Int64))
