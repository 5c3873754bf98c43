"""The attribution job: IO around the pure ledger (``gpuledger.analytics.ledger``).

Incremental by default: only messages not yet in ``attributed`` are read,
attributed and booked -- their hourly rollups added to ``ledger_hourly`` and
their interval-grain rows appended to ``ledger`` -- in one transaction with
their keys, so a crash never leaves half an interval booked and the rollups
always sum to what is booked. ``full=True`` re-attributes every message still
stored raw (after a tenancy-rule or price change); what retention already
removed the raw samples of is kept as it is. Work is chunked by message so
memory stays bounded on a large store: each chunk is read already
integer-coded (``read_chunk``) and attributed by the compiled kernel
(``ledger.attribute_chunk``), which gives the reference's rows
(``reference_chunk`` runs ``ledger.attribute`` on the same chunk;
tests/analytics/test_ledger_fast.py compares them). Every attributed message
records the tenancy rules' version (``attributed.rules_version``).

**Rollups are the product** (docs/storage.md): each chunk's hourly sums are
computed from its in-memory ledger frame and added to the rollups in the
chunk's transaction (``hourly.add_parts``); at the end the partial rows of
each touched hour are merged into one row per key (``hourly.merge_hourly``,
rollup rows only). The interval-grain ledger is optional detail: with a
``ledger_window_s``, intervals older than the newest stored message minus the
window are not written (and older rows are pruned), and ``ledger_window``
records where the ledger starts; readers answer older hours from the rollups
and ``explain`` recomputes their interval rows from the raw samples
(``recompute_rows``).

**Both cores**: with ``workers`` > 1 the kernel runs in a process pool
while this process reads the next chunks and books the finished ones, in
order; the booked rows are identical to one process (tests/analytics/test_job_pool.py).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np
import polars as pl

from gpuledger.analytics.hourly import add_parts, merge_hourly, refresh_hourly
from gpuledger.analytics.kinds import UNATTRIBUTED_TENANT
from gpuledger.analytics.ledger import LEDGER_COLUMNS, MSG, Chunk, attribute, attribute_chunk, device_idents
from gpuledger.analytics.tenancy import SLURM_PREFIX, TenancyRules
from gpuledger.errors import GpuledgerError
from gpuledger.store import Store
from gpuledger.timeutil import HOUR_NS
from gpuledger.wire import DEFAULT_CLUSTER

_PENDING = """
SELECT m.agent_id, m.boot_id, m.seq FROM messages m
ANTI JOIN attributed a USING (agent_id, boot_id, seq)
ORDER BY m.interval_start_ns, m.agent_id, m.seq
"""
#: A booked ledger row: the kernel's columns and the message's cluster (NULL in ``messages``: ``default_cluster``).
BOOKED_COLUMNS = [*LEDGER_COLUMNS, "cluster"]
#: Default interval-ledger window: a week of interval rows for drill-down and disputes (older: rollups).
DEFAULT_LEDGER_WINDOW_S = 7 * 86_400.0


@dataclass
class JobResult:
    messages: int = 0
    ledger_rows: int = 0  # interval-grain rows computed (booked in the rollups)
    ledger_rows_kept: int = 0  # of which written to ``ledger`` (inside the window)
    rollup_rows: int = 0  # partial rollup rows added before the merge
    hours_merged: int = 0
    ledger_rows_pruned: int = 0  # older interval rows removed by the window
    rebooked: int = 0  # --full: messages taken off the books to attribute again


def _kernel(chunk: Chunk) -> pl.DataFrame:
    return _checked(attribute_chunk(chunk).frame())


def _checked(ledger: pl.DataFrame) -> pl.DataFrame:
    """The ledger's own sanity on a chunk's rows: finite, non-negative GPU-seconds over intervals that end
    after they start.

    Ingest validates what it stores, so a violation means a corrupt stored
    row (an interval ending before it starts, a slice fraction out of range):
    raise, naming the first message, rather than book it.
    """
    per = (ledger.group_by(["agent_id", "boot_id", "seq", "gpu_index", "mig_index"])
           .agg(s=pl.col("gpu_seconds").sum(), lo=pl.col("gpu_seconds").min(),
                dt=((pl.col("interval_end_ns") - pl.col("interval_start_ns")).max() / 1e9)))
    bad = per.filter(~pl.col("s").is_finite() | (pl.col("lo") < -1e-6) | (pl.col("dt") <= 0))
    if bad.height:
        r = bad.sort("agent_id", "boot_id", "seq", "gpu_index", "mig_index").row(0, named=True)
        unit = f"GPU {r['gpu_index']}" + (f" MIG {r['mig_index']}" if r["mig_index"] >= 0 else "")
        raise ValueError(f"{bad.height} GPU interval(s) cannot be booked, e.g. message "
                         f"({r['agent_id']}, {r['boot_id']}, {r['seq']}) {unit}: rows sum to "
                         f"{r['s']:.6g} s (smallest {r['lo']:.6g} s) for an interval of {r['dt']:.6g} s")
    return ledger


def _read_and_attribute(store: Store, keys: pl.DataFrame, tenants: pl.LazyFrame) -> pl.DataFrame:
    return _kernel(read_chunk(store, keys, tenants))


def default_workers() -> int:
    """All cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_attribution(
    store: Store,
    rules: TenancyRules | None = None,
    *,
    full: bool = False,
    chunk_messages: int = 5000,
    workers: int = 1,
    ledger_window_s: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    default_cluster: str = DEFAULT_CLUSTER,
) -> JobResult:
    """Attribute pending messages (all of them with ``full``); returns counts.

    ``workers``: processes running the kernel (1: this process only).
    ``default_cluster``: the cluster of a message whose agent named none; every
    row carries its message's cluster, so (cluster, namespace, pod) is a pod's
    identity in the ledger and its rollups.
    ``ledger_window_s``: keep interval-grain rows only for intervals that start
    at most this long before the newest stored message (None: keep them all).
    Memory is bounded by the chunk (``chunk_messages`` messages, times
    ``workers`` + 1 chunks in flight) and DuckDB's ``memory_limit``.
    """
    rules = rules or TenancyRules()
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    refresh_hourly(store)  # hours a crashed older version left pending: recompute them from the ledger first
    if full:
        result_full = _unbook_raw(store)
    pending = store.query(_PENDING)
    kept_from = _window_start(store, ledger_window_s)
    result = JobResult(rebooked=result_full if full else 0)
    jobs = store.query("SELECT DISTINCT slurm_job FROM processes WHERE slurm_job IS NOT NULL ORDER BY 1")
    tenants = rules.tenant_table(store.query("SELECT pod_uid, namespace, labels, name, coalesce(cluster, ?) AS cluster "
                                             "FROM pods", [default_cluster]),
                                 jobs["slurm_job"].to_list()).lazy()
    total = pending.height
    chunks = (pending.slice(start, chunk_messages) for start in range(0, total, chunk_messages))

    def book(keys: pl.DataFrame, ledger: pl.DataFrame) -> None:
        ledger = with_clusters(ledger, message_clusters(store, keys, default_cluster))
        kept = ledger if kept_from is None else ledger.filter(pl.col("interval_start_ns") >= kept_from)
        with store.transaction() as tx:
            result.rollup_rows += add_parts(tx, ledger)
            tx.append("ledger", kept)
            tx.append("attributed", keys.select(MSG).with_columns(rules_version=pl.lit(rules.version)))
        result.messages += keys.height
        result.ledger_rows += ledger.height
        result.ledger_rows_kept += kept.height
        if progress:
            progress(result.messages, total)

    if workers == 1 or total <= chunk_messages:
        for keys in chunks:
            book(keys, _naming(keys, partial(_read_and_attribute, store, keys, tenants)))
    else:
        # spawn: a forked child would inherit DuckDB's and Polars' threads mid-flight
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            flight: deque[tuple[pl.DataFrame, cf.Future[pl.DataFrame]]] = deque()
            for keys in chunks:
                chunk = _naming(keys, partial(read_chunk, store, keys, tenants))
                flight.append((keys, pool.submit(_kernel, chunk)))
                while len(flight) > workers:
                    done_keys, future = flight.popleft()
                    book(done_keys, _naming(done_keys, future.result))
            while flight:
                done_keys, future = flight.popleft()
                book(done_keys, _naming(done_keys, future.result))
    result.hours_merged = merge_hourly(store)
    if kept_from is not None:
        result.ledger_rows_pruned = _prune(store, kept_from)
    return result


