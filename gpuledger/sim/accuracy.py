"""Attribution accuracy against the simulator's ground truth (used by the accuracy benchmark and tests).

``simulate`` runs the whole agent path -- simulator -> Sampler (driver sample
buffers) -> wire encode/decode -> DuckDB Store -> ``run_attribution`` -- and
``compare`` puts, per tenant, attributed busy GPU-seconds next to the truth
(``FleetSim.truth()``) and two baselines computed from the same run:

- ``request_s``: each pod charged request share x wall time held (what
  OpenCost/Kubecost charge; a MIG device: its slice of the GPU x time held);
- ``dev_x_req_s``: the device's measured busy split by request share (device
  utilization, e.g. dcgm-exporter, divided by allocation; no per-process data).

``errors`` gives mean and worst |x - true| / true (percent) over tenants with
at least ``MIN_TRUE_S`` true busy GPU-seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import polars as pl

from gpuledger import wire
from gpuledger.agent.backend import GpuBackend
from gpuledger.agent.sampler import Sampler
from gpuledger.analytics import kinds as K
from gpuledger.analytics.job import run_attribution
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.sim.fleetsim import FleetSim
from gpuledger.store import Store

__all__ = ["MIN_TRUE_S", "compare", "errors", "simulate"]

MIN_TRUE_S = 60.0  # tenants with less true busy time are too small for a relative error


def simulate(sim: FleetSim, tick_s: float, horizon_s: float, *, backends: Sequence[GpuBackend] | None = None,
             after_advance: Callable[[], None] | None = None) -> Store:
    """Run the agent path over ``horizon_s`` at ``tick_s`` into an in-memory Store, attributed.

    ``backends``: one GPU backend per node in place of the simulator's own (e.g. NvmlBackend over
    the fake libnvidia-ml, gpuledger.sim.fakenvml); ``after_advance`` runs after each clock step,
    before the agents tick (there: write the scenario the fake library reads)."""
    samplers = [Sampler(b, n, node=n.spec.name, boot_id="acc", cluster=sim.spec.cluster)
                for n, b in zip(sim.nodes, backends if backends is not None else sim.nodes, strict=True)]
    if after_advance is not None:
        after_advance()
    for s in samplers:
        s.tick()  # prime
    store = Store()
    batch: list[wire.Message] = []
    for _ in range(int(round(horizon_s / tick_s))):
        sim.advance(tick_s)
        if after_advance is not None:
            after_advance()
        for s in samplers:
            msg = s.tick()
            if msg is not None:
                batch.append(wire.decode(wire.encode(msg)))
        if len(batch) >= 2000:
            store.write_messages(batch)
            batch = []
    if batch:
        store.write_messages(batch)
    run_attribution(store)
    return store


def compare(sim: FleetSim, store: Store, rules: TenancyRules | None = None) -> pl.DataFrame:
    """Per tenant: true busy, attributed busy and the two baselines (GPU-seconds).

    ``error_pct`` is the signed error of the attributed busy time against the
    truth (infinite or NaN where the truth is zero).
    """
    rules = rules or TenancyRules()
    tenants = rules.tenant_table(store.query("SELECT pod_uid, namespace, labels FROM pods"))

    def tenant_of(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.join(tenants, on="pod_uid", how="left").with_columns(
            tenant=pl.col("tenant").fill_null(K.UNATTRIBUTED_TENANT))

    truth = tenant_of(sim.truth()).group_by("tenant").agg(true_s=pl.col("busy_gpu_seconds").sum())
    ledger = store.query("SELECT tenant, sum(gpu_seconds) AS ledger_s FROM ledger WHERE kind = 'busy' GROUP BY 1")
    cap = sim.capacity_truth().select("node", "gpu_index", "mig_index", "slice_fraction")
    held = sim.holdings_truth().join(cap, on=["node", "gpu_index", "mig_index"], how="left")
    request = tenant_of(held).group_by("tenant").agg(
        request_s=(pl.col("held_seconds") * pl.col("share") * pl.col("slice_fraction")).sum())
    dev = store.query("""
        WITH a AS (SELECT agent_id, boot_id, seq, gpu_index, mig_index, pod_uid, share,
                          share / sum(share) OVER (PARTITION BY agent_id, boot_id, seq, gpu_index, mig_index) AS w
                   FROM allocations WHERE share > 0)
        SELECT a.pod_uid, sum(coalesce(d.gpu_util, d.gr_engine_active) * d.slice_fraction
                              * (d.interval_end_ns - d.interval_start_ns) / 1e9 * a.w) AS dev_x_req_s
        FROM devices d JOIN a USING (agent_id, boot_id, seq, gpu_index, mig_index) GROUP BY 1""")
    dev = tenant_of(dev).group_by("tenant").agg(dev_x_req_s=pl.col("dev_x_req_s").sum())
    out = truth
    for f in (ledger, request, dev):
        out = out.join(f, on="tenant", how="full", coalesce=True)
    return (out.with_columns(pl.exclude("tenant").fill_null(0.0))
            .with_columns(error_pct=100 * (pl.col("ledger_s") - pl.col("true_s")) / pl.col("true_s"))
            .sort("tenant"))


def errors(table: pl.DataFrame, column: str) -> tuple[float, float]:
    """(mean, worst) |column - true| / true in percent over tenants with true >= MIN_TRUE_S."""
    t = table.filter(pl.col("true_s") >= MIN_TRUE_S)
    err = ((t[column] - t["true_s"]).abs() / t["true_s"] * 100).to_list()
    return (sum(err) / len(err), max(err)) if err else (math.nan, math.nan)
