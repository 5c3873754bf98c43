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
from typing import TYPE_CHECKING

import polars as pl

from gpuledger import wire
from gpuledger.agent.sampler import Sampler
from gpuledger.analytics.job import run_attribution
from gpuledger.sim.fleetsim import demo_fleet
from gpuledger.sim.spec import Quirks
from gpuledger.store import Store

if TYPE_CHECKING:
    from gpuledger.analytics.queues import Queues

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


# --- business data: tokens and Kueue series for the demo's hours -------------------------


class AnsweringPrometheus:
    """The Prometheus seam's twin (gpuledger.analytics.work_units.Prometheus): ``answer(promql, at_s)``."""

    def __init__(self, answer: Callable[[str, float], list[tuple[dict[str, str], float]]]) -> None:
        self.answer = answer

    def query(self, promql: str, at_s: float) -> list[tuple[dict[str, str], float]]:
        return self.answer(promql, at_s)


#: Demo budgets (``create_app(budgets=...)``): one tenant far under, one over its budget.
DEMO_BUDGETS = 'currency = "USD"\n[[budget]]\ntenant = "nlp"\nmonthly = "5000.00"\n' \
               '[[budget]]\ntenant = "vision"\nmonthly = "1.00"\n'
#: ClusterQueue per demo tenant: ``cq-<tenant>``, nominal quota 2 GPUs.
DEMO_QUOTA_GPUS = 2.0


def add_business_data(path: Path) -> Path:
    """Import, through the real import functions, what a Prometheus would answer for the demo's hours.

    Tokens: each pod with busy time served 1,000 tokens per busy GPU-second (``tokens``: prompt +
    generation as the shipped default counts them). Kueue: a ClusterQueue ``cq-<tenant>`` per tenant with
    a nominal quota of 2 GPUs, reserving in each hour the GPUs its pods held on average (busy + idle), and
    an admission-wait histogram that counts one admission under 1 s, one in (1, 10] and one in (10, 60]
    per hour; a LocalQueue ``<namespace>/main`` per namespace reserving what the namespace's pods held.
    """
    from gpuledger.analytics import queues as qu
    from gpuledger.analytics import work_units as wu

    with Store(path) as store:
        held = store.query("SELECT hour_start_ns, namespace, pod, tenant, sum(gpu_seconds) "
                           "FILTER (WHERE kind = 'busy') AS busy_s, sum(gpu_seconds) FILTER (WHERE kind IN "
                           "('busy', 'allocated_idle', 'unmeasured')) AS held_s FROM ledger_hourly "
                           "WHERE pod IS NOT NULL GROUP BY ALL")
        hours = sorted(set(held["hour_start_ns"].to_list()))
        units = wu.default_work_units()

        def tokens(promql: str, at_s: float) -> list[tuple[dict[str, str], float]]:
            hour = round(at_s * 1e9) - 3_600 * 10**9
            rows = held.filter((held["hour_start_ns"] == hour) & (held["busy_s"] > 0))
            scale = 1000.0 if promql == units.units[0].query else 250.0  # output tokens: a quarter
            return [({"namespace": ns, "pod": pod}, round(busy * scale))
                    for ns, pod, busy in rows.select("namespace", "pod", "busy_s").iter_rows()]

        wu.import_hours(store, AnsweringPrometheus(tokens), units, hours)
        owner = _namespace_tenants(store)  # each namespace's LocalQueue points at its tenant's ClusterQueue
        per_namespace = held.group_by("hour_start_ns", "namespace").agg(gpus=pl.col("held_s").sum() / 3600)
        per_namespace = per_namespace.with_columns(tenant=pl.col("namespace").replace_strict(owner))
        per_tenant = per_namespace.group_by("hour_start_ns", "tenant").agg(pl.col("gpus").sum())  # Σ its LocalQueues
        done = {h: n for n, h in enumerate(hours, start=1)}

        def kueue(promql: str, at_s: float) -> list[tuple[dict[str, str], float]]:
            hour = round(at_s * 1e9) - 3_600 * 10**9
            out: list[tuple[dict[str, str], float]] = []
            if "kueue_local_queue_" in promql:  # LocalQueue <namespace>/main: the namespace's held GPUs
                rows = per_namespace.filter(per_namespace["hour_start_ns"] == hour)
                return [({"namespace": ns, "name": "main"}, round(gpus, 6))
                        for ns, gpus in rows.select("namespace", "gpus").iter_rows()]
            rows = per_tenant.filter(per_tenant["hour_start_ns"] == hour)
            for tenant, gpus in rows.select("tenant", "gpus").iter_rows():
                cq = {"cluster_queue": f"cq-{tenant}"}
                if "nominal_quota" in promql:
                    out.append((cq, DEMO_QUOTA_GPUS))
                elif "borrowing_limit" in promql:
                    out.append((cq, 1.0))
                elif "reservation" in promql or "resource_usage" in promql:
                    out.append((cq, round(gpus, 6)))
                elif "wait_time" in promql:
                    n = done[hour]
                    out += [({**cq, "le": le}, float(c * n)) for le, c in (("1", 1), ("10", 2), ("60", 3),
                                                                            ("+Inf", 3))]
            return out

        qu.import_queue_hours(store, AnsweringPrometheus(kueue), qu.Queues(), hours)
    return path


def _namespace_tenants(store: Store) -> dict[str, str]:
    """Namespace -> the tenant its LocalQueue belongs to (the first, where pods of one resolve to two)."""
    out: dict[str, str] = {}
    for ns, tenant in store.query("SELECT DISTINCT namespace, tenant FROM ledger_hourly WHERE namespace IS NOT NULL "
                                  "ORDER BY 1, 2").rows():
        out.setdefault(ns, tenant)
    return out


def demo_queues(path: Path) -> Queues:
    """The queues configuration of :func:`add_business_data`'s file: ``cq-<tenant>`` belongs to ``tenant``;
    each namespace's LocalQueue ``<namespace>/main`` points at its tenant's ClusterQueue."""
    from gpuledger.analytics.queues import parse_queues

    with Store(path, read_only=True) as store:
        owner = _namespace_tenants(store)
    text = "".join(f'[[queue]]\ncluster_queue = "cq-{t}"\ntenant = "{t}"\n' for t in sorted(set(owner.values())))
    text += "".join(f'[[local_queue]]\nnamespace = "{ns}"\nname = "main"\ncluster_queue = "cq-{t}"\ntenant = "{t}"\n'
                    for ns, t in owner.items())
    return parse_queues(text)
