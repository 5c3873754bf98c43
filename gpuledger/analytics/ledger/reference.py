"""The ledger's readable reference: every GPU-second and joule of capacity to exactly one tenant line.

For each GPU unit ``u`` (a whole GPU, a MIG slice, or the unconfigured
remainder of a GPU in MIG mode) and interval of length Δt (DESIGN.md)::

    capacity = Δt × slice_fraction
    busy     = util × capacity             util: device samples (MIG: GR_ENGINE_ACTIVE)
    busy_p   = busy × w_p                  w_p: gpuledger.split's rule (per-process samples normalised
                                           among the sampled processes -- a listed, unsampled one is
                                           idle --, equal split, holders by allocation share); what
                                           the samples cannot place stays ``unattributed``)
    idle     = capacity − busy
    idle_h   = idle × a_h                  a_h: allocation share (normalised if Σ > 1)
    unalloc  = idle × (1 − Σ a_h)          the platform's line
    Σ busy_p + Σ idle_h + unalloc = capacity, exactly, every (u, interval)

A unit whose utilization is missing (MIG without DCGM profiling, a lost GPU)
has no busy figure: its held share is ``unmeasured`` (charged to the holder,
never reported as zero busy) and the rest is unallocated. Energy follows the
same split: busy energy ``E × util × w_p``, idle energy ``E × (1 − util) × a_h``.
When the agent could not read the allocations, unallocated idle goes to the
pods that ran on the unit (``unknown_holders``).

``attribute`` is a pure function of LazyFrames (no IO; it materialises a few
shared intermediates of one chunk), a chain of named steps that are the
compiled kernel's passes (``kernel.attribute_chunk``, ``passes``):

=================  ==============================  ==============================================
step               kernel                          makes
=================  ==============================  ==============================================
``units``          ``attribute_chunk`` (numpy)     the unit table: capacity, util, energy
``holders``        ``passes._holders``             one holder per (unit, owner); per-unit Σ share
``evidence``       ``passes._evidence``            clean evidence per process; per-unit counts
``unit_rules``     ``passes._unit_pass``           busy, energies, which rule splits each unit
``busy_by_process``  ``passes._busy_rows``         busy per (unit, owner, rule) from processes
``by_share``       ``passes._share_rows``          busy by share without pod evidence; idle per holder
``per_unit``       ``passes._unit_rows``           busy nobody holds; unallocated idle
``unknown_holders``  ``passes._process_holders``   unallocated idle of units whose holders are
                   + ``_unit_rows``                unknown, to the pods that ran there
=================  ==============================  ==============================================

The rule itself (which unit splits how, the weights) is ``gpuledger.split``,
shared with the agent's ``/metrics``; the steps here are its relational
plumbing. IO lives in ``gpuledger/analytics/job.py``.
"""

from __future__ import annotations

import polars as pl

from gpuledger import split
from gpuledger.analytics import kinds as K
from gpuledger.analytics.ledger.columns import CONTEXT, LEDGER_COLUMNS, MSG, RULES, UNIT

__all__ = ["attribute", "busy_by_process", "by_share", "conservation_error", "evidence", "holders", "per_unit",
           "unit_rules", "units", "unknown_holders"]

#: The int64 unit key of every frame below (``_keyed``).
KEY = ["_ab", "_uk"]
_NULL_WHO = {"namespace": pl.lit(None, pl.String), "pod": pl.lit(None, pl.String), "_pod": pl.lit(None, pl.Int64)}
_NO_MEMORY = pl.lit(None, pl.Float64)


