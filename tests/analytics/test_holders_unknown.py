"""An agent that cannot read the allocations says so (``allocations_unavailable``);
the ledger books that GPU's unheld idle under its own rule: unknown, not nobody."""

from __future__ import annotations

from dataclasses import replace

import polars as pl
import pytest
from factories import make_message
from gpuledger.analytics import kinds as K
from gpuledger.analytics.job import run_attribution
from gpuledger.ingest.batch import decode_batch

from gpuledger import wire
from gpuledger.store import Store

REASON = "PodResourcesError: kubelet PodResources List failed: connection refused"


def messages() -> list[wire.Message]:
    blind = replace(make_message(seq=0, node="blind", agent_id="blind", with_allocations=False, util=0.3),
                    extra={"allocations_unavailable": REASON})
    free = make_message(seq=0, node="free", agent_id="free", with_allocations=False, util=0.3)  # truly unheld
    return [blind, free]


@pytest.mark.parametrize("path", ["batch", "one_by_one"])
def test_the_flag_is_stored_and_relabels_only_that_messages_unallocated_idle(path: str) -> None:
    with Store() as store:
        if path == "batch":  # ingest's decoder
            store.write_arrow(decode_batch([wire.encode(m) for m in messages()]).tables)
        else:  # the fallback path (Store.write_messages)
            store.write_messages(messages())
        flags = dict(store.query("SELECT agent_id, allocations_unavailable FROM messages").rows())
        assert flags == {"blind": REASON, "free": None}
        run_attribution(store)
        rules = store.query("SELECT node, kind, rule, tenant, sum(gpu_seconds) AS s FROM ledger GROUP BY ALL "
                            "ORDER BY ALL")
    idle = rules.filter(pl.col("kind") == K.UNALLOCATED)
    assert dict(zip(idle["node"], idle["rule"])) == {"blind": K.RULE_HOLDERS_UNKNOWN, "free": K.RULE_UNALLOCATED}
    assert set(idle["tenant"]) == {K.PLATFORM_TENANT}
    # Same amounts on both nodes: only the label tells the unknown from the unheld.
    per_node = rules.group_by("node", "kind").agg(pl.col("s").sum()).sort("node", "kind")
    blind, free = (per_node.filter(pl.col("node") == n).drop("node") for n in ("blind", "free"))
    assert blind.equals(free)
    busy = rules.filter((pl.col("kind") == K.BUSY) & (pl.col("node") == "blind"))
    assert set(busy["rule"]) == {K.RULE_PROCESS_SAMPLES}  # busy still follows the processes


def test_a_non_string_note_is_kept_as_text() -> None:
    odd = replace(make_message(seq=1, with_allocations=False), extra={"allocations_unavailable": {"code": 14}})
    with Store() as store:
        store.write_arrow(decode_batch([wire.encode(odd)]).tables)
        assert store.scalar("SELECT allocations_unavailable FROM messages") == '{"code": 14}'
