"""Explain a tenant's line: the GPUs, intervals and rules behind it.

``explain(ledger, tenant, start_ns, end_ns)`` groups the tenant's ledger rows
of the period by what a reviewer needs to trace a charge back to its
evidence: node, GPU (uuid, index, MIG device), cluster, namespace and pod, kind and the rule that
attributed it, with the first and last interval, how many intervals, the
GPU-seconds and joules. The rows sum exactly to the tenant's line in
``rollups.tenant_lines`` under the ``holder`` policy; each interval is
identified by ``(agent_id, boot_id, seq)`` in the store, so any row can be
followed down to the raw samples (tables ``devices``, ``processes``,
``allocations``). Output is sorted, so the same data gives the same listing.
``gpuledger explain`` also names the tenancy-rule version(s) the rows were
attributed under (``attributed.rules_version``, written by the job).

What it prints: first a summary, one row per GPU (:func:`per_gpu`): GPU-hours,
used, allocated idle, unmeasured, the rules that attributed them, and the
GPU's share of the tenant's line; with ``--detail`` the rows above (GPU x pod
x kind x rule). The table and ``--format csv`` carry the same columns in the
same units: GPU-hours, kWh, and ISO 8601 UTC times (``2026-10-01T18:00:00Z``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import polars as pl

from gpuledger.analytics.csvfile import write_frame
from gpuledger.analytics.rollups import in_period
from gpuledger.errors import GpuledgerError
from gpuledger.timeutil import HOUR_NS
from gpuledger.wire import DEFAULT_CLUSTER

if TYPE_CHECKING:
    from gpuledger.analytics.tenancy import TenancyRules
    from gpuledger.store import Store

GROUP = ["node", "gpu_uuid", "gpu_index", "mig_index", "model", "sharing", "cluster", "namespace", "pod", "kind",
         "rule"]
#: One GPU unit (a whole GPU, or a MIG device of it) in the summary.
GPU = ["node", "gpu_uuid", "gpu_index", "mig_index", "model", "sharing"]
_ISO = "%Y-%m-%dT%H:%M:%SZ"
_DIGITS = 6  # GPU-hours and kWh: the API's rounding
J_PER_KWH = 3_600_000


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


def per_gpu(ledger: pl.LazyFrame, tenant: str, start_ns: int | None = None,
            end_ns: int | None = None) -> pl.LazyFrame:
    """The summary: one row per GPU unit of the tenant's rows, with its share of the tenant's line.

    Columns: GPU, intervals (distinct), first/last (ns), gpu/busy/allocated_idle/unmeasured seconds,
    energy_j, rules (sorted, comma-joined), share (0..1 of the tenant's GPU-seconds in the period).
    """
    rows = in_period(ledger, start_ns, end_ns).filter(pl.col("tenant") == tenant)
    seconds = {f"{k}_seconds": pl.col("gpu_seconds").filter(pl.col("kind") == k).sum()
               for k in ("busy", "allocated_idle", "unmeasured")}
    return (rows.group_by(GPU)
            .agg(intervals=pl.struct("agent_id", "boot_id", "seq").n_unique(),
                 first_start_ns=pl.col("interval_start_ns").min(), last_end_ns=pl.col("interval_end_ns").max(),
                 gpu_seconds=pl.col("gpu_seconds").sum(), **seconds,
                 energy_j=pl.when(pl.col("energy_j").is_not_null().any()).then(pl.col("energy_j").sum()),
                 rules=pl.col("rule").unique().sort().str.join(", "))
            .with_columns(share=pl.when(pl.col("gpu_seconds").sum() > 0)
                          .then(pl.col("gpu_seconds") / pl.col("gpu_seconds").sum()))
            .sort(["node", "gpu_index", "mig_index"], nulls_last=True))


def _hours(column: str) -> pl.Expr:
    return (pl.col(column) / 3600).round(_DIGITS)


def _iso(column: str) -> pl.Expr:
    return pl.from_epoch(pl.col(column), time_unit="ns").dt.strftime(_ISO)


def readable(frame: pl.DataFrame, detail: bool) -> pl.DataFrame:
    """What the table and the CSV show: GPU-hours, kWh and ISO UTC times, the same columns in both."""
    times = [_iso("first_start_ns").alias("first_interval_start"), _iso("last_end_ns").alias("last_interval_end")]
    kwh = (pl.col("energy_j") / J_PER_KWH).round(_DIGITS).alias("energy_kwh")
    if detail:
        return frame.select("node", "gpu_uuid", "gpu_index", "mig_index", "model", "sharing", "cluster", "namespace", "pod",
                            "kind", "rule", "intervals", *times, _hours("gpu_seconds").alias("gpu_hours"), kwh)
    return frame.select("node", "gpu_uuid", "gpu_index", "mig_index", "model", "sharing", "intervals", *times,
                        _hours("gpu_seconds").alias("gpu_hours"), _hours("busy_seconds").alias("used_gpu_hours"),
                        _hours("allocated_idle_seconds").alias("idle_gpu_hours"),
                        _hours("unmeasured_seconds").alias("unmeasured_gpu_hours"), kwh, "rules",
                        pl.col("share").round(_DIGITS).alias("share_of_line"))


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
                    detail: bool = False, rules: TenancyRules | None = None,
                    default_cluster: str = DEFAULT_CLUSTER) -> str:
    """Text for ``gpuledger explain``: the tenant's line (coverage included), then per GPU, or with ``detail``
    per GPU, pod, kind and rule; ``fmt="csv"`` the same rows and units as the table.

    Hours before the interval ledger's window (the attribution job keeps
    interval rows for recent days only) are recomputed from the raw samples
    under ``rules`` (default: the default tenancy rules), which must be the
    rules they were booked under (``job.recompute_rows``), with messages that name no
    cluster in ``default_cluster``.
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
        if "cluster" not in ledger.columns:  # a file no writer opened since migration 12 (read-only here)
            ledger = ledger.with_columns(cluster=pl.lit(DEFAULT_CLUSTER))
        versions = rules_versions(store, " AND ".join(where), params)
        known = set(store.query("SELECT DISTINCT tenant FROM ledger")["tenant"].to_list())
        kept_from = ledger_window_start(store)
        unexplained = 0  # hours booked before the window whose raw samples retention removed
        if kept_from is not None and (start_ns is None or start_ns < kept_from):
            unexplained = int(store.scalar(
                f"SELECT count(DISTINCT hour_start_ns) FROM ledger_hourly WHERE tenant = ? AND hour_start_ns >= ? "
                f"AND hour_start_ns < ? AND hour_start_ns NOT IN (SELECT DISTINCT interval_start_ns - "
                f"interval_start_ns % {HOUR_NS} FROM messages)",
                [tenant, start_ns if start_ns is not None else -(2**62), kept_from if end_ns is None else
                 min(end_ns, kept_from)]))
            known |= set(store.query("SELECT DISTINCT tenant FROM ledger_hourly")["tenant"].to_list())
            lo = start_ns if start_ns is not None else \
                store.scalar("SELECT min(interval_start_ns) FROM messages WHERE interval_start_ns < ?", [kept_from])
            hi = kept_from if end_ns is None else min(end_ns, kept_from)
            if lo is not None and lo < hi:
                older = recompute_rows(store, int(lo), hi, rules, tenant=tenant, default_cluster=default_cluster)
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
    shown = readable(rows if detail else per_gpu(ledger_lf, tenant).collect(), detail)
    if fmt == "csv":  # through the project's one CSV writer: pod and namespace names are anyone's text
        buf = io.StringIO()
        write_frame(shown, buf)
        return buf.getvalue()
    if rows.height == 0:
        return f"no ledger rows for tenant {tenant!r} in this period\n"
    r = tenant_lines(ledger_lf).collect().row(0, named=True)
    cov = "-" if r["coverage"] is None else f"{100 * r['coverage']:.1f} %"
    head = (f"tenant {tenant}: {r['total_s'] / 3600:.3f} GPU-h (busy {r['busy_s'] / 3600:.3f}, allocated idle "
            f"{r['allocated_idle_s'] / 3600:.3f}, unmeasured {r['unmeasured_s'] / 3600:.3f}); coverage {cov}\n"
            f"attributed under tenancy rules {', '.join(versions) or 'unrecorded'}\n"
            + ("one row per GPU, pod, kind and rule" if detail else
               f"{shown.height} GPU{'s' if shown.height != 1 else ''} (--detail: per pod, kind and rule)")
            + "; GPU-hours, times UTC\n"
            + (f"not listed: {unexplained} hour(s) of this tenant before the interval ledger's window whose raw "
               "samples retention removed (their hourly figures are in the showback)\n" if unexplained else ""))
    table = shown.drop("gpu_uuid", "model") if not detail else shown.drop("model")
    if not detail:
        table = table.with_columns(share_of_line=(pl.col("share_of_line") * 100).round(1).cast(pl.String) + " %")
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=250, fmt_str_lengths=60, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True, float_precision=4):
        return head + str(table) + "\n"
