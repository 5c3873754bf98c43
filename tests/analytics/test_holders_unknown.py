"""An agent that cannot read the allocations says so (``allocations_unavailable``);
unknown holders are not nobody: the pods that ran processes on a GPU held it and
get its idle, and idle no pod can be tied to stays visible under its own rule."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from gpuledger import wire
from gpuledger.analytics import kinds as K
from gpuledger.analytics.job import run_attribution
from gpuledger.ingest.batch import decode_batch
from gpuledger.store import Store
from tests.support.factories import make_message

REASON = "PodResourcesError: kubelet PodResources List failed: connection refused"


def messages() -> list[wire.Message]:
    """Two identical nodes without allocations, one blind (flagged), one truly unheld; on each,
    GPU 1's processes have no pod (a host daemon), so nobody can be tied to it."""
    out = []
    for node, extra in (("blind", {"allocations_unavailable": REASON}), ("free", {})):
        m = make_message(seq=0, node=node, agent_id=node, with_allocations=False, util=0.3)
        procs = m.processes.copy()
        procs["pod"][procs["gpu_index"] == 1] = -1  # no pod
        out.append(replace(m, processes=procs, extra=extra))
    return out


def ledger(path: str) -> pl.DataFrame:
    with Store() as store:
        if path == "batch":  # ingest's decoder
            store.write_arrow(decode_batch([wire.encode(m) for m in messages()]).tables)
        else:  # the fallback path (Store.write_messages)
            store.write_messages(messages())
        flags = dict(store.query("SELECT agent_id, allocations_unavailable FROM messages").rows())
        assert flags == {"blind": REASON, "free": None}
        run_attribution(store)
        return store.query("SELECT * FROM ledger")


@pytest.mark.parametrize("path", ["batch", "one_by_one"])
def test_idle_goes_to_the_pods_that_ran_there_or_stays_visibly_unknown(path: str) -> None:
    rows = ledger(path)
    idle = (rows.filter(pl.col("kind") != K.BUSY).group_by("node", "gpu_index", "kind", "rule", "tenant", "pod")
            .agg(pl.col("gpu_seconds").sum()).sort("node", "gpu_index"))
    blind = idle.filter(pl.col("node") == "blind")
    free = idle.filter(pl.col("node") == "free")
    # The truly unheld node: platform, the usual rule.
    assert set(free["rule"]) == {K.RULE_UNALLOCATED} and set(free["tenant"]) == {K.PLATFORM_TENANT}
    # The blind node: GPU 0's idle to the pod that ran there; GPU 1 (no pod) stays on platform, flagged.
    gpu0, gpu1 = blind.filter(pl.col("gpu_index") == 0), blind.filter(pl.col("gpu_index") == 1)
    assert gpu0.select("kind", "rule").rows() == [(K.ALLOCATED_IDLE, K.RULE_IDLE_PROCESS_HOLDERS)]
    busy_pod = rows.filter((pl.col("node") == "blind") & (pl.col("gpu_index") == 0) & (pl.col("kind") == K.BUSY))
    assert gpu0["pod"].to_list() == busy_pod["pod"].unique().to_list() and gpu0["tenant"][0] != K.PLATFORM_TENANT
    assert gpu1.select("kind", "rule", "tenant").rows() == [(K.UNALLOCATED, K.RULE_HOLDERS_UNKNOWN, K.PLATFORM_TENANT)]
    # Conservation per GPU interval, and the same amounts as the unflagged node: only who and why moved.
    per_gpu = rows.group_by("node", "gpu_index").agg(pl.col("gpu_seconds").sum(), pl.col("energy_j").sum())
    assert np.allclose(per_gpu["gpu_seconds"], 10.0, rtol=0, atol=1e-9)
    totals = per_gpu.sort("gpu_index").partition_by("node", as_dict=True)
    assert np.allclose(totals[("blind",)]["energy_j"], totals[("free",)]["energy_j"], rtol=1e-12)
    assert blind["gpu_seconds"].sum() == pytest.approx(free["gpu_seconds"].sum(), rel=1e-12)


def test_time_sliced_idle_is_split_equally_among_the_pods_that_ran() -> None:
    m = make_message(seq=0, node="blind", agent_id="blind", n_gpus=1, with_allocations=False, util=0.4)
    procs = np.concatenate([m.processes, m.processes])  # a second pod's process on the same GPU
    procs["pid"][1] = procs["pid"][0] + 1
    procs["pod"][1] = len(m.pods)
    pods = [*m.pods, {**m.pods[0], "uid": "uid-second", "name": "second"}]
    with Store() as store:
        store.write_messages([replace(m, processes=procs, pods=pods, extra={"allocations_unavailable": REASON})])
        run_attribution(store)
        idle = store.query("SELECT pod, rule, gpu_seconds FROM ledger WHERE kind <> 'busy' ORDER BY pod")
    assert idle["rule"].to_list() == [K.RULE_IDLE_PROCESS_HOLDERS] * 2
    assert idle["gpu_seconds"].to_list() == pytest.approx([3.0, 3.0])  # 6 s of idle, two pods


def test_a_non_string_note_is_kept_as_text() -> None:
    odd = replace(make_message(seq=1, with_allocations=False), extra={"allocations_unavailable": {"code": 14}})
    with Store() as store:
        store.write_arrow(decode_batch([wire.encode(odd)]).tables)
        assert store.scalar("SELECT allocations_unavailable FROM messages") == '{"code": 14}'