def units(devices: pl.LazyFrame) -> pl.LazyFrame:
    """Device rows -> capacity units with capacity (s), util (0..1 or null), energy (J or null)."""
    dev = devices.with_columns(
        dt=(pl.col("interval_end_ns") - pl.col("interval_start_ns")) / 1e9,
        # A GPU lost before the agent could read its identity still has capacity to book.
        uuid=pl.col("uuid").fill_null(pl.format("unknown:{}:{}", "node", "gpu_index")),
        model=pl.col("model").fill_null(pl.lit("unknown")),
    )
    physical = dev.filter(pl.col("mig_index") == -1)
    mig = dev.filter(pl.col("mig_index") >= 0)
    configured = mig.group_by([*MSG, "gpu_index"]).agg(frac_sum=pl.col("slice_fraction").sum())
    parent = physical.join(configured, on=[*MSG, "gpu_index"], how="left").with_columns(
        energy=pl.col("energy_delta_mj") / 1000.0
    )
    base = [*MSG, "node", "interval_start_ns", "interval_end_ns", "gpu_index"]
    whole = parent.filter(pl.col("frac_sum").is_null()).select(
        *base, "mig_index", is_mig=pl.lit(False), gpu_uuid="uuid", model="model", profile="profile",
        capacity="dt", util="gpu_util", energy="energy", util_samples=pl.col("util_samples").cast(pl.Int64),
    )
    remainder = parent.filter(pl.col("frac_sum").is_not_null()).select(
        *base, "mig_index", is_mig=pl.lit(True), gpu_uuid="uuid", model="model", profile=pl.lit(None, pl.String),
        capacity=pl.col("dt") * (1.0 - pl.col("frac_sum")).clip(0.0, 1.0),
        util=pl.lit(0.0),  # nothing runs on unconfigured slices
        energy=pl.col("energy") * (1.0 - pl.col("frac_sum")).clip(0.0, 1.0),
        util_samples=pl.lit(0, pl.Int64),
    )
    slices = mig.join(
        parent.select(*MSG, "gpu_index", parent_uuid="uuid", parent_energy="energy"), on=[*MSG, "gpu_index"]
    ).select(
        *base, "mig_index", is_mig=pl.lit(True), gpu_uuid="parent_uuid", model="model", profile="profile",
        capacity=pl.col("dt") * pl.col("slice_fraction"), util="gr_engine_active",
        energy=pl.col("parent_energy") * pl.col("slice_fraction"),
        util_samples=pl.lit(0, pl.Int64),  # GR_ENGINE_ACTIVE is a mean, not samples
    )
    return pl.concat([whole, remainder, slices], how="vertical_relaxed").with_columns(
        util=pl.col("util").clip(0.0, 1.0)
    )


