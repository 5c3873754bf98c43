"""Ledger inputs from compact GPU specs, and the ledger they attribute to.

``message([{"util": 0.5, "holders": [("a", 1.0, -1)], "procs": [("a", 30.0)]}])``
builds a one-node wire message; ``ledger_of(*messages)`` stores and attributes
them in an in-memory Store; ``by(ledger, tenant="a", kind=...)`` sums
gpu_seconds; ``gpu_spec`` is the hypothesis strategy of one spec. Shared by
the ledger, policy, tenancy and compiled-kernel tests (tests/analytics/).
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from gpuledger.analytics.job import run_attribution
from hypothesis import strategies as st

from gpuledger import wire
from gpuledger.store import Store

S = 10**9  # ns per second


def message(gpus: list[dict], seq: int = 0, dt_s: float = 10.0) -> wire.Message:
    """A one-node message from compact GPU specs (see the tests below)."""
    table = wire.StringTable()
    pods: list[dict] = []
    dev_rows, proc_rows, alloc_rows = [], [], []

    def pod(ns: str, team: str | None) -> int:
        pods.append({"uid": f"uid-{len(pods)}", "namespace": ns, "name": f"p{len(pods)}",
                     "labels": {"team": team} if team else {}})
        return len(pods) - 1

    for g, spec in enumerate(gpus):
        dev_rows.append(dict(gpu_index=g, mig_index=-1, uuid=table(f"GPU-{g}"), model=table("NVIDIA H100 80GB HBM3"),
                             profile=wire.NULL_STR, slice_fraction=1.0, gpu_util=spec.get("util", math.nan),
                             energy_delta_mj=spec.get("energy_mj", math.nan)))
        for m, mig in enumerate(spec.get("migs", [])):
            dev_rows.append(dict(gpu_index=g, mig_index=m, uuid=table(f"MIG-{g}-{m}"),
                                 model=table("NVIDIA H100 80GB HBM3"), profile=table(mig["profile"]),
                                 slice_fraction=mig["fraction"], gr_engine_active=mig.get("util", math.nan)))
            if mig.get("holder"):
                alloc_rows.append(dict(gpu_index=g, mig_index=m, replica=-1, pod=pod(mig["holder"], None),
                                       container=table("c"), resource=table("nvidia.com/mig"), share=1.0))
        for ns, share, replica in spec.get("holders", []):
            alloc_rows.append(dict(gpu_index=g, mig_index=-1, replica=replica, pod=pod(ns, None),
                                   container=table("c"), resource=table("nvidia.com/gpu"), share=share))
        for ns, evidence, *more in spec.get("procs", []):  # (namespace or None, evidence[, samples[, slurm job]])
            proc_rows.append(dict(gpu_index=g, mig_index=-1, pid=1000 + len(proc_rows),
                                  pod=wire.NULL_POD if ns is None else pod(ns, None), container=table("c"),
                                  slurm_job=table(more[1]) if len(more) > 1 else wire.NULL_STR,
                                  samples=more[0] if more else 10, sm_util_sum=evidence, used_memory_bytes=2e9))
        dev_rows[-1 - len(spec.get("migs", []))]["util_samples"] = spec.get("util_samples", 10)

    def build(name: str, rows: list[dict]) -> np.ndarray:
        arr = wire.empty(name, len(rows))
        for i, row in enumerate(rows):
            for k, v in row.items():
                arr[k][i] = v
        return arr

    return wire.Message("agent", "boot", seq, "node-0", seq * int(dt_s * S), (seq + 1) * int(dt_s * S),
                        table.items, pods, build("devices", dev_rows), build("processes", proc_rows),
                        build("allocations", alloc_rows), wire.empty("field_errors"))


def ledger_of(*messages: wire.Message) -> tuple[pl.DataFrame, Store]:
    store = Store()
    store.write_messages([wire.decode(wire.encode(m)) for m in messages])
    run_attribution(store)
    return store.query("SELECT * FROM ledger"), store


def by(ledger: pl.DataFrame, **where: object) -> float:
    rows = ledger
    for k, v in where.items():
        rows = rows.filter(pl.col(k) == v)
    return float(rows["gpu_seconds"].sum())


gpu_spec = st.fixed_dictionaries(
    {
        "util": st.one_of(st.just(math.nan), st.floats(0, 1)),
        "energy_mj": st.one_of(st.just(math.nan), st.floats(0, 1e7)),
        "holders": st.lists(st.tuples(st.sampled_from("abcd"), st.floats(0, 1), st.integers(-1, 3)), max_size=4),
        "procs": st.lists(st.tuples(st.sampled_from("abcde"), st.one_of(st.just(math.nan), st.floats(0, 50))),
                          max_size=5),
        "migs": st.one_of(
            st.just([]),
            st.lists(st.fixed_dictionaries({"profile": st.just("1g.10gb"), "fraction": st.just(1 / 7),
                                            "holder": st.sampled_from(["a", "b", None]),
                                            "util": st.one_of(st.just(math.nan), st.floats(0, 1))}),
                     min_size=1, max_size=7),
        ),
    }
)
