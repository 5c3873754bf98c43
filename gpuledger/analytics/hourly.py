"""Hourly rollups of the ledger: what is kept after the interval-grain ledger goes.

``ledger_hourly`` holds one row per UTC hour x GPU unit (node, gpu_uuid,
gpu_index, mig_index, model, profile, sharing) x holder (tenant, namespace,
pod, cluster) x kind x rule, with

- ``gpu_seconds``: the sum of the ledger's GPU-seconds;
- ``energy_j`` (J) and ``memory_gb_seconds`` (GB x s): sums of the known
  values, null when no ledger row of the group knew one (missing is not zero);
  ``energy_intervals`` counts the rows that knew their energy, so a partly
  known hour shows as such;
- ``intervals``: how many ledger rows (sample intervals) were summed;
- ``capacity_ns``: the capacity of the physical GPU-hour (hour, node,
  ``gpu_index``) the row belongs to -- the lengths of its GPU intervals
  (message x ``gpu_index``), integer ns from interval bounds, each counted
  once -- carried by the GPU-hour's first row in key order (0 on the others),
  so summed over a GPU-hour it is that GPU-hour's capacity, exactly: what the
  bill prices;
- ``gpu_ps``, ``energy_nj``, ``memory_byte_seconds``: the exact integer sums
  of GPU-seconds, joules and GB-seconds (``analytics/exact.py``); the float
  columns above are these divided by their scale, so every column is the
  same whatever the chunking, arrival order or merge order that summed it.

An interval belongs to the hour that contains its ``interval_start_ns``, the
rule chargeback uses for months and days, so an hour's rollup and a month's
bill never disagree about where an interval straddling a boundary went.

No per-minute table: at the agent's 10 s tick a minute holds six intervals,
so it would be a sixth of the ledger, which is kept (13 months by default) for
every finer question. The hour is where the saving is (360 intervals per row).

Consistency: for every hour not listed in ``ledger_hourly_pending``, the
rollup equals the ledger summed per hour -- the API relies on it, answering
hour-or-coarser questions from the rollups for such hours (gpuledger/api/views.py). A
file whose ledger predates the rollups gets every ledger hour marked pending
when a writer first opens it (``Store``), so the next run rolls it up. The attribution job marks the hours
of the messages it is about to book as pending (committed before it books
them) and recomputes them at the end -- delete the hour's rows, insert them
afresh from ``ledger``, clear the mark, in one transaction per hour -- so late
and out-of-order messages (a spool replayed hours later) recompute exactly the
hours they touch, and a crash between booking and refresh leaves the hours
marked for the next run. Hours of a month whose ledger retention removed
(``ledger_retired``) are never recomputed from the empty ledger: they stay
pending and the rollup keeps what it had.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import polars as pl

from gpuledger.analytics.exact import exact, measure, measure_sql
from gpuledger.store import Store
from gpuledger.timeutil import HOUR_NS

__all__ = [
    "EXACT_COLUMNS",
    "GPU_HOUR",
    "GPU_INTERVAL",
    "HOURLY_COLUMNS",
    "add_parts",
    "merge_hourly",
    "HOURLY_KEYS",
    "RefreshResult",
    "hourly",
    "mark_hours",
    "mark_pending",
    "rebuild_hourly",
    "refresh_hourly",
    "replace_shard_rollups",
]


#: The rollup's grain, in table order (``cluster``, added later, is the table's last column).
HOURLY_KEYS = ("hour_start_ns", "node", "gpu_uuid", "gpu_index", "mig_index", "model", "profile", "sharing",
               "kind", "tenant", "namespace", "pod", "rule", "cluster")
#: The exact integer sums (``analytics/exact.py``) and the capacity carried, after the float columns.
EXACT_COLUMNS = ("capacity_ns", "gpu_ps", "energy_nj", "memory_byte_seconds")
HOURLY_COLUMNS = (*HOURLY_KEYS[:-1], "gpu_seconds", "energy_j", "energy_intervals", "memory_gb_seconds", "intervals",
                  "cluster", *EXACT_COLUMNS)
#: One physical GPU interval: its ledger rows share its bounds.
GPU_INTERVAL = ("cluster", "agent_id", "boot_id", "seq", "gpu_index")
#: One physical GPU-hour: what ``capacity_ns`` sums to a capacity over (two clusters' node names may match).
GPU_HOUR = ("hour_start_ns", "cluster", "node", "gpu_index")
#: Ledger columns the rollup reads.
_READ = ", ".join(["agent_id", "boot_id", "seq", "interval_start_ns", "interval_end_ns", *HOURLY_KEYS[1:],
                   "gpu_seconds", "energy_j", "memory_gb_seconds"])


def _known_sum(column: str) -> pl.Expr:
    """Exact sum of the known values (Int64; a rollup row fits many times over); null (not 0) when none is known."""
    return pl.when(pl.col(column).is_not_null().any()).then(pl.col(column).sum())


def hourly(ledger: pl.LazyFrame) -> pl.LazyFrame:
    """Ledger rows (at least the GPU interval's key and bounds, the keys and the measures) -> rollup rows, sorted."""
    rows = ledger.with_columns(
        hour_start_ns=pl.col("interval_start_ns") - pl.col("interval_start_ns") % HOUR_NS,
        gpu_ps=exact("gpu_seconds"), energy_nj=exact("energy_j"), memory_byte_seconds=exact("memory_gb_seconds"),
    )
    # Each physical GPU-hour's capacity: its GPU intervals' lengths (integer bounds), each counted once.
    capacity = (rows.group_by(GPU_INTERVAL)
                .agg(pl.col("hour_start_ns").first(), pl.col("node").first(),
                     capacity_ns=(pl.col("interval_end_ns") - pl.col("interval_start_ns")).max())
                .group_by(GPU_HOUR).agg(pl.col("capacity_ns").sum()))
    schema = rows.collect_schema()
    order = [pl.col(k).cast(pl.String) if isinstance(schema[k], (pl.Enum, pl.Categorical)) else pl.col(k)
             for k in HOURLY_KEYS]  # enums (the job's frames) sort as text, as DuckDB sorts what is stored
    return (
        rows.group_by(HOURLY_KEYS)
        .agg(
            # Null when a row's GPU-seconds were not finite: the bill refuses it (never a silent 0).
            gpu_ps=pl.when(pl.col("gpu_ps").null_count() == 0).then(pl.col("gpu_ps").sum()),
            energy_nj=_known_sum("energy_nj"),
            energy_intervals=pl.col("energy_nj").count().cast(pl.UInt32),
            memory_byte_seconds=_known_sum("memory_byte_seconds"),
            intervals=pl.len().cast(pl.UInt32),
        )
        .sort(order, nulls_last=True)
        .join(capacity, on=list(GPU_HOUR), how="left", maintain_order="left")
        .with_columns(  # carried by the GPU-hour's first row in key order (as ``merge_hourly`` carries it)
            *(measure(m) for m in ("gpu_seconds", "energy_j", "memory_gb_seconds")),
            capacity_ns=pl.when(pl.int_range(pl.len()).over(GPU_HOUR) == 0).then(pl.col("capacity_ns")).otherwise(0))
        .select(HOURLY_COLUMNS)
    )


# --- IO -----------------------------------------------------------------------------


@dataclass
class RefreshResult:
    hours: int = 0  # hours recomputed
    rows: int = 0  # rollup rows written
    retired_pending: list[int] = field(default_factory=list)  # hours left pending: their month's ledger is retired


def mark_pending(store: Store) -> int:
    """Mark the hours of every message not yet attributed as pending; returns how many hours are new.

    Call before booking those messages (the attribution job does), so the
    mark is committed before the ledger changes.
    """
    before = store.count("ledger_hourly_pending")
    store.execute(
        f"INSERT INTO ledger_hourly_pending SELECT DISTINCT interval_start_ns - interval_start_ns % {HOUR_NS} "
        "FROM messages ANTI JOIN attributed USING (agent_id, boot_id, seq) ON CONFLICT DO NOTHING")
    return store.count("ledger_hourly_pending") - before


def mark_hours(store: Store, hours: Iterable[int]) -> None:
    """Mark these hours (any ns inside them) as pending."""
    starts = sorted({h - h % HOUR_NS for h in hours})
    if starts:
        store.execute("INSERT INTO ledger_hourly_pending SELECT DISTINCT unnest(?::BIGINT[]) ON CONFLICT DO NOTHING",
                      [starts])


def refresh_hourly(store: Store, hours: Iterable[int] = (), *, max_rows: int = 2_000_000,
                   progress: Callable[[int, int], None] | None = None) -> RefreshResult:
    """Recompute ``hours`` (any ns inside them) and every pending hour from the ledger.

    One transaction per hour: delete its rollup rows, insert them afresh,
    clear its mark. An hour with more than ``max_rows`` ledger rows is summed
    in node buckets of at most about that many rows (bounded memory; a node's
    rows never span two buckets). Hours of retired ledger months are left
    pending and untouched (see the module docstring), as are hours before
    the interval ledger's window (``ledger_window``).
    """
    mark_hours(store, hours)
    pending = store.query("SELECT hour_start_ns FROM ledger_hourly_pending ORDER BY 1")["hour_start_ns"].to_list()
    retired = store.query("SELECT start_ns, end_ns FROM ledger_retired").rows()
    if store.has_table("ledger_window"):  # hours before the interval ledger's window exist only as rollups
        retired += [(-(2**63), int(k)) for (k,) in store.query("SELECT kept_from_ns FROM ledger_window").rows()]
    result = RefreshResult()
    for done, hour in enumerate(pending, 1):
        if any(lo <= hour < hi for lo, hi in retired):
            result.retired_pending.append(hour)
            continue
        result.rows += _recompute(store, hour, max_rows)
        result.hours += 1
        if progress:
            progress(done, len(pending))
    return result


def rebuild_hourly(store: Store, *, max_rows: int = 2_000_000,
                   progress: Callable[[int, int], None] | None = None) -> RefreshResult:
    """Recompute every hour the ledger has (a check, or the first run on a store older than the rollups)."""
    store.pend_ledger_hours()
    return refresh_hourly(store, max_rows=max_rows, progress=progress)


def add_parts(tx: Store, ledger: pl.DataFrame) -> int:
    """Add ``ledger`` rows' hourly sums to the rollups (inside the caller's transaction); returns rows added.

    The attribution job calls it with each chunk it books, in the transaction
    that appends the chunk, so the rollups always sum to what is booked --
    however little of the interval ledger is kept. An hour may then hold
    several partial rows per key until :func:`merge_hourly` sums them (readers
    sum anyway); its hour is listed in ``ledger_hourly_unmerged`` meanwhile.
    """
    if ledger.is_empty():
        return 0
    parts = hourly(ledger.lazy()).collect()
    tx.append("ledger_hourly", parts)
    tx.execute("INSERT INTO ledger_hourly_unmerged SELECT DISTINCT unnest(?::BIGINT[]) ON CONFLICT DO NOTHING",
               [parts["hour_start_ns"].unique().to_list()])
    return parts.height


def replace_shard_rollups(tx: Store, hour: int, nodes: Sequence[str], rows: pl.DataFrame) -> None:
    """Replace the rollup rows of ``hour`` on ``nodes`` by ``rows`` (inside the caller's transaction).

    An attribution shard (``analytics/shards.py``) books its hour x node group
    this way: the rows it computed from all of the shard's raw samples take
    the place of whatever was booked there, so a re-run leaves the same rows.
    """
    tx.execute("DELETE FROM ledger_hourly WHERE hour_start_ns = ? AND node IN (SELECT unnest(?::VARCHAR[]))",
               [hour, list(nodes)])
    tx.append("ledger_hourly", rows)


#: An hour's partial rows summed: integers only (the floats follow from them), so any merge order gives the same
#: bits. sum() of only NULLs is NULL: unknown stays unknown; a NULL ``gpu_ps`` (GPU-seconds not finite) stays NULL.
_KNOWN_PS = "CASE WHEN count(*) = count(gpu_ps) THEN sum(gpu_ps) END"
_MERGED = ", ".join([
    *HOURLY_KEYS, f"{measure_sql('gpu_seconds', _KNOWN_PS)} AS gpu_seconds",
    f"{measure_sql('energy_j', 'sum(energy_nj)')} AS energy_j", "sum(energy_intervals)::UINTEGER AS energy_intervals",
    f"{measure_sql('memory_gb_seconds', 'sum(memory_byte_seconds)')} AS memory_gb_seconds",
    "sum(intervals)::UINTEGER AS intervals", "sum(capacity_ns)::BIGINT AS capacity_ns",
    f"({_KNOWN_PS})::BIGINT AS gpu_ps", "sum(energy_nj)::BIGINT AS energy_nj",
    "sum(memory_byte_seconds)::BIGINT AS memory_byte_seconds"])
#: Each GPU-hour's capacity onto its first row in key order, as :func:`hourly` carries it.
_CARRIED = (f"CASE WHEN row_number() OVER (PARTITION BY {', '.join(GPU_HOUR)} ORDER BY "
            + ", ".join(f"{k} NULLS LAST" for k in HOURLY_KEYS if k not in GPU_HOUR)
            + f") = 1 THEN sum(capacity_ns) OVER (PARTITION BY {', '.join(GPU_HOUR)}) ELSE 0 END::BIGINT")


def merge_hourly(store: Store, progress: Callable[[int, int], None] | None = None) -> int:
    """Sum the partial rows of every hour in ``ledger_hourly_unmerged`` into one row per key; returns hours merged.

    One transaction per hour (bounded memory; a crash leaves the rest listed
    for the next run). Reads rollup rows only, never the interval ledger.
    """
    hours = store.query("SELECT hour_start_ns FROM ledger_hourly_unmerged ORDER BY 1")["hour_start_ns"].to_list()
    keys = ", ".join(HOURLY_KEYS)
    for done, hour in enumerate(hours, 1):
        with store.transaction() as tx:
            tx.execute(f"CREATE OR REPLACE TEMP TABLE _merged AS SELECT * REPLACE ({_CARRIED} AS capacity_ns) "
                       f"FROM (SELECT {_MERGED} FROM ledger_hourly WHERE hour_start_ns = ? GROUP BY {keys})", [hour])
            tx.execute("DELETE FROM ledger_hourly WHERE hour_start_ns = ?", [hour])
            tx.execute("INSERT INTO ledger_hourly BY NAME SELECT * FROM _merged ORDER BY ALL")
            tx.execute("DROP TABLE _merged")
            tx.execute("DELETE FROM ledger_hourly_unmerged WHERE hour_start_ns = ?", [hour])
        if progress:
            progress(done, len(hours))
    return len(hours)


def _recompute(store: Store, hour: int, max_rows: int) -> int:
    span = "interval_start_ns >= ? AND interval_start_ns < ?"
    bounds = [hour, hour + HOUR_NS]
    written = 0
    with store.transaction() as tx:
        n = int(tx.scalar(f"SELECT count(*) FROM ledger WHERE {span}", bounds))
        buckets = max(1, -(-n // max_rows))
        tx.execute("DELETE FROM ledger_hourly WHERE hour_start_ns = ?", [hour])
        for b in range(buckets):
            where = span if buckets == 1 else f"{span} AND hash(node) % {buckets} = {b}"
            rows = hourly(tx.query(f"SELECT {_READ} FROM ledger WHERE {where}", bounds).lazy()).collect()
            tx.append("ledger_hourly", rows)
            written += rows.height
        tx.execute("DELETE FROM ledger_hourly_pending WHERE hour_start_ns = ?", [hour])
    return written
