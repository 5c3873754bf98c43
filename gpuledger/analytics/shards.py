"""Attribution as shards: one UTC hour x one node group, attributed from raw and booked as a whole.

A **shard** is the messages whose interval starts in one UTC hour (the hour
a rollup row belongs to, ``hourly``) on the nodes of one **node group** --
the nodes whose name hashes into that bucket of ``groups`` (:func:`node_group`:
BLAKE2b of the name, stable across processes, machines and versions, unlike
DuckDB's or Python's ``hash``; a lake engine can compute it too). Running a shard reads its raw rows,
attributes them with the compiled kernel and computes its hourly rollups;
booking it *replaces* the shard -- its rollup rows, its interval-grain ledger
rows (inside the ledger window) and its messages' ``attributed`` keys -- in
one transaction, so a re-run books the same rows and a crash leaves the
shard as it was.

Why shards are independent: each message's ledger rows come from that
message alone (tests/analytics/test_job_window.py: bit-identical whatever
the chunking and arrival order). There is no per-GPU state carried from one
interval to the next: the agent sends each interval's energy as a counter
delta and its own sample-buffer cursor, so an hour needs no carry-in from
the hour before. A node group holds whole nodes, hence whole GPUs; an
interval straddling an hour boundary belongs to the hour it starts in, as
in the rollups and the bill.

Incremental: the shards run are those holding a message not yet attributed
(``full``: every shard with raw samples). Late data -- a spool replayed
hours later -- re-runs only the shards it falls in; the others are not read.

Who computes, who writes. The store seam is :class:`ShardStore`: which
(hour, node) pairs have work, "the raw rows of (hour, nodes)" and "book
these shards' results"; :func:`plan_shards` and :func:`book_shards` need
nothing else from a store (:func:`run_shards` wraps them for the DuckDB
file). Computing (:func:`attribute_shard`, a pure
function of the shard's coded rows) runs in this process, in a local
process pool or on Ray (:mod:`gpuledger.analytics.shard_ray`), behind
:class:`Executor`. Reading and booking stay in *this* process: a DuckDB file
has one writer, and while it holds the file no other process may open it,
so the workers get the rows they attribute as data and hand back rows to
book. Results are booked in shard order, so the file's contents do not
depend on which worker finished first.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import polars as pl

from gpuledger.analytics.hourly import hourly, refresh_hourly, replace_shard_rollups
from gpuledger.analytics.job import ChunkError, _kernel, _naming, _prune, _window_start, read_chunk, with_clusters
from gpuledger.analytics.ledger import MSG, Chunk
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.errors import GpuledgerError
from gpuledger.store import Store
from gpuledger.timeutil import HOUR_NS
from gpuledger.wire import DEFAULT_CLUSTER

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_NODE_GROUPS",
    "DuckShardStore",
    "Executor",
    "InProcess",
    "ProcessPool",
    "Shard",
    "ShardError",
    "ShardInput",
    "ShardOutput",
    "ShardReader",
    "ShardRunResult",
    "ShardStore",
    "ShardTask",
    "attribute_shard",
    "book_shards",
    "node_group",
    "plan_shards",
    "read_and_attribute_shard",
    "run_shards",
    "shard_rollups",
]

#: Node groups per hour unless configured (``attribute_node_groups``): 8 shards an hour keep a pool or a
#: small Ray cluster busy, and a 1,000-GPU fleet's shard at ~125 GPUs x 360 intervals stays a few MB of rows.
DEFAULT_NODE_GROUPS = 8


def node_group(node: str, groups: int) -> int:
    """The node group of ``node``: the first 8 bytes of the BLAKE2b of its UTF-8 name, big-endian, modulo ``groups``.

    Stable everywhere, and well mixed: CRC-32 is linear, so its low bits put
    names that differ in one digit (``node-0``, ``node-2``, ...) into the same
    bucket of a power of two.
    """
    if groups < 1:
        raise ValueError(f"node groups must be at least 1, got {groups}")
    return int.from_bytes(hashlib.blake2b(node.encode(), digest_size=8).digest(), "big") % groups


@dataclass(frozen=True, order=True)
class Shard:
    hour_start_ns: int
    group: int

    def __str__(self) -> str:
        return f"hour {self.hour_start_ns} group {self.group}"


@dataclass(frozen=True)
class ShardInput:
    """A shard's raw rows as the kernel reads them: the nodes it covers, its message keys, the coded chunk."""

    shard: Shard
    nodes: tuple[str, ...]
    keys: pl.DataFrame  # agent_id, boot_id, seq, cluster; in (interval_start_ns, agent_id, boot_id, seq) order
    chunk: Chunk
    keep_ledger: bool  # inside the ledger window: the interval-grain rows are booked too