def _unbook_raw(store: Store) -> int:
    """``--full``: take the messages still stored raw off the books (ledger, rollups, keys) to book them again.

    Only hours the interval ledger still covers (``ledger_window``): their
    rollups are dropped and rebuilt from the ledger rows of those hours whose
    raw samples retention removed (kept as they are) plus what
    re-attribution adds. Older hours exist only as rollups, which cannot be
    split by message: they stay as booked. Returns the messages taken off.
    """
    hour = f"interval_start_ns - interval_start_ns % {HOUR_NS}"
    kept_from = store.scalar("SELECT max(kept_from_ns) FROM ledger_window")
    since = "TRUE" if kept_from is None else f"interval_start_ns >= {int(kept_from)}"
    with store.transaction() as tx:
        tx.execute(f"CREATE OR REPLACE TEMP TABLE _raw AS SELECT agent_id, boot_id, seq, {hour} AS h FROM messages "
                   f"WHERE {since}")
        n = int(tx.scalar("SELECT count(*) FROM _raw"))
        for table in ("ledger", "attributed"):
            tx.execute(f"DELETE FROM {table} t USING _raw m WHERE t.agent_id = m.agent_id "
                       "AND t.boot_id = m.boot_id AND t.seq = m.seq")
        tx.execute("DELETE FROM ledger_hourly WHERE hour_start_ns IN (SELECT DISTINCT h FROM _raw)")
        others = tx.query(f"SELECT {', '.join(BOOKED_COLUMNS)} FROM ledger WHERE {hour} IN (SELECT DISTINCT h FROM _raw)")
        add_parts(tx, others)
        tx.execute("DROP TABLE _raw")
    return n


