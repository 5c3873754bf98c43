"""The attribution job: IO around the pure ledger (``gpuledger.analytics.ledger``).

Incremental by default: only messages not yet in ``attributed`` are read,
attributed and appended to ``ledger`` in one transaction with their keys, so a
crash never leaves half an interval booked. ``full=True`` re-attributes
every message still stored raw (after a tenancy-rule or price change); ledger
rows whose raw samples retention removed are kept as they are. Work is chunked by message
so memory stays bounded on a large store. Each chunk is read already
integer-coded (``read_chunk``) and attributed by the compiled kernel
(``ledger.attribute_chunk``), which gives the reference's rows
(``reference_chunk`` runs ``ledger.attribute`` on the same chunk;
tests/analytics/test_ledger_fast.py compares them). Every attributed message
records the tenancy rules' version (``attributed.rules_version``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from gpuledger.analytics.hourly import mark_pending, refresh_hourly
from gpuledger.analytics.kinds import UNATTRIBUTED_TENANT
from gpuledger.analytics.ledger import LEDGER_COLUMNS, MSG, Chunk, attribute, attribute_chunk, device_idents
from gpuledger.analytics.tenancy import SLURM_PREFIX, TenancyRules
from gpuledger.store import Store

_PENDING = """
SELECT m.agent_id, m.boot_id, m.seq FROM messages m
ANTI JOIN attributed a USING (agent_id, boot_id, seq)
ORDER BY m.interval_start_ns, m.agent_id, m.seq
"""


@dataclass
class JobResult:
    messages: int = 0
    ledger_rows: int = 0


def run_attribution(
    store: Store,
    rules: TenancyRules | None = None,
    *,
    full: bool = False,
    chunk_messages: int = 5000,
    progress: Callable[[int, int], None] | None = None,
) -> JobResult:
    """Attribute pending messages (all of them with ``full``); returns counts."""
    rules = rules or TenancyRules()
    if full:
        # Only what can be re-attributed: ledger rows whose raw samples retention already
        # removed (gpuledger/ingest/retention.py) stay, or their months' bills would drop to zero.
        with store.transaction() as tx:
            for table in ("ledger", "attributed"):
                tx.execute(f"DELETE FROM {table} t USING messages m WHERE t.agent_id = m.agent_id "
                           "AND t.boot_id = m.boot_id AND t.seq = m.seq")
    pending = store.query(_PENDING)
    mark_pending(store)  # their hours' rollups are recomputed below, or by the next run after a crash
    result = JobResult()
    jobs = store.query("SELECT DISTINCT slurm_job FROM processes WHERE slurm_job IS NOT NULL ORDER BY 1")
    tenants = rules.tenant_table(store.query("SELECT pod_uid, namespace, labels, name FROM pods"),
                                 jobs["slurm_job"].to_list()).lazy()
    total = pending.height
    for start in range(0, total, chunk_messages):
        keys = pending.slice(start, chunk_messages)
        ledger = attribute_chunk(read_chunk(store, keys, tenants)).frame()
        with store.transaction() as tx:
            tx.append("ledger", ledger)
            tx.append("attributed", keys.select(MSG).with_columns(rules_version=pl.lit(rules.version)))
        result.messages += keys.height
        result.ledger_rows += ledger.height
        if progress:
            progress(result.messages, total)
    refresh_hourly(store)  # ledger_hourly = ledger summed per hour again (late data, --full included)
    return result


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