@dataclass(frozen=True)
class ShardOutput:
    """What booking a shard needs: its rollup rows, and its ledger rows when they are kept."""

    shard: Shard
    nodes: tuple[str, ...]
    keys: pl.DataFrame
    rollups: pl.DataFrame  # hourly(): one row per rollup key, sorted
    ledger: pl.DataFrame | None  # None: the hour is outside the ledger window
    ledger_rows: int


def attribute_shard(work: ShardInput) -> ShardOutput:
    """Attribute one shard and roll it up: a pure function of its rows (runs in any process, on any machine)."""
    ledger = with_clusters(_kernel(work.chunk), work.keys)  # every row in its message's cluster
    return ShardOutput(work.shard, work.nodes, work.keys, shard_rollups(ledger),
                       ledger if work.keep_ledger else None, ledger.height)


def shard_rollups(ledger: pl.DataFrame) -> pl.DataFrame:
    """:func:`hourly` of the shard's ledger rows.

    The rollups sum exact integers (``analytics/exact.py``), so the same
    shard gives the same bytes in any process, pool or Ray worker, in any
    row order and after any re-run. A shard holds whole GPU-hours (a node
    group holds whole nodes), so each GPU-hour's capacity is carried on its
    first row as the chunk job carries it.
    """
    return hourly(ledger.lazy()).collect()


class ShardStore(Protocol):
    """What the shard runner needs from a store; the embedded one is :class:`DuckShardStore`."""

    def touched(self, full: bool) -> pl.DataFrame:
        """(hour_start_ns, node) of every hour and node with a pending message (``full``: with any raw message)."""
        ...

    def nodes_in(self, hours: Sequence[int]) -> pl.DataFrame:
        """(hour_start_ns, node) of every node with raw messages in these hours."""
        ...

    def read(self, shard: Shard, nodes: Sequence[str]) -> tuple[pl.DataFrame, Chunk]:
        """The raw rows of (hour, nodes): the message keys with each message's cluster (the default cluster where
        it names none), in order, and the coded chunk the kernel reads."""
        ...

    def book(self, outs: Sequence[ShardOutput]) -> None:
        """Replace each shard's rollups (and interval rows, and message keys) by its output, in one transaction."""
        ...


class ShardReader(Protocol):
    """Reads a shard's rows where it is computed (a picklable callable: it travels to pool and Ray workers)."""

    def __call__(self, shard: Shard, nodes: tuple[str, ...]) -> tuple[pl.DataFrame, Chunk]: ...


@dataclass(frozen=True)
class ShardTask:
    """A shard whose worker reads its rows itself (a store every worker can reach, such as the lake)."""

    reader: ShardReader
    shard: Shard
    nodes: tuple[str, ...]
    keep_ledger: bool


def read_and_attribute_shard(task: ShardTask) -> ShardOutput:
    """Read the shard through its reader and attribute it; a failure is a ChunkError naming the shard."""
    keys, chunk = task.reader(task.shard, task.nodes)
    try:
        return _computed(ShardInput(task.shard, task.nodes, keys, chunk, task.keep_ledger))
    except ChunkError as exc:
        raise ChunkError(f"shard {task.shard} (nodes {', '.join(task.nodes)}): {exc}") from exc


class ShardError(GpuledgerError):
    """A shard that cannot be booked without losing what it holds."""