def message_clusters(store: Store, keys: pl.DataFrame, default_cluster: str) -> pl.DataFrame:
    """(agent_id, boot_id, seq, cluster) of the messages ``keys``: the cluster each named, else the default."""
    with store.registered(_ckeys=keys.select(MSG)):
        return store.query("SELECT k.agent_id, k.boot_id, k.seq, coalesce(m.cluster, ?) AS cluster FROM _ckeys k "
                           "LEFT JOIN messages m USING (agent_id, boot_id, seq)", [default_cluster])


def with_clusters(ledger: pl.DataFrame, clusters: pl.DataFrame) -> pl.DataFrame:
    """``ledger`` with each row's ``cluster``, from ``clusters`` (:func:`message_clusters` of its messages)."""
    names = clusters["cluster"].unique()
    if names.len() == 1:  # one cluster in the chunk (the usual case): no join
        return ledger.with_columns(cluster=pl.lit(names[0], pl.String))
    # the kernel's key columns are Enums of the chunk's values: join on their text
    key = {"agent_id": "_a", "boot_id": "_b", "seq": "_s"}
    return (ledger.with_columns(_a=pl.col("agent_id").cast(pl.String), _b=pl.col("boot_id").cast(pl.String),
                                _s=pl.col("seq").cast(pl.UInt64))
            .join(clusters.select(*MSG, "cluster").rename(key).with_columns(pl.col("_s").cast(pl.UInt64)),
                  on=list(key.values()), how="left", maintain_order="left")
            .drop(list(key.values())))