def _keyed(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Add the int64 unit key KEY: (agent, boot) dictionary codes and (seq, gpu, MIG) packed.

    Polars' Categorical codes are global, so every frame of one attribution run
    gets the same codes; joins and group-bys then run on two int64 columns
    instead of five (two of them strings). ``seq < 2**51``.
    """
    return frame.with_columns(
        _ab=pl.col("agent_id").cast(pl.Categorical).to_physical().cast(pl.Int64) * 2**32
        + pl.col("boot_id").cast(pl.Categorical).to_physical().cast(pl.Int64),
        _uk=pl.col("seq").cast(pl.Int64) * 4096 + pl.col("gpu_index").cast(pl.Int64) * 16
        + pl.col("mig_index").cast(pl.Int64) + 1,
    )


def _pod_code() -> pl.Expr:
    """int64 code of the owner: the pod uid (or ``slurm:<job>``) as a global Categorical code; -1 = none."""
    return pl.col("pod_uid").cast(pl.Categorical).to_physical().cast(pl.Int64).fill_null(-1)


def owners(processes: pl.LazyFrame, allocations: pl.LazyFrame, tenants: pl.LazyFrame) -> pl.LazyFrame:
    """Every owner once (code ``_pod``) with its tenant, namespace and pod (the first row naming it)."""
    return (
        pl.concat([processes.select("pod_uid", "namespace", "pod"), allocations.select("pod_uid", "namespace", "pod")])
        .unique(subset="pod_uid", keep="first")
        .join(tenants.select("pod_uid", "tenant"), on="pod_uid", how="left")
        .select(_pod=_pod_code(), tenant=pl.col("tenant").fill_null(K.UNATTRIBUTED_TENANT), namespace="namespace",
                pod="pod")
    )


def holders(allocations: pl.LazyFrame) -> tuple[pl.DataFrame, pl.LazyFrame]:
    """Allocation rows -> (one holder per (unit, owner), per-unit totals).

    A holder's share is its rows' sum, replica their max, shared their or. Per
    unit: Σ share, holders, time-sliced (a replica ≥ 0), fractional (a shared
    resource or a holder's share below 1).
    """
    per_owner = (
        _keyed(allocations)
        .with_columns(_pod=_pod_code(), shared=pl.col("resource").str.contains("shared"))
        .group_by([*KEY, "_pod"])
        .agg(share=pl.col("share").sum(), replica=pl.col("replica").max(), shared=pl.col("shared").any())
    ).collect()  # used twice (totals, rows by share)
    totals = per_owner.lazy().group_by(KEY).agg(
        share_sum=pl.col("share").sum(),
        n_holders=pl.len(),
        time_sliced=(pl.col("replica") >= 0).any(),
        fractional=(pl.col("shared") | (pl.col("share") < 1.0)).any(),
    )
    return per_owner, totals


def evidence(processes: pl.LazyFrame) -> tuple[pl.DataFrame, pl.LazyFrame]:
    """Process rows -> (rows with clean evidence, per-unit counts and Σ evidence).

    Owned: the process has a pod (or a Slurm job); unsampled: owned, listed with
    a context, but not one driver sample in the interval.
    """
    rows = _keyed(processes).select(
        *KEY, "samples", "used_memory_bytes", "sm_util_sum", owned=pl.col("pod_uid").is_not_null(), _pod=_pod_code(),
    ).collect()  # used twice (totals, busy rows)
    rows = rows.with_columns(evidence=pl.Series(split.clean_evidence(rows["sm_util_sum"].to_numpy())),
                             unsampled=pl.col("owned") & (pl.col("samples") <= 0)).drop("sm_util_sum")
    totals = rows.lazy().group_by(KEY).agg(
        n_procs=pl.len(), n_owned=pl.col("owned").sum(), n_unsampled=pl.col("unsampled").sum(),
        n_sampled=(pl.col("samples") > 0).sum(), evidence_sum=pl.col("evidence").sum(),
    )
    return rows, totals


def unit_rules(unit_frame: pl.LazyFrame, holder_totals: pl.LazyFrame, process_totals: pl.LazyFrame,
               allocations_unavailable: pl.LazyFrame | None) -> pl.DataFrame:
    """Per unit: busy, energies, held share, sharing mode and which rule splits it (``split.split_units``).

    ``holders_unknown``: the unit's message says its agent could not read the allocations.
    """
    counts = {"share_sum": 0.0, "n_holders": 0, "n_procs": 0, "n_owned": 0, "n_unsampled": 0, "n_sampled": 0,
              "evidence_sum": 0.0}
    u = (unit_frame.join(holder_totals, on=KEY, how="left").join(process_totals, on=KEY, how="left")
         .with_columns(pl.col(c).fill_null(v) for c, v in counts.items()))
    flagged = pl.lit(False)
    if allocations_unavailable is not None:
        u = u.join(allocations_unavailable.select(MSG).unique().with_columns(_flag=pl.lit(True)), on=MSG, how="left")
        flagged = pl.col("_flag").fill_null(False)
    table = u.with_columns(
        holders_unknown=flagged,
        sharing=pl.when(pl.col("is_mig")).then(pl.lit("mig"))
        .when(pl.col("n_holders") == 0).then(pl.lit("unallocated"))
        .when(pl.col("time_sliced")).then(pl.lit("time_sliced"))
        .when(pl.col("fractional")).then(pl.lit("fractional"))
        .otherwise(pl.lit("exclusive")),
        busy_energy=pl.col("energy") * pl.col("util"),
        idle_energy=pl.col("energy") * (1.0 - pl.col("util")),
        dt_s=(pl.col("interval_end_ns") - pl.col("interval_start_ns")) / 1e9,
    ).collect()

    def col(name: str) -> pl.Series:
        return table[name].cast(pl.Float64)

    s = split.split_units(*(col(c).to_numpy() for c in ("util", "capacity", "util_samples", "n_procs", "n_owned",
                                                          "n_sampled", "n_unsampled", "evidence_sum", "share_sum")))
    return table.with_columns(pl.Series(name, value) for name, value in s._asdict().items()).with_columns(
        held=pl.Series(split.held_fraction(col("share_sum").to_numpy())))


def _rule_name(code: pl.Expr) -> pl.Expr:
    return code.replace_strict(dict(enumerate(RULES)), return_dtype=pl.String)


def busy_by_process(process_rows: pl.DataFrame, unit_table: pl.DataFrame) -> pl.LazyFrame:
    """Busy of ``by_process`` units per (unit, owner, rule): busy × w (``split.process_weights``), energy
    likewise, memory as GB × Δt of the owner's processes (null when none reports it)."""
    figures = ["busy", "busy_energy", "dt_s", "remainder", "r", "evidence_sum", "n_owned", "n_procs"]
    rows = process_rows.join(unit_table.filter("by_process").select(*KEY, *figures), on=KEY)

    def num(name: str) -> pl.Series:
        return rows[name] if rows.schema[name] == pl.Boolean else rows[name].cast(pl.Float64)

    w, rule = split.process_weights(*(num(c).to_numpy() for c in (
        "evidence", "owned", "samples", "remainder", "r", "evidence_sum", "n_owned", "n_procs")))
    return (
        rows.lazy().with_columns(
            w=pl.Series(w), _rule=pl.Series(rule),
            memory=pl.col("used_memory_bytes").fill_nan(None) / 1e9 * pl.col("dt_s"),  # GB × s held
        )
        .group_by([*KEY, "_pod", "_rule"])
        .agg(
            gpu_seconds=(pl.col("busy") * pl.col("w")).sum(),
            # Missing stays missing: a sum over only-null values is null, not 0.
            energy_j=pl.when(pl.col("busy_energy").is_not_null().any())
            .then((pl.col("busy_energy") * pl.col("w")).sum()),
            memory_gb_seconds=pl.when(pl.col("memory").is_not_null().any()).then(pl.col("memory").sum()),
        )
        .select(*KEY, "_pod", "gpu_seconds", "energy_j", "memory_gb_seconds", kind=pl.lit(K.BUSY),
                rule=_rule_name(pl.col("_rule")))
    )


def by_share(unit_table: pl.DataFrame, holder_rows: pl.DataFrame) -> pl.LazyFrame:
    """Rows by allocation share, per (unit, holder): busy of ``by_share`` units (no pod process) by
    share / Σ share; idle (or, unmeasured, all of capacity) by share / norm."""
    held = unit_table.lazy().join(holder_rows.lazy(), on=KEY)
    busy = held.filter("by_share").select(
        *KEY, "_pod", kind=pl.lit(K.BUSY),
        rule=pl.when(pl.col("n_procs") == 0).then(pl.lit(K.RULE_ALLOCATION_SHARE))
        .otherwise(pl.lit(K.RULE_SERVER_ONLY)),
        gpu_seconds=pl.col("busy") * pl.col("share") / pl.col("share_sum"),
        energy_j=pl.col("busy_energy") * pl.col("share") / pl.col("share_sum"),
        memory_gb_seconds=_NO_MEMORY,
    )
    a = pl.col("share") / pl.col("norm")
    idle = held.select(
        *KEY, "_pod",
        kind=pl.when(pl.col("measured")).then(pl.lit(K.ALLOCATED_IDLE)).otherwise(pl.lit(K.UNMEASURED)),
        rule=pl.when(pl.col("measured")).then(pl.lit(K.RULE_IDLE_SHARE)).otherwise(pl.lit(K.RULE_MIG_UNMEASURED)),
        gpu_seconds=pl.when(pl.col("measured")).then((pl.col("capacity") - pl.col("busy")) * a)
        .otherwise(pl.col("capacity") * a),
        energy_j=pl.when(pl.col("measured")).then(pl.col("idle_energy") * a).otherwise(pl.col("energy") * a),
        memory_gb_seconds=_NO_MEMORY,
    )
    return pl.concat([busy, idle])


def per_unit(unit_table: pl.DataFrame) -> pl.LazyFrame:
    """One row per unit at most of each: busy held by nobody, or the busy the samples cannot place (r of
    busy, rule ``unplaced_remainder``), both ``unattributed``; unallocated idle (``platform``)."""
    u = unit_table.lazy()
    nobody = u.filter("to_nobody").select(
        *KEY, tenant=pl.lit(K.UNATTRIBUTED_TENANT), **_NULL_WHO, kind=pl.lit(K.BUSY), rule=pl.lit(K.RULE_NO_HOLDER),
        gpu_seconds="busy", energy_j="busy_energy", memory_gb_seconds=_NO_MEMORY,
    )
    unplaced = u.filter("remainder").select(
        *KEY, tenant=pl.lit(K.UNATTRIBUTED_TENANT), **_NULL_WHO, kind=pl.lit(K.BUSY),
        rule=pl.lit(K.RULE_UNPLACED_REMAINDER), gpu_seconds=pl.col("busy") * pl.col("r"),
        energy_j=pl.col("busy_energy") * pl.col("r"), memory_gb_seconds=_NO_MEMORY,
    )
    unallocated = u.select(
        *KEY, tenant=pl.lit(K.PLATFORM_TENANT), **_NULL_WHO, kind=pl.lit(K.UNALLOCATED),
        rule=pl.lit(K.RULE_UNALLOCATED),
        gpu_seconds=(pl.col("capacity") - pl.col("busy")) * (1.0 - pl.col("held")),
        energy_j=pl.when(pl.col("measured")).then(pl.col("idle_energy") * (1.0 - pl.col("held")))
        .otherwise(pl.col("energy") * (1.0 - pl.col("held"))),
        memory_gb_seconds=_NO_MEMORY,
    )
    return pl.concat([nobody, unplaced, unallocated])


def unknown_holders(rows: pl.LazyFrame, flagged_units: pl.LazyFrame) -> pl.LazyFrame:
    """Re-home the unallocated idle of units whose agent could not read the allocations: unknown, not nobody.

    On such a unit the pods that ran processes (owners with a busy row and a
    pod) held it -- a pod reaches a GPU only through an allocation -- so its
    unallocated idle (GPU-seconds and joules) goes to them in equal parts as
    ``allocated_idle`` (rule ``idle_process_holders``); without such a pod it
    stays on ``platform`` under the rule ``allocations_unavailable``. Sums per
    unit are unchanged. ``rows``: owned rows (``_pod``, tenant, namespace, pod).
    """
    flag = rows.join(flagged_units.with_columns(_hit=pl.lit(True)), on=KEY, how="left").with_columns(
        _hit=pl.col("_hit").fill_null(False))
    moving = pl.col("_hit") & (pl.col("rule") == K.RULE_UNALLOCATED)
    moved = flag.filter(moving).drop("_hit")
    ran = (flag.filter(pl.col("_hit") & (pl.col("kind") == K.BUSY) & pl.col("pod").is_not_null())
           .select(*KEY, "_pod", "tenant", "namespace", "pod").unique(subset=[*KEY, "_pod"]))
    ran = ran.join(ran.group_by(KEY).agg(_n=pl.len()), on=KEY)
    split_idle = (moved.drop("_pod", "tenant", "namespace", "pod").join(ran, on=KEY)
                  .with_columns(pl.col("gpu_seconds", "energy_j") / pl.col("_n"), kind=pl.lit(K.ALLOCATED_IDLE),
                                rule=pl.lit(K.RULE_IDLE_PROCESS_HOLDERS)).drop("_n"))
    unknown = moved.join(ran.select(KEY), on=KEY, how="anti").with_columns(rule=pl.lit(K.RULE_HOLDERS_UNKNOWN))
    return pl.concat([flag.filter(~moving).drop("_hit"), split_idle, unknown], how="diagonal_relaxed")


def attribute(
    devices: pl.LazyFrame,
    processes: pl.LazyFrame,
    allocations: pl.LazyFrame,
    tenants: pl.LazyFrame,
    allocations_unavailable: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """Ledger rows (LEDGER_COLUMNS) for the given messages' devices.

    ``allocations_unavailable``: keys (MSG) of the messages whose agent could
    not read the allocations (``messages.allocations_unavailable`` set): their
    unallocated idle goes through ``unknown_holders``. Work on the process-
    and allocation-sized frames is keyed by KEY (ints); the unit's context
    (node, interval, uuid, model, ...) is joined once, at the end.
    """
    unit_frame = _keyed(units(devices))
    holder_rows, holder_totals = holders(allocations)
    process_rows, process_totals = evidence(processes)
    unit_table = unit_rules(unit_frame, holder_totals, process_totals, allocations_unavailable)
    # A zero line carries no information (e.g. no unallocated share on a fully held GPU);
    # below a picosecond it is float noise, whose presence would depend on summation order.
    keep = (pl.col("gpu_seconds").abs() > 1e-12) | pl.col("memory_gb_seconds").is_not_null()
    owned = (pl.concat([busy_by_process(process_rows, unit_table), by_share(unit_table, holder_rows)],
                       how="diagonal_relaxed")
             .filter(keep).join(owners(processes, allocations, tenants), on="_pod", how="left"))
    rows = pl.concat([owned, per_unit(unit_table).filter(keep)], how="diagonal_relaxed")
    if allocations_unavailable is not None:
        rows = unknown_holders(rows, unit_table.lazy().filter("holders_unknown").select(KEY))
    context = unit_table.lazy().select(*KEY, *UNIT, *CONTEXT)
    return rows.join(context, on=KEY, how="inner").select(LEDGER_COLUMNS)


def conservation_error(ledger: pl.LazyFrame, devices: pl.LazyFrame) -> pl.LazyFrame:
    """Per physical GPU and interval: capacity − Σ ledger GPU-seconds (should be ~0)."""
    capacity = devices.filter(pl.col("mig_index") == -1).select(
        *MSG, "gpu_index", capacity=(pl.col("interval_end_ns") - pl.col("interval_start_ns")) / 1e9
    )
    booked = ledger.group_by([*MSG, "gpu_index"]).agg(booked=pl.col("gpu_seconds").sum())
    return capacity.join(booked, on=[*MSG, "gpu_index"], how="left").with_columns(
        error=pl.col("capacity") - pl.col("booked").fill_null(0.0)
    )
