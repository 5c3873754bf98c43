"""The attribution job keeps clusters apart: (cluster, namespace, pod) is a pod's identity in the ledger and
its rollups; a message that names no cluster is booked in ``default_cluster``; tenancy rules may name one
cluster's namespace or pod."""

from __future__ import annotations

import polars as pl

from gpuledger import wire
from gpuledger.analytics.job import recompute_rows, run_attribution
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.ingest.batch import decode_batch
from gpuledger.store import Store
from tests.support.factories import make_message

TICK_S = 10.0


def _store() -> Store:
    """Three agents on a node called n0 with the same pods (team-a/train-0, train-1): clusters east, west, and
    one that names none (an older v1 agent), each for three ticks. Pod UIDs differ, as Kubernetes makes them
    (a random UUID per pod); tests/test_multi_cluster.py runs clusters whose UIDs are equal too."""
    messages = []
    for boot, cluster in (("e", "east"), ("w", "west"), ("o", None)):
        for seq in range(3):
            m = make_message(boot_id=boot, seq=seq, util=0.25 if cluster == "west" else 0.5)
            m.cluster = cluster
            m.pods = [{**p, "uid": f"{boot}-{p['uid']}"} for p in m.pods]
            messages.append(m)
    store = Store()
    store.write_arrow(decode_batch([wire.encode(m) for m in messages]).tables)
    return store


def test_each_cluster_s_pods_are_booked_apart_and_v1_in_the_default_cluster() -> None:
    store = _store()
    run_attribution(store, default_cluster="prod")
    per = store.query("SELECT cluster, namespace, pod, kind, sum(gpu_seconds) AS s FROM ledger "
                      "WHERE pod = 'train-0' GROUP BY ALL ORDER BY ALL")
    assert per.select("cluster", "kind", "s").rows() == [
        ("east", "allocated_idle", 15.0), ("east", "busy", 15.0),
        ("prod", "allocated_idle", 15.0), ("prod", "busy", 15.0),
        ("west", "allocated_idle", 22.5), ("west", "busy", 7.5)]
    rolled = store.query("SELECT cluster, sum(gpu_seconds) AS s, sum(intervals)::BIGINT AS n FROM ledger_hourly "
                         "GROUP BY 1 ORDER BY 1")
    # 2 GPUs x 3 ticks of GPU-seconds in each cluster; 12 ledger rows: 2 kinds x 2 GPUs x 3 ticks
    assert rolled.rows() == [("east", 60.0, 12), ("prod", 60.0, 12), ("west", 60.0, 12)]
    assert store.query("SELECT count(*) AS n FROM ledger WHERE cluster IS NULL").item() == 0


def test_recomputed_rows_carry_the_cluster_they_were_booked_with() -> None:
    store = _store()
    run_attribution(store, default_cluster="prod")
    booked = store.query("SELECT * FROM ledger ORDER BY ALL")
    again = recompute_rows(store, 0, 2**62, TenancyRules(), default_cluster="prod")
    assert again.select(booked.columns).sort(pl.all()).equals(booked.sort(pl.all()))


def test_tenancy_rules_may_name_one_cluster_s_namespace_or_pod() -> None:
    store = _store()
    rules = TenancyRules(version="r1", overrides={"east/team-a": "east-team", "team-b": "b"},
                         pods={"west/team-a/train-1": "west-pod-1"})
    run_attribution(store, rules)
    got = store.query("SELECT DISTINCT cluster, pod, tenant FROM ledger WHERE kind = 'busy' ORDER BY ALL").rows()
    assert got == [
        ("default", "train-0", "team-a"), ("default", "train-1", "team-a"),  # label team, as before
        ("east", "train-0", "east-team"), ("east", "train-1", "east-team"),
        ("west", "train-0", "team-a"), ("west", "train-1", "west-pod-1")]


def test_a_rule_for_one_cluster_does_not_touch_the_same_names_elsewhere() -> None:
    rules = TenancyRules(overrides={"east/team-a": "x"}, pods={"east/team-a/p": "y"})
    assert rules.resolve("team-a", {}, name="q", cluster="east") == "x"
    assert rules.resolve("team-a", {}, name="p", cluster="east") == "y"
    assert rules.resolve("team-a", {}, name="p", cluster="west") == "team-a"
    assert rules.resolve("team-a", {}, name="p") == "team-a"


def test_explain_shows_the_cluster_beside_the_namespace(tmp_path) -> None:
    import csv
    import io

    from gpuledger.analytics.explain import explain_command

    db = tmp_path / "g.duckdb"
    src = _store()
    run_attribution(src, default_cluster="prod")
    with Store(db) as store:
        store.append("ledger", src.query("SELECT * FROM ledger"))
    rows = list(csv.DictReader(io.StringIO(explain_command(str(db), "team-a", None, None, "csv", detail=True))))
    assert sorted({(r["cluster"], r["namespace"], r["pod"]) for r in rows}) == [
        (c, "team-a", p) for c in ("east", "prod", "west") for p in ("train-0", "train-1")]
    table = explain_command(str(db), "team-a", None, None, "table", detail=True)
    header = next(line for line in table.splitlines() if "namespace" in line)
    assert header.index("cluster") < header.index("namespace")


def test_attribution_by_shard_books_the_same_clusters() -> None:
    from gpuledger.analytics.shards import run_shards

    by_chunk, by_shard = _store(), _store()
    run_attribution(by_chunk, default_cluster="prod")
    run_shards(by_shard, groups=2, default_cluster="prod")
    sums = ("SELECT cluster, namespace, pod, kind, round(sum(gpu_seconds), 9) AS s FROM {} GROUP BY ALL ORDER BY ALL")
    for table in ("ledger", "ledger_hourly"):
        got = by_shard.query(sums.format(table))
        assert got.equals(by_chunk.query(sums.format(table))), table
        assert set(got["cluster"]) == {"east", "west", "prod"}