def ledger_window_start(store: Store) -> int | None:
    """Where the interval-grain ledger starts (ns): older hours are rollups only. None: it holds every interval."""
    if not store.has_table("ledger_window"):
        return None
    start = store.scalar("SELECT max(kept_from_ns) FROM ledger_window")
    return None if start is None else int(start)


class ChunkError(GpuledgerError):
    """A chunk of messages that cannot be attributed: nothing of it is booked, and the error names its messages."""

    hint = ("the messages stay pending, so the month's reconciliation fails until they are booked; inspect them "
            "(`SELECT * FROM devices WHERE agent_id = ... AND seq BETWEEN ...`), fix or delete them, and run "
            "`gpuledger attribute` again")


_T = TypeVar("_T")


def _naming(keys: pl.DataFrame, compute: Callable[[], _T]) -> _T:
    """``compute()``, or a ChunkError naming ``keys`` (a corrupt row, a value out of range): none of them is booked."""
    try:
        return compute()
    except GpuledgerError:
        raise
    except Exception as exc:
        raise _failed(keys, exc) from exc


def _failed(keys: pl.DataFrame, exc: BaseException) -> ChunkError:
    first, last = keys.row(0), keys.row(-1)
    agents = keys["agent_id"].unique().sort().to_list()
    return ChunkError(f"attribution of {keys.height} message(s) failed ({type(exc).__name__}: {exc}); first "
                      f"{first}, last {last} (agent_id, boot_id, seq); agents {', '.join(agents[:10])}"
                      f"{' …' if len(agents) > 10 else ''}")


class RecomputeError(GpuledgerError):
    """Interval rows that cannot be recomputed as they were booked."""


def recompute_rows(store: Store, start_ns: int, end_ns: int, rules: TenancyRules, *, tenant: str | None = None,
                   chunk_messages: int = 5000, default_cluster: str = DEFAULT_CLUSTER) -> pl.DataFrame:
    """The ledger rows of the intervals starting in [start_ns, end_ns), recomputed from the raw samples.

    For hours before the interval ledger's window (``ledger_window_start``):
    the same kernel over the same messages under the same tenancy rules gives
    the rows the job booked (tests/analytics/test_job_window.py compares them).
    Raises :class:`RecomputeError` when raw samples of booked hours are gone
    (retention) or the messages were booked under other tenancy rules. Works
    on a read-only store; ``tenant`` keeps only that tenant's rows (memory:
    one chunk at a time).
    """
    span = "interval_start_ns >= ? AND interval_start_ns < ?"
    keys = store.query(f"SELECT agent_id, boot_id, seq FROM messages WHERE {span} "
                       "ORDER BY interval_start_ns, agent_id, seq", [start_ns, end_ns])
    booked = store.scalar("SELECT sum(intervals) FROM ledger_hourly WHERE hour_start_ns >= ? AND hour_start_ns < ?",
                          [start_ns - start_ns % HOUR_NS, end_ns]) if store.has_table("ledger_hourly") else None
    if booked and keys.is_empty():
        raise RecomputeError("the raw samples of this period are no longer stored (retention); its interval rows "
                             "exist only as hourly rollups",
                             hint="use the hourly figures (API showback, grain 'hour'), or a period inside the "
                             "ledger window (`ledger_window_days`)")
    with store.registered(_keys=keys):
        versions = store.query("SELECT DISTINCT coalesce(rules_version, 'unrecorded') AS v FROM attributed "
                               "SEMI JOIN _keys USING (agent_id, boot_id, seq) ORDER BY 1")["v"].to_list()
    if versions and versions != [rules.version]:
        raise RecomputeError(f"these intervals were booked under tenancy rules {', '.join(versions)}, not the "
                             f"rules given ({rules.version}): recomputed rows would not be the booked ones",
                             hint="pass the tenancy rules the period was attributed under (--tenancy), or "
                             "re-attribute it (`gpuledger attribute --full`)")
    jobs = store.query("SELECT DISTINCT slurm_job FROM processes WHERE slurm_job IS NOT NULL ORDER BY 1")
    tenants = rules.tenant_table(store.query("SELECT pod_uid, namespace, labels, name, coalesce(cluster, ?) AS cluster "
                                             "FROM pods", [default_cluster]),
                                 jobs["slurm_job"].to_list()).lazy()
    parts = []
    for start in range(0, keys.height, chunk_messages):
        part = keys.slice(start, chunk_messages)
        frame = with_clusters(_kernel(read_chunk(store, part, tenants)), message_clusters(store, part, default_cluster))
        if tenant is not None:
            frame = frame.filter(pl.col("tenant") == tenant)
        parts.append(frame.with_columns(pl.col(pl.Enum).cast(pl.String)))
    if not parts:
        return pl.DataFrame(schema=store.query("SELECT * FROM ledger LIMIT 0").schema)
    return pl.concat(parts)


