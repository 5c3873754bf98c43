"""The ledger: every GPU-second and joule of capacity to exactly one tenant line.

For each GPU unit ``u`` (a whole GPU, a MIG slice, or the unconfigured
remainder of a GPU in MIG mode) and interval of length Δt (DESIGN.md)::

    capacity = Δt × slice_fraction
    busy     = util × capacity             util: device samples (MIG: GR_ENGINE_ACTIVE)
    busy_p   = busy × w_p                  w_p: share of p's per-process SM samples,
                                           else equal split among processes present,
                                           else allocation share of the holders
    idle     = capacity − busy
    idle_h   = idle × a_h                  a_h: allocation share (normalised if > 1)
    unalloc  = idle × (1 − Σ a_h)          the platform's line
    Σ busy_p + Σ idle_h + unalloc = capacity, exactly, every (u, interval)

A unit whose utilization is missing (MIG without DCGM profiling, a lost GPU)
has no busy figure: its held share is ``unmeasured`` (charged to the holder,
never reported as zero busy) and the rest is unallocated.

Energy follows the same split: busy energy ``E × util × w_p``, idle energy
``E × (1 − util) × a_h``. ``attribute`` is a pure LazyFrame -> LazyFrame
function; IO lives in ``analytics/job.py``.
"""

from __future__ import annotations

import polars as pl

from gpuledger.analytics import kinds as K

MSG = ["agent_id", "boot_id", "seq"]
UNIT = [*MSG, "gpu_index", "mig_index"]
CONTEXT = ["node", "interval_start_ns", "interval_end_ns", "gpu_uuid", "model", "profile", "sharing"]
LEDGER_COLUMNS = [
    *MSG, "node", "interval_start_ns", "interval_end_ns", "gpu_uuid", "gpu_index", "mig_index",
    "model", "profile", "sharing", "kind", "tenant", "namespace", "pod", "rule",
    "gpu_seconds", "energy_j", "memory_gb_seconds",
]


def units(devices: pl.LazyFrame) -> pl.LazyFrame:
    """Device rows -> capacity units with capacity (s), util (0..1 or null), energy (J or null)."""
    dev = devices.with_columns(dt=(pl.col("interval_end_ns") - pl.col("interval_start_ns")) / 1e9)
    physical = dev.filter(pl.col("mig_index") == -1)
    mig = dev.filter(pl.col("mig_index") >= 0)
    configured = mig.group_by([*MSG, "gpu_index"]).agg(frac_sum=pl.col("slice_fraction").sum())
    parent = physical.join(configured, on=[*MSG, "gpu_index"], how="left").with_columns(
        energy=pl.col("energy_delta_mj") / 1000.0
    )
    base = [*MSG, "node", "interval_start_ns", "interval_end_ns", "gpu_index"]
    whole = parent.filter(pl.col("frac_sum").is_null()).select(
        *base, "mig_index", is_mig=pl.lit(False), gpu_uuid="uuid", model="model", profile="profile",
        capacity="dt", util="gpu_util", energy="energy",
    )
    remainder = parent.filter(pl.col("frac_sum").is_not_null()).select(
        *base, "mig_index", is_mig=pl.lit(True), gpu_uuid="uuid", model="model", profile=pl.lit(None, pl.String),
        capacity=pl.col("dt") * (1.0 - pl.col("frac_sum")).clip(0.0, 1.0),
        util=pl.lit(0.0),  # nothing runs on unconfigured slices
        energy=pl.col("energy") * (1.0 - pl.col("frac_sum")).clip(0.0, 1.0),
    )
    slices = mig.join(
        parent.select(*MSG, "gpu_index", parent_uuid="uuid", parent_energy="energy"), on=[*MSG, "gpu_index"]
    ).select(
        *base, "mig_index", is_mig=pl.lit(True), gpu_uuid="parent_uuid", model="model", profile="profile",
        capacity=pl.col("dt") * pl.col("slice_fraction"), util="gr_engine_active",
        energy=pl.col("parent_energy") * pl.col("slice_fraction"),
    )
    return pl.concat([whole, remainder, slices], how="vertical_relaxed").with_columns(
        util=pl.col("util").clip(0.0, 1.0)
    )


