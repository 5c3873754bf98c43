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
from hypothesis import strategies as st

from gpuledger import wire
from gpuledger.analytics.job import run_attribution
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


# Every sharing mode and fallback of tests/analytics/test_ledger.py, in one message per case.
CASES = {
    "time_sliced": [{"util": 0.8, "energy_mj": 10_000.0, "holders": [("a", 0.25, 0), ("b", 0.25, 1)],
                     "procs": [("a", 3.0), ("b", 1.0)]}],
    "equal_split": [{"util": 0.5, "holders": [("a", 0.5, 0), ("b", 0.5, 1)], "procs": [("a", 0.0), ("b", 0.0)]}],
    "holders_by_share": [{"util": 0.4, "holders": [("a", 0.75, -1), ("b", 0.25, -1)]}],
    "unmeasured": [{"util": math.nan, "holders": [("a", 1.0, -1)]}],
    "mig": [{"migs": [{"profile": "3g.40gb", "fraction": 3 / 7, "holder": "a", "util": 0.5},
                      {"profile": "2g.20gb", "fraction": 2 / 7, "holder": "b"}]}],
    "unsampled_remainder": [{"util": 0.6, "holders": [("b", 0.5, 0), ("c", 0.5, 1)],
                             "procs": [("b", 2.0, 10), ("c", 0.0, 0)]}],
    "over_reporting": [{"util": 0.2, "holders": [("b", 0.5, 0), ("c", 0.5, 1)],
                        "procs": [("b", 2.5, 10), ("c", 0.0, 0)]}],
    "mps_server_only": [{"util": 0.5, "holders": [("a", 0.5, 0), ("b", 0.5, 1)], "procs": [(None, 0.0, 0)]}],
    "pod_less_unheld": [{"util": 0.5, "procs": [(None, 3.0, 10)]}],
    "no_holder": [{"util": 0.7, "energy_mj": 5e5}],
    "slurm": [{"util": 0.5, "procs": [(None, 3.0, 10, "4242"), (None, 1.0, 10, "777")]}],
    "fractional_overcommitted": [{"util": 0.9, "holders": [("a", 0.7, -1), ("b", 0.6, -1)],
                                  "procs": [("a", 5.0), ("b", 1.0), (None, 2.0)]}],
    "zero_shares": [{"util": 0.3, "holders": [("a", 0.0, -1)], "procs": [(None, 0.0, 0)]}],
}

# A hypothesis strategy for one GPU's inputs in ``message``'s shape (every quirk the ledger handles).
proc = st.tuples(st.sampled_from(["a", "b", "c", None]),
                 st.one_of(st.just(math.nan), st.just(0.0), st.floats(0, 50)),
                 st.sampled_from([0, 0, 3, 10]),
                 st.sampled_from([None, None, "4242", "777"])).map(
    lambda t: (t[0], t[1], t[2]) if t[0] is not None or t[3] is None else (t[0], t[1], t[2], t[3]))
gpu = st.fixed_dictionaries(
    {
        "util": st.one_of(st.just(math.nan), st.just(0.0), st.floats(0, 1)),
        "energy_mj": st.one_of(st.just(math.nan), st.floats(0, 1e7)),
        "util_samples": st.sampled_from([0, 1, 10, 100]),  # tolerance: capped, 2 samples, 10 %
        "holders": st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from([0.0, 0.25, 0.5, 1.0, 1 / 3]),
                                      st.integers(-1, 3)), max_size=4),
        "procs": st.lists(proc, max_size=5),
        "migs": st.one_of(
            st.just([]),
            st.lists(st.fixed_dictionaries({"profile": st.sampled_from(["1g.10gb", "3g.40gb"]),
                                            "fraction": st.sampled_from([1 / 7, 3 / 7]),
                                            "holder": st.sampled_from(["a", "b", None]),
                                            "util": st.one_of(st.just(math.nan), st.floats(0, 1))}),
                     min_size=1, max_size=4),
        ),
        "lost": st.booleans(),
    }
)