def _window_start(store: Store, window_s: float | None) -> int | None:
    """Where the interval ledger starts after this run (ns), or None to keep every interval."""
    if window_s is None:
        return None
    if window_s < 0:
        raise ValueError(f"the ledger window must be at least 0 seconds, got {window_s}")
    newest = store.scalar("SELECT max(interval_start_ns) FROM messages")
    before = store.scalar("SELECT max(kept_from_ns) FROM ledger_window")
    if newest is None:
        return None if before is None else int(before)
    start = int(newest) - int(window_s * 1e9)
    start -= start % HOUR_NS  # whole hours: an hour is either in the ledger or only in the rollups
    return start if before is None else max(start, int(before))


def _prune(store: Store, kept_from: int) -> int:
    """Drop interval rows before ``kept_from`` (their rollups stay) and record where the ledger starts."""
    with store.transaction() as tx:
        n = int(tx.scalar("SELECT count(*) FROM ledger WHERE interval_start_ns < ?", [kept_from]))
        tx.execute("DELETE FROM ledger WHERE interval_start_ns < ?", [kept_from])
        tx.execute("INSERT INTO ledger_window (id, kept_from_ns) VALUES (0, ?) ON CONFLICT (id) DO UPDATE SET "
                   "kept_from_ns = excluded.kept_from_ns, updated_at = now()", [kept_from])
    return n


def _window(store: Store) -> str:
    """SQL filter on the chunk's interval starts: lets DuckDB skip row groups by their min/max (zone maps)."""
    lo, hi = store.query("SELECT min(interval_start_ns) AS lo, max(interval_start_ns) AS hi FROM messages "
                         "SEMI JOIN _chunk USING (agent_id, boot_id, seq)").row(0)
    return "TRUE" if lo is None else f"t.interval_start_ns BETWEEN {int(lo)} AND {int(hi)}"


def read_chunk(store: Store, keys: pl.DataFrame, tenants: pl.LazyFrame) -> Chunk:
    """The chunk's rows as a ``ledger.Chunk``: integer codes are made in DuckDB, no per-row string leaves it.

    Message keys become the ordinal ``m`` of ``keys`` (a join on the registered
    keys), with whether their agent could read the allocations; pod uids (Slurm
    processes: ``slurm:<job id>``) become owner codes, rows of the tenant table,
    with namespace and pod name from ``pods``. Only the
    needed columns are read, sorted the way the kernel expects (message, GPU,
    MIG device, owner). A chunk naming a pod the tenant table lacks is coded
    with a dictionary of its own rows instead (slower, same ledger).
    """
    msgs = keys.select(MSG).with_row_index("m")
    with store.registered(_chunk=msgs):
        window = _window(store)
        messages = store.query(
            "SELECT k.agent_id, k.boot_id, k.seq, m.allocations_unavailable IS NOT NULL AS holders_unknown "
            "FROM _chunk k LEFT JOIN messages m USING (agent_id, boot_id, seq) ORDER BY k.m")
        devices = store.query(
            "SELECT k.m, t.gpu_index, t.mig_index, t.interval_start_ns, t.interval_end_ns, t.slice_fraction, "
            "t.gpu_util, t.gr_engine_active, t.util_samples, t.energy_delta_mj, t.node, t.uuid, t.model, t.profile "
            f"FROM devices t JOIN _chunk k USING (agent_id, boot_id, seq) WHERE {window} "
            "ORDER BY k.m, t.gpu_index, t.mig_index")
        coded = _coded_by_tenants(store, window, tenants) or _coded_by_chunk(store, window, tenants)
    processes, allocations, owners = coded
    devices, idents = device_idents(devices)
    return Chunk(messages=messages, idents=idents, devices=devices, processes=processes, allocations=allocations,
                 owners=owners)


