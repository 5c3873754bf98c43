"""The agent's per-pod split (/metrics, ``pod_shares``) is the ledger's, on the same messages.

Both call ``gpuledger.split``; this holds the agent's plumbing to the ledger
(the job, compiled kernel) per (GPU, MIG device, namespace, pod): busy
GPU-seconds (the agent's busy fraction × the device's capacity), energy (busy
+ idle, joules) and, on devices that report utilization, memory GB-seconds.
The documented differences stay out of the inputs: the unknown-holders rule
(no message here lacks its allocations) and processes outside pods (the agent
has no series for them; they are compared only through the pods' shares).
"""

from __future__ import annotations

import math

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuledger import wire
from gpuledger.agent.metrics import pod_shares
from gpuledger.agent.sampler import Sampler
from gpuledger.analytics import kinds as K
from gpuledger.analytics.job import run_attribution
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.sim.fleetsim import demo_fleet
from gpuledger.sim.spec import Quirks
from gpuledger.store import Store
from tests.support.ledger_inputs import CASES, gpu, message

WHERE = ["seq", "gpu_index", "mig_index", "namespace", "pod"]


def agent_view(messages: list[wire.Message]) -> pl.DataFrame:
    """pod_shares of each message, per (seq, gpu, MIG device, namespace, pod), in the ledger's units."""
    rows = []
    for m in messages:
        dt = (m.interval_end_ns - m.interval_start_ns) / 1e9
        capacity = {(int(d["gpu_index"]), int(d["mig_index"])): dt * (d["slice_fraction"] if d["mig_index"] >= 0
                                                                       else 1.0) for d in m.devices}
        for (g, mi, ns, pod, _container), s in pod_shares(m).items():
            rows.append({"seq": m.seq, "gpu_index": g, "mig_index": mi, "namespace": ns, "pod": pod,
                         "busy_s": s.busy * capacity[(g, mi)], "energy_j": s.energy_j,
                         "memory_gbs": s.memory / 1e9 * dt})
    frame = pl.DataFrame(rows, schema={"seq": pl.Int64, "gpu_index": pl.Int64, "mig_index": pl.Int64,
                                       "namespace": pl.String, "pod": pl.String, "busy_s": pl.Float64,
                                       "energy_j": pl.Float64, "memory_gbs": pl.Float64})
    # NaN = the agent gives no such value (absent series): null here. Containers of one pod sum.
    return frame.fill_nan(None).group_by(WHERE).agg(
        pl.when(pl.col(c).is_not_null().any()).then(pl.col(c).sum()).alias(c) for c in ("busy_s", "energy_j",
                                                                                         "memory_gbs"))


def ledger_view(messages: list[wire.Message]) -> tuple[pl.DataFrame, set[tuple[int, int, int]]]:
    """The job's ledger of the same messages, per (seq, gpu, MIG device, namespace, pod) of a pod; and the
    units whose utilization is measured (memory is booked on their busy rows only)."""
    with Store() as store:
        store.write_messages([wire.decode(wire.encode(m)) for m in messages])
        run_attribution(store, TenancyRules())
        ledger = store.query("SELECT * FROM ledger WHERE pod IS NOT NULL")
    busy = pl.col("kind") == K.BUSY
    view = ledger.with_columns(pl.col("seq", "gpu_index", "mig_index").cast(pl.Int64)).group_by(WHERE).agg(
        busy_s=pl.col("gpu_seconds").filter(busy).sum(),
        energy_j=pl.when(pl.col("energy_j").is_not_null().any()).then(pl.col("energy_j").sum()),
        memory_gbs=pl.col("memory_gb_seconds").sum(),
    )
    measured = {(m.seq, int(d["gpu_index"]), int(d["mig_index"])) for m in messages for d in m.devices
                if not math.isnan(d["gr_engine_active"] if d["mig_index"] >= 0 else d["gpu_util"])}
    return view, measured


def assert_agent_books_what_the_ledger_books(messages: list[wire.Message]) -> None:
    agent = agent_view(messages)
    ledger, measured = ledger_view(messages)
    assert ledger.join(agent, on=WHERE, how="anti").is_empty(), "a pod the ledger books has no series"
    both = agent.join(ledger, on=WHERE, how="left", suffix="_ledger")
    for row in both.iter_rows(named=True):
        where = {k: row[k] for k in WHERE}
        # busy: a pod the ledger books no busy line for (none, or below a picosecond) has no busy part here
        assert (row["busy_s"] or 0.0) == pytest.approx(row["busy_s_ledger"] or 0.0, rel=1e-9, abs=1e-9), where
        if row["energy_j"] is None:  # the device's energy is missing: missing in the ledger too, never 0
            assert row["energy_j_ledger"] is None, where
        else:
            assert row["energy_j"] == pytest.approx(row["energy_j_ledger"] or 0.0, rel=1e-9, abs=1e-6), where
        if (row["seq"], row["gpu_index"], row["mig_index"]) in measured:
            assert (row["memory_gbs"] or 0.0) == pytest.approx(row["memory_gbs_ledger"] or 0.0, rel=1e-9), where


def unique_pods(m: wire.Message) -> wire.Message:
    """The builder numbers pods per message; keep uids unique across messages, as Kubernetes does."""
    for pod in m.pods:
        pod["uid"] = f"{m.seq}:{pod['uid']}"
    return m


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_sharing_mode_and_fallback(name: str) -> None:
    assert_agent_books_what_the_ledger_books([message(CASES[name], seq=0)])


def test_a_mig_mode_gpu_is_its_slices_and_an_idle_remainder_in_both() -> None:
    spec = {"util": 0.9, "energy_mj": 7e4, "holders": [("a", 1.0, -1)], "procs": [("a", 2.0)],
            "migs": [{"profile": "3g.40gb", "fraction": 3 / 7, "holder": "b", "util": 0.5}]}
    assert_agent_books_what_the_ledger_books([message([spec], seq=0)])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(st.lists(gpu, min_size=1, max_size=3), min_size=1, max_size=2),
       dt_s=st.sampled_from([1.0, 10.0]))
def test_random_nodes(messages: list[list[dict]], dt_s: float) -> None:
    assert_agent_books_what_the_ledger_books([unique_pods(message(gpus, seq=s, dt_s=dt_s))
                                              for s, gpus in enumerate(messages)])


def test_a_simulated_fleet_with_every_driver_quirk() -> None:
    """The agent's own messages (simulator -> Sampler), time-slicing, MPS, MIG, dropped and noisy samples,
    a silent process, PID reuse, an energy reset, a lost GPU."""
    sim = demo_fleet(1, 8, seed=9, horizon_s=120.0, quirks=Quirks(
        missing_sample_rate=0.05, process_noise=0.2, silent_process=True, pid_reuse=True, energy_reset=True,
        gpu_lost=True))
    node = sim.nodes[0]
    sampler = Sampler(node, node, node=node.spec.name, boot_id="b")
    sampler.tick()
    messages = []
    for _ in range(12):
        sim.advance(10.0)
        msg = sampler.tick()
        assert msg is not None
        messages.append(msg)
    assert sum(len(m.processes) for m in messages) > 20
    assert_agent_books_what_the_ledger_books(messages)
