"""The ledger: every GPU-second and joule of capacity to exactly one tenant line.

For each GPU unit ``u`` (a whole GPU, a MIG slice, or the unconfigured
remainder of a GPU in MIG mode) and interval of length Δt (DESIGN.md)::

    capacity = Δt × slice_fraction
    busy     = util × capacity             util: device samples (MIG: GR_ENGINE_ACTIVE)
    busy_p   = busy × w_p                  w_p: share of p's per-process SM samples (the
                                           remainder they leave unexplained to listed,
                                           unsampled processes), else equal split among
                                           pod processes, else allocation share of the
                                           holders (also when only an MPS server is listed)
    idle     = capacity − busy
    idle_h   = idle × a_h                  a_h: allocation share (normalised if > 1)
    unalloc  = idle × (1 − Σ a_h)          the platform's line
    Σ busy_p + Σ idle_h + unalloc = capacity, exactly, every (u, interval)

A unit whose utilization is missing (MIG without DCGM profiling, a lost GPU)
has no busy figure: its held share is ``unmeasured`` (charged to the holder,
never reported as zero busy) and the rest is unallocated.

Energy follows the same split: busy energy ``E × util × w_p``, idle energy
``E × (1 − util) × a_h``. ``attribute`` is a pure LazyFrame -> LazyFrame
function (no IO; it materialises three shared intermediates of one chunk);
IO lives in ``gpuledger/analytics/job.py``. The busy rules, fallbacks included, are
tabled in docs/attribution.md; ``gpuledger/analytics/fastledger.py`` computes the same
rows on integer codes (the job's default path, checked against this function).
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


KEY = ["_ab", "_uk"]


def _pod_code() -> pl.Expr:
    """int64 code of the pod uid (global Categorical code; -1 = no pod)."""
    return pl.col("pod_uid").cast(pl.Categorical).to_physical().cast(pl.Int64).fill_null(-1)


def attribute(
    devices: pl.LazyFrame,
    processes: pl.LazyFrame,
    allocations: pl.LazyFrame,
    tenants: pl.LazyFrame,
) -> pl.LazyFrame:
    """Ledger rows (LEDGER_COLUMNS) for the given messages' devices.

    Work on the process- and allocation-sized frames is keyed by KEY (ints);
    the unit's context (node, interval, uuid, model, ...) is joined once, at
    the end. Only busy-by-process rows need a group-by (two processes of one
    pod on one unit); every other row set is unique per (unit, holder).
    """
    u = _keyed(units(devices))
    # Owners (pods, Slurm jobs, or none: code -1) once, with their tenant; rows carry only the code.
    owners = (
        pl.concat([processes.select("pod_uid", "namespace", "pod"), allocations.select("pod_uid", "namespace", "pod")])
        .unique(subset="pod_uid", keep="first")
        .join(tenants.select("pod_uid", "tenant"), on="pod_uid", how="left")
        .select(_pod=_pod_code(), tenant=pl.col("tenant").fill_null(K.UNATTRIBUTED_TENANT), namespace="namespace",
                pod="pod")
    )
    holders = (
        _keyed(allocations)
        .with_columns(_pod=_pod_code(), shared=pl.col("resource").str.contains("shared"))
        .group_by([*KEY, "_pod"])  # one holder per (unit, pod)
        .agg(share=pl.col("share").sum(), replica=pl.col("replica").max(), shared=pl.col("shared").any())
    )
    hold = holders.group_by(KEY).agg(
        share_sum=pl.col("share").sum(),
        n_holders=pl.len(),
        time_sliced=(pl.col("replica") >= 0).any(),
        fractional=(pl.col("shared") | (pl.col("share") < 1.0)).any(),
    )
    procs = (
        _keyed(processes)
        .select(
            *KEY, "samples", "used_memory_bytes",
            evidence=pl.col("sm_util_sum").fill_nan(None).fill_null(0.0).clip(0.0, None),
            has_pod=pl.col("pod_uid").is_not_null(),
            _pod=_pod_code(),
        )
        # listed with a context and a pod, but not one driver sample in the interval
        .with_columns(unsampled=pl.col("has_pod") & (pl.col("samples") == 0))
    ).collect().lazy()  # used twice (per-unit stats, busy rows)
    holders = holders.collect().lazy()
    pstat = procs.group_by(KEY).agg(
        n_procs=pl.len(), n_pod_procs=pl.col("has_pod").sum(), n_unsampled=pl.col("unsampled").sum(),
        n_sampled=(pl.col("samples") > 0).sum(),
        evidence_sum=pl.col("evidence").sum(),
    )
    u = (
        u.join(hold, on=KEY, how="left")
        .join(pstat, on=KEY, how="left")
        .with_columns(
            share_sum=pl.col("share_sum").fill_null(0.0),
            n_holders=pl.col("n_holders").fill_null(0),
            n_procs=pl.col("n_procs").fill_null(0),
            n_pod_procs=pl.col("n_pod_procs").fill_null(0),
            n_unsampled=pl.col("n_unsampled").fill_null(0),
            n_sampled=pl.col("n_sampled").fill_null(0),
            evidence_sum=pl.col("evidence_sum").fill_null(0.0),
        )
        .with_columns(
            # Rounded so that shares like 3 x 1/3 hold exactly 1 whatever the summation order.
            held=pl.col("share_sum").round(12).clip(0.0, 1.0),
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
        .with_columns(
            # Inconsistent evidence: samples of the sampled processes explain less busy time than
            # the device measured, and some listed process got no sample at all. Each per-process
            # sample stands for Δt / (device samples) seconds; the unexplained remainder goes to the
            # unsampled processes (rule unsampled_remainder), as a fraction r of busy -- all of it
            # when the sampled ones reported only zeros.
            remainder=(pl.col("n_unsampled") > 0) & (pl.col("n_sampled") > 0) & (pl.col("util_samples") > 0)
            & (pl.col("busy") > 0),
        )
        .with_columns(
            r=pl.when(pl.col("remainder"))
            .then((1.0 - pl.col("evidence_sum") * pl.col("capacity") / pl.col("util_samples") / pl.col("busy"))
                  .clip(0.0, 1.0))
            .otherwise(0.0),
        )
    )
    # The unit frame feeds every row set below; Polars would otherwise re-derive it (and the
    # group-bys behind it) per use. Materialising it, the process rows and the holders halves
    # the CPU time; the function stays pure (no IO) and returns a LazyFrame.
    u = u.collect().lazy()
    context = u.select(*KEY, *UNIT, *CONTEXT)
    unit_cols = u.select(*KEY, "capacity", "busy", "measured", "norm", "held", "n_procs", "n_pod_procs",
                         "r", "remainder",
                         "n_unsampled",
                         "evidence_sum", "share_sum", "n_holders", "energy", "busy_energy", "idle_energy",
                         dt_s=(pl.col("interval_end_ns") - pl.col("interval_start_ns")) / 1e9)
    # Which rule splits a measured unit's busy time (first that applies):
    #   per-process samples > 0                       -> process_samples
    #   no samples, some listed process has a pod      -> equal split among those (pod-less ones get 0)
    #   only pod-less processes (an MPS server, a host
    #   daemon) and the unit is held                   -> holders by allocation share
    #   only pod-less processes, nobody holds the unit -> equal split among them (unattributed)
    #   no process listed                              -> holders by share, else nobody's
    server_only = (pl.col("n_pod_procs") == 0) & (pl.col("share_sum") > 0)
    null_who = {"namespace": pl.lit(None, pl.String), "pod": pl.lit(None, pl.String)}

    # Busy, by process evidence.
    by_process = (
        procs.select(*KEY, "_pod", "evidence", "has_pod", "unsampled", "used_memory_bytes")
        .join(unit_cols.filter(pl.col("measured") & (pl.col("n_procs") > 0)), on=KEY)
        .filter((pl.col("evidence_sum") > 0) | ~server_only)
        .with_columns(
            w=pl.when(pl.col("remainder") & pl.col("unsampled")).then(pl.col("r") / pl.col("n_unsampled"))
            .when(pl.col("evidence_sum") > 0)
            .then((1.0 - pl.col("r")) * pl.col("evidence") / pl.col("evidence_sum"))
            .when(pl.col("remainder")).then(0.0)  # sampled, reported zero, all busy went to the unsampled
            .when(pl.col("n_pod_procs") > 0)
            .then(pl.col("has_pod").cast(pl.Float64) / pl.col("n_pod_procs"))
            .otherwise(1.0 / pl.col("n_procs")),
            _rule=pl.when(pl.col("remainder") & pl.col("unsampled")).then(1)
            .when((pl.col("evidence_sum") > 0) | pl.col("remainder")).then(0).otherwise(2),
            memory=pl.col("used_memory_bytes").fill_nan(None) / 1e9 * pl.col("dt_s"),  # GB x s held
        )
        .group_by([*KEY, "_pod", "_rule"])
        .agg(
            gpu_seconds=(pl.col("busy") * pl.col("w")).sum(),
            # Missing stays missing: a sum over only-null values is null, not 0.
            energy_j=pl.when(pl.col("busy_energy").is_not_null().any())
            .then((pl.col("busy_energy") * pl.col("w")).sum()),
            memory_gb_seconds=pl.when(pl.col("memory").is_not_null().any()).then(pl.col("memory").sum()),
        )
        .with_columns(
            kind=pl.lit(K.BUSY),
            rule=pl.when(pl.col("_rule") == 0).then(pl.lit(K.RULE_PROCESS_SAMPLES))
            .when(pl.col("_rule") == 1).then(pl.lit(K.RULE_UNSAMPLED_REMAINDER))
            .otherwise(pl.lit(K.RULE_EQUAL_PROCESSES)),
        )
        .drop("_rule")
    )
    # Busy with no (pod) process listed: the holders by allocation share, else nobody's.
    no_proc = unit_cols.filter(
        pl.col("measured") & (pl.col("busy") > 0)
        & ((pl.col("n_procs") == 0) | ((pl.col("evidence_sum") <= 0) & server_only))
    )
    has_share = pl.col("share_sum") > 0  # holders listed with zero share hold nothing
    no_memory = pl.lit(None, pl.Float64)
    by_holder = no_proc.filter(has_share).join(holders, on=KEY).select(
        *KEY, "_pod",
        rule=pl.when(pl.col("n_procs") == 0).then(pl.lit(K.RULE_ALLOCATION_SHARE))
        .otherwise(pl.lit(K.RULE_SERVER_ONLY)),
        kind=pl.lit(K.BUSY),
        gpu_seconds=pl.col("busy") * pl.col("share") / pl.col("share_sum"),
        energy_j=pl.col("busy_energy") * pl.col("share") / pl.col("share_sum"),
        memory_gb_seconds=no_memory,
    )
    by_nobody = no_proc.filter(~has_share).select(
        *KEY, tenant=pl.lit(K.UNATTRIBUTED_TENANT), **null_who,
        rule=pl.lit(K.RULE_NO_HOLDER), kind=pl.lit(K.BUSY), gpu_seconds="busy", energy_j="busy_energy",
        memory_gb_seconds=no_memory,
    )
    # Idle (or unmeasured) capacity, by allocation share.
    held_rows = unit_cols.join(holders, on=KEY).with_columns(a=pl.col("share") / pl.col("norm"))
    idle_held = held_rows.select(
        *KEY, "_pod",
        rule=pl.when(pl.col("measured")).then(pl.lit(K.RULE_IDLE_SHARE)).otherwise(pl.lit(K.RULE_MIG_UNMEASURED)),
        kind=pl.when(pl.col("measured")).then(pl.lit(K.ALLOCATED_IDLE)).otherwise(pl.lit(K.UNMEASURED)),
        gpu_seconds=pl.when(pl.col("measured"))
        .then((pl.col("capacity") - pl.col("busy")) * pl.col("a"))
        .otherwise(pl.col("capacity") * pl.col("a")),
        energy_j=pl.when(pl.col("measured"))
        .then(pl.col("idle_energy") * pl.col("a"))
        .otherwise(pl.col("energy") * pl.col("a")),
        memory_gb_seconds=no_memory,
    )
    unallocated = unit_cols.select(
        *KEY, tenant=pl.lit(K.PLATFORM_TENANT), **null_who,
        rule=pl.lit(K.RULE_UNALLOCATED), kind=pl.lit(K.UNALLOCATED),
        gpu_seconds=(pl.col("capacity") - pl.col("busy")) * (1.0 - pl.col("held")),
        energy_j=pl.when(pl.col("measured"))
        .then(pl.col("idle_energy") * (1.0 - pl.col("held")))
        .otherwise(pl.col("energy") * (1.0 - pl.col("held"))),
        memory_gb_seconds=no_memory,
    )
    # A zero line carries no information (e.g. no unallocated share on a fully held GPU);
    # below a picosecond it is float noise, whose presence would depend on summation order.
    keep = (pl.col("gpu_seconds").abs() > 1e-12) | pl.col("memory_gb_seconds").is_not_null()
    owned = pl.concat([by_process, by_holder, idle_held], how="diagonal_relaxed").filter(keep)
    owned = owned.join(owners, on="_pod", how="left").drop("_pod")
    rows = pl.concat([owned, by_nobody.filter(keep), unallocated.filter(keep)], how="diagonal_relaxed")
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