class DuckShardStore:
    """The embedded DuckDB file as a :class:`ShardStore` (this process is its single writer)."""

    def __init__(self, store: Store, rules: TenancyRules, kept_from: int | None,
                 default_cluster: str = DEFAULT_CLUSTER) -> None:
        self.store, self.rules, self.kept_from, self.default_cluster = store, rules, kept_from, default_cluster
        jobs = store.query("SELECT DISTINCT slurm_job FROM processes WHERE slurm_job IS NOT NULL ORDER BY 1")
        pods = store.query("SELECT pod_uid, namespace, labels, name, coalesce(cluster, ?) AS cluster FROM pods",
                           [default_cluster])
        self.tenants = rules.tenant_table(pods, jobs["slurm_job"].to_list()).lazy()

    def touched(self, full: bool) -> pl.DataFrame:
        pending = "" if full else "ANTI JOIN attributed USING (agent_id, boot_id, seq)"
        return self.store.query(f"SELECT DISTINCT interval_start_ns - interval_start_ns % {HOUR_NS} AS hour_start_ns, "
                                f"node FROM messages {pending} ORDER BY ALL")

    def nodes_in(self, hours: Sequence[int]) -> pl.DataFrame:
        return self.store.query(f"SELECT DISTINCT interval_start_ns - interval_start_ns % {HOUR_NS} AS hour_start_ns, "
                                "node FROM messages WHERE interval_start_ns - interval_start_ns % "
                                f"{HOUR_NS} IN (SELECT unnest(?::BIGINT[])) ORDER BY ALL", [list(hours)])

    def read(self, shard: Shard, nodes: Sequence[str]) -> tuple[pl.DataFrame, Chunk]:
        span = [shard.hour_start_ns, shard.hour_start_ns + HOUR_NS, list(nodes)]
        lost = self.store.query(
            "SELECT node FROM ledger_hourly WHERE hour_start_ns = ? AND node IN (SELECT unnest(?::VARCHAR[])) "
            "EXCEPT SELECT node FROM messages SEMI JOIN attributed USING (agent_id, boot_id, seq) "
            "WHERE interval_start_ns >= ? AND interval_start_ns < ? AND node IN (SELECT unnest(?::VARCHAR[]))",
            [shard.hour_start_ns, list(nodes), *span])
        if lost.height:
            raise ShardError(f"shard {shard}: node(s) {', '.join(sorted(lost['node']))} have rollups booked from "
                             "raw samples no longer stored (retention): re-running the shard would drop them",
                             hint="the hour's raw samples are gone; its pending messages cannot be booked by shard "
                             "(run `gpuledger attribute` without --shards to add them to the rollups)")
        keys = self.store.query("SELECT agent_id, boot_id, seq, coalesce(cluster, ?) AS cluster FROM messages "
                                "WHERE interval_start_ns >= ? AND interval_start_ns < ? AND node IN "
                                "(SELECT unnest(?::VARCHAR[])) ORDER BY interval_start_ns, agent_id, boot_id, seq",
                                [self.default_cluster, *span])
        return keys, read_chunk(self.store, keys, self.tenants)

    def book(self, outs: Sequence[ShardOutput]) -> None:
        with self.store.transaction() as tx:  # one commit for several shards: a commit costs ~0.1 s here
            for out in outs:
                h, nodes = out.shard.hour_start_ns, list(out.nodes)
                replace_shard_rollups(tx, h, nodes, out.rollups)
                tx.execute("DELETE FROM ledger WHERE interval_start_ns >= ? AND interval_start_ns < ? "
                           "AND node IN (SELECT unnest(?::VARCHAR[]))", [h, h + HOUR_NS, nodes])
                if out.ledger is not None:
                    tx.append("ledger", out.ledger)
                keys = out.keys.select(MSG).with_columns(rules_version=pl.lit(self.rules.version))
                with tx.registered(_shard_keys=keys):
                    tx.execute("DELETE FROM attributed t USING _shard_keys k WHERE t.agent_id = k.agent_id "
                               "AND t.boot_id = k.boot_id AND t.seq = k.seq")
                    tx.execute("INSERT INTO attributed SELECT agent_id, boot_id, seq, rules_version FROM _shard_keys")


_I = TypeVar("_I")
_O = TypeVar("_O")


class Executor(Protocol):
    """Runs ``fn`` over ``items`` and yields the results in the items' order, a bounded number in flight."""

    def map(self, fn: Callable[[_I], _O], items: Iterable[_I]) -> Iterator[_O]: ...


class InProcess:
    """This process computes each shard between reading and booking it."""

    def map(self, fn: Callable[[_I], _O], items: Iterable[_I]) -> Iterator[_O]:
        return (fn(item) for item in items)


@dataclass
class ProcessPool:
    """A local process pool: ``workers`` shards computed at once while this process reads and books."""

    workers: int

    def map(self, fn: Callable[[_I], _O], items: Iterable[_I]) -> Iterator[_O]:
        # spawn: a forked child would inherit DuckDB's and Polars' threads mid-flight
        with cf.ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn")) as pool:
            flight: deque[cf.Future[_O]] = deque()
            for item in items:
                flight.append(pool.submit(fn, item))
                while len(flight) > self.workers:
                    yield flight.popleft().result()
            while flight:
                yield flight.popleft().result()


@dataclass
class ShardRunResult:
    shards: list[Shard] = field(default_factory=list)  # the shards run, in booking order
    messages: int = 0  # messages (re)attributed in them
    ledger_rows: int = 0  # interval-grain rows computed
    ledger_rows_kept: int = 0  # of which written to ``ledger`` (inside the window)
    rollup_rows: int = 0  # rollup rows written (they replace the shards' previous rows)
    ledger_rows_pruned: int = 0