def attribute(
    devices: pl.LazyFrame,
    processes: pl.LazyFrame,
    allocations: pl.LazyFrame,
    tenants: pl.LazyFrame,
) -> pl.LazyFrame:
    """Ledger rows (LEDGER_COLUMNS) for the given messages' devices."""
    u = units(devices)
    who = tenants.select("pod_uid", "tenant")
    holders = (
        allocations.join(who, on="pod_uid", how="left")
        .with_columns(tenant=pl.col("tenant").fill_null(K.UNATTRIBUTED_TENANT))
        .group_by([*UNIT, "tenant", "namespace", "pod"])
        .agg(share=pl.col("share").sum(), replica=pl.col("replica").max(), resource=pl.col("resource").first())
    )
    hold = holders.group_by(UNIT).agg(
        share_sum=pl.col("share").sum(),
        n_holders=pl.len(),
        time_sliced=(pl.col("replica") >= 0).any(),
        fractional=(pl.col("resource").str.contains("shared") | (pl.col("share") < 1.0)).any(),
    )
    procs = (
        processes.join(who, on="pod_uid", how="left")
        .with_columns(tenant=pl.col("tenant").fill_null(K.UNATTRIBUTED_TENANT))
        .with_columns(evidence=pl.col("sm_util_sum").fill_null(0.0).clip(0.0, None))
    )
    pstat = procs.group_by(UNIT).agg(n_procs=pl.len(), evidence_sum=pl.col("evidence").sum())

    u = (
        u.join(hold, on=UNIT, how="left")
        .join(pstat, on=UNIT, how="left")
        .with_columns(
            share_sum=pl.col("share_sum").fill_null(0.0),
            n_holders=pl.col("n_holders").fill_null(0),
            n_procs=pl.col("n_procs").fill_null(0),
            evidence_sum=pl.col("evidence_sum").fill_null(0.0),
        )
        .with_columns(
            held=pl.col("share_sum").clip(0.0, 1.0),
            norm=pl.max_horizontal(pl.col("share_sum"), pl.lit(1.0)),
            measured=pl.col("util").is_not_null(),
            sharing=pl.when(pl.col("is_mig")).then(pl.lit("mig"))
            .when(pl.col("n_holders") == 0).then(pl.lit("unallocated"))
            .when(pl.col("time_sliced")).then(pl.lit("time_sliced"))
            .when(pl.col("fractional")).then(pl.lit("fractional"))
            .otherwise(pl.lit("exclusive")),
        )
        .with_columns(
            busy=pl.when(pl.col("measured")).then(pl.col("util") * pl.col("capacity")).otherwise(0.0),
            busy_energy=pl.col("energy") * pl.col("util"),
            idle_energy=pl.col("energy") * (1.0 - pl.col("util")),
        )
    )
    ctx = [*UNIT, *CONTEXT]
    unit_cols = u.select(*ctx, "capacity", "busy", "measured", "norm", "held", "n_procs", "evidence_sum",
                         "share_sum", "n_holders", "energy", "busy_energy", "idle_energy")

    # Busy, by process evidence.
    by_process = (
        procs.join(unit_cols.filter(pl.col("measured") & (pl.col("n_procs") > 0)), on=UNIT)
        .with_columns(
            w=pl.when(pl.col("evidence_sum") > 0)
            .then(pl.col("evidence") / pl.col("evidence_sum"))
            .otherwise(1.0 / pl.col("n_procs")),
            rule=pl.when(pl.col("evidence_sum") > 0)
            .then(pl.lit(K.RULE_PROCESS_SAMPLES))
            .otherwise(pl.lit(K.RULE_EQUAL_PROCESSES)),
        )
        .select(
            *ctx, "tenant", "namespace", "pod", "rule", kind=pl.lit(K.BUSY),
            gpu_seconds=pl.col("busy") * pl.col("w"), energy_j=pl.col("busy_energy") * pl.col("w"),
            memory_gb_seconds=pl.col("used_memory_bytes") / 1e9
            * (pl.col("interval_end_ns") - pl.col("interval_start_ns")) / 1e9,
        )
    )
    # Busy with no process listed: the holders by allocation share, else nobody's.
    no_proc = unit_cols.filter(pl.col("measured") & (pl.col("n_procs") == 0) & (pl.col("busy") > 0))
    has_share = pl.col("share_sum") > 0  # holders listed with zero share hold nothing
    by_holder = no_proc.filter(has_share).join(holders, on=UNIT).select(
        *ctx, "tenant", "namespace", "pod", rule=pl.lit(K.RULE_ALLOCATION_SHARE), kind=pl.lit(K.BUSY),
        gpu_seconds=pl.col("busy") * pl.col("share") / pl.col("share_sum"),
        energy_j=pl.col("busy_energy") * pl.col("share") / pl.col("share_sum"),
        memory_gb_seconds=pl.lit(None, pl.Float64),
    )
    by_nobody = no_proc.filter(~has_share).select(
        *ctx, tenant=pl.lit(K.UNATTRIBUTED_TENANT), namespace=pl.lit(None, pl.String), pod=pl.lit(None, pl.String),
        rule=pl.lit(K.RULE_NO_HOLDER), kind=pl.lit(K.BUSY), gpu_seconds="busy", energy_j="busy_energy",
        memory_gb_seconds=pl.lit(None, pl.Float64),
    )
    # Idle (or unmeasured) capacity, by allocation share.
    held_rows = unit_cols.join(holders, on=UNIT).with_columns(a=pl.col("share") / pl.col("norm"))
    idle_held = held_rows.select(
        *ctx, "tenant", "namespace", "pod",
        rule=pl.when(pl.col("measured")).then(pl.lit(K.RULE_IDLE_SHARE)).otherwise(pl.lit(K.RULE_MIG_UNMEASURED)),
        kind=pl.when(pl.col("measured")).then(pl.lit(K.ALLOCATED_IDLE)).otherwise(pl.lit(K.UNMEASURED)),
        gpu_seconds=pl.when(pl.col("measured"))
        .then((pl.col("capacity") - pl.col("busy")) * pl.col("a"))
        .otherwise(pl.col("capacity") * pl.col("a")),
        energy_j=pl.when(pl.col("measured"))
        .then(pl.col("idle_energy") * pl.col("a"))
        .otherwise(pl.col("energy") * pl.col("a")),
        memory_gb_seconds=pl.lit(None, pl.Float64),
    )
    unallocated = unit_cols.select(
        *ctx, tenant=pl.lit(K.PLATFORM_TENANT), namespace=pl.lit(None, pl.String), pod=pl.lit(None, pl.String),
        rule=pl.lit(K.RULE_UNALLOCATED), kind=pl.lit(K.UNALLOCATED),
        gpu_seconds=(pl.col("capacity") - pl.col("busy")) * (1.0 - pl.col("held")),
        energy_j=pl.when(pl.col("measured"))
        .then(pl.col("idle_energy") * (1.0 - pl.col("held")))
        .otherwise(pl.col("energy") * (1.0 - pl.col("held"))),
        memory_gb_seconds=pl.lit(None, pl.Float64),
    )
    rows = pl.concat([by_process, by_holder, by_nobody, idle_held, unallocated], how="diagonal_relaxed")
    keys = [c for c in LEDGER_COLUMNS if c not in ("gpu_seconds", "energy_j", "memory_gb_seconds")]
    return (
        rows.group_by(keys)
        .agg(
            gpu_seconds=pl.col("gpu_seconds").sum(),
            # Missing stays missing: a sum over only-null energies is null, not 0.
            energy_j=pl.when(pl.col("energy_j").is_not_null().any()).then(pl.col("energy_j").sum()),
            memory_gb_seconds=pl.when(pl.col("memory_gb_seconds").is_not_null().any())
            .then(pl.col("memory_gb_seconds").sum()),
        )
        # A zero line carries no information (e.g. no unallocated share on a fully held GPU).
        .filter((pl.col("gpu_seconds") != 0.0) | pl.col("memory_gb_seconds").is_not_null())
        .select(LEDGER_COLUMNS)
    )


def conservation_error(ledger: pl.LazyFrame, devices: pl.LazyFrame) -> pl.LazyFrame:
    """Per physical GPU and interval: capacity − Σ ledger GPU-seconds (should be ~0)."""
    capacity = devices.filter(pl.col("mig_index") == -1).select(
        *MSG, "gpu_index", capacity=(pl.col("interval_end_ns") - pl.col("interval_start_ns")) / 1e9
    )
    booked = ledger.group_by([*MSG, "gpu_index"]).agg(booked=pl.col("gpu_seconds").sum())
    return capacity.join(booked, on=[*MSG, "gpu_index"], how="left").with_columns(
        error=pl.col("capacity") - pl.col("booked").fill_null(0.0)
    )
