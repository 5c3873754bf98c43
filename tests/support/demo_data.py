"""Small seeded demo data through the real pipeline, for API, dashboard and page tests.

simulator (gpuledger/sim/fleetsim.py) -> Sampler -> wire messages -> Store.write_messages
-> run_attribution -> a DuckDB file. Two nodes of eight GPUs (exclusive,
time-sliced, fractional, MIG, a notebook held idle, a free GPU; the mild quirks
and, with ``lost_gpu``, a GPU lost at three quarters of the run) for ``hours`` simulated hours from
:data:`START`, crossing midnight so day buckets have two values.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from gpuledger import wire
from gpuledger.agent.sampler import Sampler
from gpuledger.analytics.job import run_attribution
from gpuledger.sim.fleetsim import demo_fleet
from gpuledger.sim.spec import Quirks
from gpuledger.store import Store

#: Simulated start (UTC): 18:00, so the nine simulated hours cross midnight (two day buckets).
START = dt.datetime(2026, 10, 1, 18, 0, tzinfo=dt.UTC)
HOURS = 9.0
TICK_S = 60.0


def build_demo_db(path: Path, *, nodes: int = 2, gpus_per_node: int = 8, hours: float = HOURS,
                  tick_s: float = TICK_S, seed: int = 11,
                  on_message: Callable[[wire.Message], None] | None = None, lost_gpu: bool = False) -> Path:
    """Write the demo DuckDB file at ``path`` and return it (``on_message`` sees every message, in order)."""
    # lost_gpu: GPU 2 of the last node falls off the bus at 3/4 of the run. Attribution cannot book a lost
    # GPU's rows yet (no UUID: NOT NULL gpu_uuid), so then the ledger stops where the loss begins.
    quirks = replace(Quirks.mild(), gpu_lost=lost_gpu)
    fleet = demo_fleet(n_nodes=nodes, gpus_per_node=gpus_per_node, seed=seed, horizon_s=hours * 3600,
                       start_us=int(START.timestamp() * 1e6), quirks=quirks)
    samplers = [Sampler(n, n, node=n.spec.name, boot_id=f"test-{seed}") for n in fleet.nodes]
    with Store(path) as store:
        for s in samplers:
            s.tick()
        batch = []
        attributed = False
        for _ in range(round(hours * 3600 / tick_s)):
            if lost_gpu and not attributed and fleet.elapsed_s >= 0.75 * hours * 3600 - tick_s:
                store.write_messages(batch)
                batch = []
                run_attribution(store)
                attributed = True
            fleet.advance(tick_s)
            batch.extend(m for m in (s.tick() for s in samplers) if m is not None)
            if on_message is not None:
                for m in batch[-len(samplers):]:
                    on_message(m)
            if len(batch) >= 200:
                store.write_messages(batch)
                batch = []
        store.write_messages(batch)
        if not lost_gpu:
            run_attribution(store)
    return path


def demo_period_ms() -> tuple[int, int]:
    """The demo's whole simulated span as epoch milliseconds (what Grafana's $__from/$__to carry)."""
    start = int(START.timestamp() * 1000)
    return start, start + int(HOURS * 3600 * 1000)


def other_tenants_pods(path: Path, tenant: str) -> set[str]:
    """Pod names that appear only under tenants other than ``tenant`` (what a leak would show)."""
    with Store(path, read_only=True) as store:
        frame = store.query("SELECT DISTINCT pod FROM ledger WHERE pod IS NOT NULL GROUP BY pod "
                            "HAVING bool_and(tenant <> ?)", [tenant])
    return set(frame["pod"].to_list())
