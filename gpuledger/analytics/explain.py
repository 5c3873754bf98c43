"""Explain a tenant's line: the GPUs, intervals and rules behind it.

``explain(ledger, tenant, start_ns, end_ns)`` groups the tenant's ledger rows
of the period by what a reviewer needs to trace a charge back to its
evidence: node, GPU (uuid, index, MIG device), pod, kind and the rule that
attributed it, with the first and last interval, how many intervals, the
GPU-seconds and joules. The rows sum exactly to the tenant's line in
``rollups.tenant_lines`` under the ``holder`` policy; each interval is
identified by ``(agent_id, boot_id, seq)`` in the store, so any row can be
followed down to the raw samples (tables ``devices``, ``processes``,
``allocations``). Output is sorted, so the same data gives the same listing.
``gpuledger explain`` also names the tenancy-rule version(s) the rows were
attributed under (``attributed.rules_version``, written by the job).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import polars as pl

from gpuledger.analytics.csvfile import write_frame
from gpuledger.analytics.rollups import in_period
from gpuledger.errors import GpuledgerError

if TYPE_CHECKING:
    from gpuledger.analytics.tenancy import TenancyRules
    from gpuledger.store import Store

GROUP = ["node", "gpu_uuid", "gpu_index", "mig_index", "model", "sharing", "namespace", "pod", "kind", "rule"]


def explain(ledger: pl.LazyFrame, tenant: str, start_ns: int | None = None, end_ns: int | None = None) -> pl.LazyFrame:
    """Rows: GROUP columns, intervals, first_start_ns, last_end_ns, gpu_seconds, energy_j."""
    rows = in_period(ledger, start_ns, end_ns).filter(pl.col("tenant") == tenant)
    return (
        rows.group_by(GROUP)
        .agg(
            intervals=pl.struct("agent_id", "boot_id", "seq").n_unique(),
            first_start_ns=pl.col("interval_start_ns").min(),
            last_end_ns=pl.col("interval_end_ns").max(),
            gpu_seconds=pl.col("gpu_seconds").sum(),
            energy_j=pl.when(pl.col("energy_j").is_not_null().any()).then(pl.col("energy_j").sum()),
        )
        .sort(["node", "gpu_index", "mig_index", "pod", "kind", "rule"], nulls_last=True)
    )


def parse_instant(text: str) -> int:
    """``2026-10-01`` or ``2026-10-01T12:00`` (UTC unless an offset is given) -> ns since the epoch."""
    import datetime as dt

    from gpuledger.errors import ConfigError

    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"not a date or time: {text!r}",
                          hint="use ISO 8601, e.g. 2026-10-01 or 2026-10-01T12:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp()) * 10**9 + when.microsecond * 1000


def rules_versions(store: Store, where: str, params: Sequence[object]) -> list[str]:
    """Tenancy-rule versions the ledger rows matching ``where`` were attributed under (``attributed.rules_version``).

    Files written before the column existed, or messages attributed then, say ``unrecorded``.
    """
    has = store.scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = 'attributed' "
                       "AND column_name = 'rules_version'")
    if not has:
        return ["unrecorded"]
    rows = store.query(
        "SELECT DISTINCT coalesce(a.rules_version, 'unrecorded') AS v FROM attributed a SEMI JOIN "
        f"(SELECT agent_id, boot_id, seq FROM ledger WHERE {where}) l USING (agent_id, boot_id, seq) ORDER BY 1",
        params)
    return rows["v"].to_list()


def explain_command(db: str, tenant: str, start: str | None, end: str | None, fmt: str = "table",
                    rules: TenancyRules | None = None) -> str:
    """Text for ``gpuledger explain``: the tenant's line (coverage included) and the rows behind it.

    Hours before the interval ledger's window (the attribution job keeps
    interval rows for recent days only) are recomputed from the raw samples
    under ``rules`` (default: the default tenancy rules), which must be the
    rules they were booked under (``job.recompute_rows``).
    """
    import io

    from gpuledger.analytics.job import ledger_window_start, recompute_rows
    from gpuledger.analytics.rollups import tenant_lines
    from gpuledger.analytics.tenancy import TenancyRules
    from gpuledger.store import Store

    rules = rules or TenancyRules()
    start_ns = parse_instant(start) if start else None
    end_ns = parse_instant(end) if end else None
    with Store(db, read_only=True) as store:
        where, params = ["tenant = ?"], list[object]([tenant])
        if start_ns is not None:
            where.append("interval_start_ns >= ?")
            params.append(start_ns)
        if end_ns is not None:
            where.append("interval_start_ns < ?")
            params.append(end_ns)
        ledger = store.query(f"SELECT * FROM ledger WHERE {' AND '.join(where)}", params)
        versions = rules_versions(store, " AND ".join(where), params)
        known = set(store.query("SELECT DISTINCT tenant FROM ledger")["tenant"].to_list())
        kept_from = ledger_window_start(store)
        if kept_from is not None and (start_ns is None or start_ns < kept_from):
            known |= set(store.query("SELECT DISTINCT tenant FROM ledger_hourly")["tenant"].to_list())
            lo = start_ns if start_ns is not None else \
                store.scalar("SELECT min(interval_start_ns) FROM messages WHERE interval_start_ns < ?", [kept_from])
            hi = kept_from if end_ns is None else min(end_ns, kept_from)
            if lo is not None and lo < hi:
                older = recompute_rows(store, int(lo), hi, rules, tenant=tenant)
                if older.height:
                    ledger = pl.concat([older.select(ledger.columns), ledger], how="vertical_relaxed")
                    versions = sorted({*versions, rules.version})
        ledger_lf = ledger.lazy()
    if tenant not in known:  # a typo must not read as "this tenant used nothing"
        import difflib

        close = difflib.get_close_matches(tenant, sorted(known), n=3, cutoff=0.5)
        raise GpuledgerError(f"no tenant {tenant!r} in the ledger",
                             hint=f"did you mean {', '.join(map(repr, close))}?" if close else
                             f"known tenants: {', '.join(sorted(known)[:20]) or 'none (run `gpuledger attribute`)'}")
    rows = explain(ledger_lf, tenant).collect()
    line = tenant_lines(ledger_lf).collect()
    if fmt == "csv":  # through the project's one CSV writer: pod and namespace names are anyone's text
        buf = io.StringIO()
        write_frame(rows, buf)
        return buf.getvalue()
    if rows.height == 0:
        return f"no ledger rows for tenant {tenant!r} in this period\n"
    r = line.row(0, named=True)
    cov = "-" if r["coverage"] is None else f"{100 * r['coverage']:.1f} %"
    head = (f"tenant {tenant}: {r['total_s'] / 3600:.3f} GPU-h (busy {r['busy_s'] / 3600:.3f}, allocated idle "
            f"{r['allocated_idle_s'] / 3600:.3f}, unmeasured {r['unmeasured_s'] / 3600:.3f}); coverage {cov}\n"
            f"attributed under tenancy rules {', '.join(versions) or 'unrecorded'}\n")
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=40, tbl_hide_dataframe_shape=True):
        shown = rows.with_columns(
            first=pl.from_epoch(pl.col("first_start_ns"), time_unit="ns").dt.strftime("%Y-%m-%d %H:%M:%S"),
            last=pl.from_epoch(pl.col("last_end_ns"), time_unit="ns").dt.strftime("%Y-%m-%d %H:%M:%S"),
            gpu_h=(pl.col("gpu_seconds") / 3600).round(4),
        ).select("node", "gpu_uuid", "gpu_index", "mig_index", "pod", "sharing", "kind", "rule", "intervals",
                 "first", "last", "gpu_h")
        return head + str(shown) + "\n"