_PROC_OWNER = f"coalesce(t.pod_uid, '{SLURM_PREFIX}' || t.slurm_job)"  # a Slurm process is owned by its job


def _coded_by_tenants(store: Store, window: str, tenants: pl.LazyFrame
                      ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame] | None:
    """Owner codes = rows of the tenant table (row 0: no pod); None when a row names an unknown owner."""
    t = tenants.collect().select("pod_uid", "tenant").unique(subset="pod_uid", keep="first", maintain_order=True)
    no_pod = pl.DataFrame({"pod_uid": [None], "tenant": [UNATTRIBUTED_TENANT]},
                          schema={"pod_uid": pl.String, "tenant": pl.String})
    owners = pl.concat([no_pod, t.drop_nulls("pod_uid")]).join(
        store.query("SELECT pod_uid, namespace, name AS pod FROM pods"), on="pod_uid", how="left",
        maintain_order="left").select("pod_uid", "namespace", "pod", "tenant")
    own = owners.with_row_index("owner").select("pod_uid", pl.col("owner").cast(pl.Int64)).slice(1)
    with store.registered(_own=own):
        processes = store.query(
            "SELECT k.m, t.gpu_index, t.mig_index, "
            f"CASE WHEN {_PROC_OWNER} IS NULL THEN 0 ELSE o.owner END AS owner, "
            "t.samples, t.sm_util_sum, t.used_memory_bytes "
            f"FROM processes t JOIN _chunk k USING (agent_id, boot_id, seq) LEFT JOIN _own o "
            f"ON o.pod_uid = {_PROC_OWNER} WHERE {window} ORDER BY k.m, t.gpu_index, t.mig_index, owner, t.pid")
        allocations = store.query(
            "SELECT k.m, t.gpu_index, t.mig_index, CASE WHEN t.pod_uid IS NULL THEN 0 ELSE o.owner END AS owner, "
            "t.replica, coalesce(contains(t.resource, 'shared'), false) AS shared, t.share "
            f"FROM allocations t JOIN _chunk k USING (agent_id, boot_id, seq) LEFT JOIN _own o "
            f"ON o.pod_uid = t.pod_uid WHERE {window} ORDER BY k.m, t.gpu_index, t.mig_index, owner")
    if processes["owner"].null_count() or allocations["owner"].null_count():
        return None
    # Keep only the owners this chunk names: the output's dictionaries stay chunk-sized however many pods exist.
    p_own, a_own = processes["owner"].to_numpy(), allocations["owner"].to_numpy()
    used = np.zeros(owners.height, bool)
    used[0] = True
    used[p_own] = True
    used[a_own] = True
    if not used.all():
        new = np.cumsum(used) - 1
        owners = owners.filter(pl.Series(used))
        processes = processes.with_columns(owner=pl.Series(new[p_own]))
        allocations = allocations.with_columns(owner=pl.Series(new[a_own]))
    return processes, allocations, owners


