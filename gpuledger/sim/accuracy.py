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

**Cost per 1M tokens** (:func:`simulate_tokens`, :func:`tokens_compare`): the
simulated pods are inference servers whose vLLM-named token counters follow
their true busy time (``gpuledger.sim.vllm``); a process serves them, a real
Prometheus scrapes it, and the work-units import
(``gpuledger.analytics.work_units``) reads them back into ``work_units``.
Per tenant, the cost of a million tokens is then computed three ways: the
truth (true busy GPU-hours priced), gpuledger's (the used GPU-hours the unit
report measured, priced: "busy only") and OpenCost's (requested GPU-hours --
request share x wall time held -- priced, over the same tokens).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path

import polars as pl

from gpuledger import wire
from gpuledger.agent.backend import GpuBackend
from gpuledger.agent.sampler import Sampler
from gpuledger.analytics import kinds as K
from gpuledger.analytics import work_units as wu
from gpuledger.analytics.job import run_attribution
from gpuledger.analytics.prices import PriceBook
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.sim import vllm
from gpuledger.sim.fleetsim import FleetSim
from gpuledger.sim.promserver import prometheus
from gpuledger.store import Store
from gpuledger.timeutil import HOUR_NS, from_ns

__all__ = ["MIN_TRUE_S", "TOKEN_UNITS", "compare", "errors", "simulate", "simulate_tokens", "tokens_compare"]

#: The work units the token comparison imports. The simulated counters start at 0 inside the hour they are
#: imported for, so the last value in the hour is the hour's work (``increase()`` would extrapolate).
TOKEN_UNITS = wu.parse_work_units("""
[[unit]]
name = "tokens"
per = 1000000
query = '''sum by (namespace, pod) (last_over_time(vllm:prompt_tokens_total[1h])
         + last_over_time(vllm:generation_tokens_total[1h]))'''
""", "gpuledger.sim.accuracy.TOKEN_UNITS")

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


def errors(table: pl.DataFrame, column: str, truth: str = "true_s") -> tuple[float, float]:
    """(mean, worst) |column - truth| / truth in percent over tenants with true_s >= MIN_TRUE_S."""
    t = table.filter(pl.col("true_s") >= MIN_TRUE_S)
    err = ((t[column] - t[truth]).abs() / t[truth] * 100).to_list()
    return (sum(err) / len(err), max(err)) if err else (math.nan, math.nan)


