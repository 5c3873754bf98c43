"""Cost per 1M tokens, gpuledger's way beside OpenCost's, against the simulator's truth.

Inference pods on one time-sliced H100 (three replicas, share 1/3 each; one pod
busy most of the time, one lightly, one in between): their vLLM-named token
counters follow their true busy time (gpuledger/sim/vllm.py), a process serves
them, a real Prometheus scrapes it and the work-units import reads them back.
Every expected figure is recomputed here from the simulator's truth and the
ledger, by a different route than gpuledger/sim/accuracy.py takes.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import httpx
import polars as pl
import pytest

from gpuledger.analytics.prices import default_price_book
from gpuledger.sim import vllm
from gpuledger.sim.accuracy import errors, simulate_tokens, tokens_compare
from gpuledger.sim.fleetsim import FleetSim
from gpuledger.sim.scenarios import H100
from gpuledger.sim.spec import FleetSpec, GpuSpec, Holding, NodeSpec, PodSpec, ProcSpec
from tests.support.system import need_binary

HORIZON = 600.0
TICK = 10.0


def small_fleet(start_us: int) -> FleetSim:
    """One H100 time-sliced by 3: tenants a (heavy), b (light), c (medium); c's pod leaves at 400 s."""
    pods = []
    for r, (tenant, floor, end) in enumerate((("a", 0.6, math.inf), ("b", 0.12, math.inf), ("c", 0.25, 400.0))):
        pods.append(PodSpec(f"uid-{tenant}", f"ns-{tenant}", f"llm-{tenant}", (("team", tenant),), "main",
                            (Holding(0, -1, "nvidia.com/gpu", 1 / 3, r),),
                            (ProcSpec(gpu=0, start_s=5.0 + r, end_s=end - 2 if end < math.inf else math.inf,
                                      series=r, scale=0.3, floor=floor),),
                            start_s=0.0, end_s=end))
    return FleetSim(FleetSpec((NodeSpec("inf-node", (GpuSpec(H100),), tuple(pods)),)), seed=3, start_us=start_us)


def test_token_counters_follow_true_busy_time_and_are_stamped_inside_the_hour() -> None:
    sim = small_fleet(1_767_225_600_000_000)
    sim.advance(300.0)
    pods = vllm.token_counts(sim, seed=3)
    busy = sim.truth().group_by("pod_name").agg(pl.col("busy_gpu_seconds").sum())
    by_pod = dict(busy.iter_rows())
    assert sorted(p.pod for p in pods) == ["llm-a", "llm-b", "llm-c"]
    for p in pods:  # integers, in the drawn rate range per true busy second
        rate = (p.prompt + p.generation) / by_pod[p.pod]
        assert vllm.RATE_RANGE[0] - 1 <= rate <= vllm.RATE_RANGE[1] + 1 and p.prompt > 0 and p.generation > 0
    now = [1_000.0]
    with vllm.VllmExporter(pods, not_after_s=1_500.0, clock=lambda: now[0]) as exporter:
        first = httpx.get(f"http://127.0.0.1:{exporter.port}/metrics").text
        now[0] = 2_000.0  # the wall clock passed the end of the simulated hour: stamped at its end
        second = httpx.get(f"http://127.0.0.1:{exporter.port}/metrics").text
    a = next(p for p in pods if p.pod == "llm-a")
    assert (f'vllm:prompt_tokens_total{{model_name="{a.model_name}",engine="0",namespace="ns-a",pod="llm-a"}} '
            f"{a.prompt} 1000000") in first.splitlines()
    assert f'pod="llm-a"}} {a.generation} 1500000' in second


@pytest.mark.external
@pytest.mark.slow
def test_cost_per_1m_tokens_ours_and_opencosts_against_truth(tmp_path: Path) -> None:
    binary = need_binary("prometheus", "/usr/bin/prometheus", hint="apt-get install prometheus, or "
                         "scripts/system-deps.sh as root")
    sim, store = simulate_tokens(small_fleet, 3, TICK, HORIZON, binary, workdir=tmp_path / "prom")
    served = {(p.namespace, p.pod): p.prompt + p.generation for p in vllm.token_counts(sim, seed=3)}
    imported = {(ns, pod): n for ns, pod, n in store.query("SELECT namespace, pod, count FROM work_units").rows()}
    assert imported == served  # what Prometheus answered is what the exporter served, per pod

    book = default_price_book()
    table = tokens_compare(sim, store, book)
    day = datetime.fromtimestamp(sim.timing.start_us / 1e6, UTC).date()
    price = float(book.price_for(H100, None, day).per_gpu_hour)
    true_s = dict(sim.truth().group_by("namespace").agg(pl.col("busy_gpu_seconds").sum()).iter_rows())
    held_s = dict(sim.holdings_truth().group_by("namespace").agg(
        (pl.col("held_seconds") * pl.col("share")).sum()).iter_rows())
    ledger_s = dict(store.query("SELECT namespace, sum(gpu_seconds) FROM ledger WHERE kind = 'busy' "
                                "AND namespace IS NOT NULL GROUP BY 1").rows())
    rows = {r["tenant"]: r for r in table.iter_rows(named=True)}
    assert sorted(rows) == ["a", "b", "c"]
    for tenant, r in rows.items():
        ns = f"ns-{tenant}"
        tokens = served[(ns, f"llm-{tenant}")]
        assert r["tokens"] == tokens
        assert r["true_per_1m"] == pytest.approx(true_s[ns] / 3600 * price / tokens * 1e6, rel=1e-9)
        assert r["opencost_per_1m"] == pytest.approx(held_s[ns] / 3600 * price / tokens * 1e6, rel=1e-9)
        # ours: the ledger's busy hours, to the unit report's 6 decimals of an hour
        assert r["ours_per_1m"] == pytest.approx(ledger_s[ns] / 3600 * price / tokens * 1e6,
                                                 abs=0.51e-6 * price / tokens * 1e6)
    ours_mean, ours_worst = errors(table, "ours_per_1m", "true_per_1m")
    opencost_mean, opencost_worst = errors(table, "opencost_per_1m", "true_per_1m")
    assert ours_worst < 1.0  # measured busy time: within 1 % per tenant
    assert opencost_worst > 10 * ours_worst and opencost_mean > 10 * ours_mean  # a request charges held, not used
    # OpenCost's method overcharges the light tenant per token and undercharges the heavy one
    assert rows["b"]["opencost_per_1m"] > rows["b"]["true_per_1m"] > 0
    assert rows["a"]["opencost_per_1m"] < rows["a"]["true_per_1m"]
    store.close()