def _coded_by_chunk(store: Store, window: str, tenants: pl.LazyFrame
                    ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Owner codes from the chunk's own rows (namespace and pod: ``min`` over them)."""
    try:
        store.execute(
            "CREATE OR REPLACE TEMP TABLE _p AS SELECT k.m, t.gpu_index, t.mig_index, t.pid, "
            f"{_PROC_OWNER} AS pod_uid, t.namespace, t.pod, t.samples, t.sm_util_sum, t.used_memory_bytes "
            f"FROM processes t JOIN _chunk k USING (agent_id, boot_id, seq) WHERE {window}")
        store.execute(
            "CREATE OR REPLACE TEMP TABLE _a AS SELECT k.m, t.gpu_index, t.mig_index, t.replica, t.pod_uid, "
            "t.namespace, t.pod, coalesce(contains(t.resource, 'shared'), false) AS shared, t.share "
            f"FROM allocations t JOIN _chunk k USING (agent_id, boot_id, seq) WHERE {window}")
        store.execute(
            "CREATE OR REPLACE TEMP TABLE _o AS SELECT pod_uid, min(namespace) AS namespace, min(pod) AS pod, "
            "(row_number() OVER (ORDER BY pod_uid NULLS FIRST) - 1)::BIGINT AS owner FROM ("
            "SELECT pod_uid, namespace, pod FROM _p UNION ALL SELECT pod_uid, namespace, pod FROM _a) GROUP BY pod_uid")
        owners = store.query("SELECT pod_uid, namespace, pod FROM _o ORDER BY owner")
        processes = store.query(
            "SELECT p.m, p.gpu_index, p.mig_index, o.owner, p.samples, p.sm_util_sum, p.used_memory_bytes "
            "FROM _p p JOIN _o o ON p.pod_uid IS NOT DISTINCT FROM o.pod_uid "
            "ORDER BY p.m, p.gpu_index, p.mig_index, o.owner, p.pid")
        allocations = store.query(
            "SELECT a.m, a.gpu_index, a.mig_index, o.owner, a.replica, a.shared, a.share "
            "FROM _a a JOIN _o o ON a.pod_uid IS NOT DISTINCT FROM o.pod_uid "
            "ORDER BY a.m, a.gpu_index, a.mig_index, o.owner")
    finally:
        store.execute("DROP TABLE IF EXISTS _p; DROP TABLE IF EXISTS _a; DROP TABLE IF EXISTS _o")
    t = tenants.collect().select("pod_uid", "tenant").unique(subset="pod_uid", keep="first")
    owners = owners.join(t, on="pod_uid", how="left", maintain_order="left").with_columns(
        tenant=pl.col("tenant").fill_null(UNATTRIBUTED_TENANT))
    return processes, allocations, owners


def read_frames(store: Store, keys: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The chunk's store-shaped frames, as ``ledger.attribute`` reads them (the reference path);
    ``allocations_unavailable``: the keys of the messages whose agent could not read the allocations."""
    with store.registered(_chunk=keys.select(MSG)):
        frames = {
            table: store.query(f"SELECT t.* FROM {table} t SEMI JOIN _chunk k USING (agent_id, boot_id, seq)")
            for table in ("devices", "allocations")
        }
        frames["allocations_unavailable"] = store.query(
            "SELECT agent_id, boot_id, seq FROM messages SEMI JOIN _chunk k USING (agent_id, boot_id, seq) "
            "WHERE allocations_unavailable IS NOT NULL")
        # A Slurm process (no pod) is owned by its job: key it like a pod, "slurm:<job id>".
        frames["processes"] = store.query(
            f"SELECT t.* REPLACE (coalesce(t.pod_uid, '{SLURM_PREFIX}' || t.slurm_job) AS pod_uid) "
            "FROM processes t SEMI JOIN _chunk k USING (agent_id, boot_id, seq) "
            "ORDER BY agent_id, boot_id, seq, gpu_index, mig_index, pid"
        )
    return frames


def reference_chunk(store: Store, keys: pl.DataFrame, tenants: pl.LazyFrame) -> pl.DataFrame:
    """The same chunk by ``ledger.attribute`` (the readable reference; tests compare the two)."""
    f = read_frames(store, keys)
    return attribute(f["devices"].lazy(), f["processes"].lazy(), f["allocations"].lazy(), tenants,
                     f["allocations_unavailable"].lazy()).select(LEDGER_COLUMNS).collect()