def simulate_tokens(build: Callable[[int], FleetSim], seed: int, tick_s: float, horizon_s: float,
                    prometheus_binary: str, workdir: Path | None = None,
                    clock: Callable[[], float] = time.time) -> tuple[FleetSim, Store]:
    """Simulate one hour of inference pods and import their tokens through a real Prometheus.

    ``build(start_us)`` makes the fleet starting at the current UTC hour (``clock``), ``horizon_s`` <= 3600:
    the ledger and the tokens fall in that one hour. Returns the simulator and the attributed Store, whose
    ``work_units`` hold what Prometheus answered (unit ``tokens``)."""
    if not 0 < horizon_s <= 3600:
        raise ValueError("horizon_s must be in (0, 3600]: the tokens are imported for one hour")
    hour_ns = int(clock() * 1e9) // HOUR_NS * HOUR_NS
    sim = build(hour_ns // 1000)
    store = simulate(sim, tick_s, horizon_s)
    pods = vllm.token_counts(sim, seed)
    with tempfile.TemporaryDirectory(prefix="gpuledger-prom-") as tmp, \
            vllm.VllmExporter(pods, not_after_s=(hour_ns + HOUR_NS) / 1e9 - 0.001, clock=clock) as exporter, \
            prometheus(prometheus_binary, [f"127.0.0.1:{exporter.port}"], workdir or Path(tmp),
                       ready_query="vllm:generation_tokens_total") as url:
        wu.import_hours(store, wu.PrometheusHTTP(url), TOKEN_UNITS, [hour_ns])
    return sim, store


def tokens_compare(sim: FleetSim, store: Store, book: PriceBook, rules: TenancyRules | None = None) -> pl.DataFrame:
    """Per tenant with tokens: cost per 1M tokens the true way, gpuledger's way and OpenCost's way.

    Over the pods with a ``tokens`` row in ``work_units`` (the same pods and tokens for all three):
    ``true_per_1m`` = true busy GPU-hours x price / tokens x 1e6; ``ours_per_1m`` = the used GPU-hours
    of :func:`~gpuledger.analytics.work_units.unit_report` ("busy only") x price / its tokens x 1e6;
    ``opencost_per_1m`` = requested GPU-hours (request share x wall time held x slice fraction) x price
    / tokens x 1e6. Prices: the book's rate for each GPU's model on the simulation's first day. ``true_s``
    is the tenant's true busy GPU-seconds of those pods (for :func:`errors`' threshold)."""
    rules = rules or TenancyRules()
    day = from_ns(sim.timing.start_us * 1000).date()
    tenants = rules.tenant_table(store.query("SELECT pod_uid, namespace, labels FROM pods"))
    names = sim.pods().select("pod_uid", "namespace", pod="pod_name")
    work = store.query("SELECT namespace, pod, sum(count) AS tokens FROM work_units WHERE unit = 'tokens' "
                       "GROUP BY ALL")
    work = (work.join(names, on=["namespace", "pod"], how="inner").join(tenants, on="pod_uid", how="left")
            .with_columns(tenant=pl.col("tenant").fill_null(K.UNATTRIBUTED_TENANT)))
    models = sim.capacity_truth().filter(pl.col("mig_index") == -1).select("node", "gpu_index", "model")
    rate = {m: float(book.price_for(m, None, day).per_gpu_hour) for m in models["model"].unique()}

    def priced(frame: pl.DataFrame, seconds: pl.Expr) -> pl.DataFrame:
        """Per tenant, over the pods with tokens: GPU-seconds and their cost."""
        return (frame.join(models, on=["node", "gpu_index"], how="left")
                .join(work.select("pod_uid", "tenant"), on="pod_uid", how="inner")
                .group_by("tenant").agg(s=seconds.sum(),
                                        cost=(seconds / 3600 * pl.col("model").replace_strict(rate)).sum()))

    true = priced(sim.truth(), pl.col("busy_gpu_seconds")).rename({"s": "true_s", "cost": "true_cost"})
    cap = sim.capacity_truth().select("node", "gpu_index", "mig_index", "slice_fraction")
    held = sim.holdings_truth().join(cap, on=["node", "gpu_index", "mig_index"], how="left")
    requested = priced(held, pl.col("held_seconds") * pl.col("share") * pl.col("slice_fraction")).select(
        "tenant", opencost_cost="cost")
    month = f"{day.year:04d}-{day.month:02d}"
    ours_rows = [r for r in wu.unit_report(store, month, book, TOKEN_UNITS) if r["unit"] == "tokens"]
    ours = pl.DataFrame([{"tenant": r["tenant"], "ours_tokens": r["count"],
                          "ours_cost": float(Decimal(r["used_gpu_hours"]) * Decimal(rate[r["model"]]))}
                         for r in ours_rows],
                        schema={"tenant": pl.String, "ours_tokens": pl.Float64, "ours_cost": pl.Float64})
    ours = ours.group_by("tenant").agg(pl.col("ours_tokens", "ours_cost").sum())
    out = work.group_by("tenant").agg(pl.col("tokens").sum())
    for f in (true, requested, ours):
        out = out.join(f, on="tenant", how="left")
    per = 1e6
    return (out.with_columns(true_per_1m=pl.col("true_cost") / pl.col("tokens") * per,
                             ours_per_1m=pl.col("ours_cost") / pl.col("ours_tokens") * per,
                             opencost_per_1m=pl.col("opencost_cost") / pl.col("tokens") * per)
            .sort("tenant"))