def plan_shards(store: ShardStore, groups: int, *, full: bool = False) -> list[tuple[Shard, tuple[str, ...]]]:
    """The shards to run, in (hour, group) order, each with the nodes it covers (all of the group's in that hour)."""
    touched = store.touched(full)
    if touched.is_empty():
        return []
    wanted = {Shard(h, node_group(n, groups)) for h, n in touched.iter_rows()}
    nodes: dict[Shard, list[str]] = {}
    for h, n in store.nodes_in(sorted({s.hour_start_ns for s in wanted})).iter_rows():
        shard = Shard(h, node_group(n, groups))
        if shard in wanted:
            nodes.setdefault(shard, []).append(n)
    return [(s, tuple(sorted(nodes[s]))) for s in sorted(wanted)]


def run_shards(store: Store, rules: TenancyRules | None = None, *, groups: int = DEFAULT_NODE_GROUPS,
               executor: Executor | None = None, full: bool = False, ledger_window_s: float | None = None,
               progress: Callable[[int, int], None] | None = None, commit_messages: int = 5000,
               default_cluster: str = DEFAULT_CLUSTER) -> ShardRunResult:
    """Run every shard of the DuckDB file holding a pending message (``full``: every shard with raw samples).

    ``executor``: who computes (default: this process); reading and booking
    stay here, the file's single writer. ``ledger_window_s`` as in
    :func:`gpuledger.analytics.job.run_attribution`, and so is ``default_cluster``. The file's own steps
    around the shards: hours an older run left pending are recomputed first,
    interval rows older than the window are pruned last.
    """
    refresh_hourly(store)  # hours an older run left pending: recompute them from the ledger first
    kept_from = _window_start(store, ledger_window_s)
    seam = DuckShardStore(store, rules or TenancyRules(), kept_from, default_cluster)
    result = book_shards(seam, plan_shards(seam, groups, full=full), executor=executor, kept_from=kept_from,
                         progress=progress, commit_messages=commit_messages)
    if kept_from is not None:
        result.ledger_rows_pruned = _prune(store, kept_from)
    return result


def book_shards(seam: ShardStore, plan: Sequence[tuple[Shard, tuple[str, ...]]], *, executor: Executor | None = None,
                kept_from: int | None = None, progress: Callable[[int, int], None] | None = None,
                commit_messages: int = 5000, reader: ShardReader | None = None,
                ledger: bool = True) -> ShardRunResult:
    """Read, compute and book the planned shards through any :class:`ShardStore`; returns what ran.

    ``kept_from``: shards of earlier hours book no interval-grain rows (the
    ledger window). Finished shards are booked together once they hold
    ``commit_messages`` messages, each shard whole: a crash loses none of a
    shard and books half of none; on a failing shard, those finished before
    it are booked and the rest stay pending.

    ``reader``: the workers read their shards' rows themselves through it (it
    travels to them; a store they can all reach, such as the lake) instead of
    this process reading them with ``seam.read`` and sending them.
    ``ledger=False``: no interval-grain rows are kept (the lake keeps rollups only).
    """
    executor = executor or InProcess()
    result = ShardRunResult()

    def keep(shard: Shard) -> bool:
        return ledger and (kept_from is None or shard.hour_start_ns >= kept_from)

    def inputs() -> Iterator[ShardInput]:
        for shard, nodes in plan:
            keys, chunk = seam.read(shard, nodes)
            yield ShardInput(shard, nodes, keys, chunk, keep(shard))

    outputs: Iterator[ShardOutput]
    if reader is None:
        outputs = executor.map(_computed, inputs())
    else:
        outputs = executor.map(read_and_attribute_shard, (ShardTask(reader, s, n, keep(s)) for s, n in plan))

    batch: list[ShardOutput] = []

    def flush() -> None:
        seam.book(batch)
        for out in batch:
            result.shards.append(out.shard)
            result.messages += out.keys.height
            result.ledger_rows += out.ledger_rows
            result.ledger_rows_kept += 0 if out.ledger is None else out.ledger.height
            result.rollup_rows += out.rollups.height
            log.info("shard %s: %d node(s), %d message(s), %d rollup row(s)", out.shard, len(out.nodes),
                     out.keys.height, out.rollups.height)
        batch.clear()
        if progress:
            progress(len(result.shards), len(plan))

    try:
        for out in outputs:
            batch.append(out)
            if sum(b.keys.height for b in batch) >= commit_messages:
                flush()
    except BaseException:
        if batch:  # the shards finished before the failure are booked; the failed one and later stay pending
            flush()
        raise
    if batch:
        flush()
    return result


def _computed(work: ShardInput) -> ShardOutput:
    """:func:`attribute_shard`, or a ChunkError naming the shard's messages (nothing of it is booked)."""
    return _naming(work.keys, lambda: attribute_shard(work))
