"""Two clusters with the same namespaces, pod names, node names (and, from one simulator seed, the same pod
and GPU UUIDs) through ONE ingest over a real Kafka-protocol broker (tansu), one DuckDB file, attribution,
the API over HTTP and the chargeback file: nothing of one cluster merges into the other. A third fleet's
agents name no cluster (v1 messages as older agents send them): they land in the default cluster."""

from __future__ import annotations

from decimal import Decimal

import polars as pl
import pytest

from gpuledger import wire
from gpuledger.agent.sampler import Sampler
from gpuledger.analytics.job import run_attribution
from gpuledger.api.app import create_app
from gpuledger.ingest.consumer import Ingestor
from gpuledger.sim.fleetsim import FleetSim, demo_fleet
from gpuledger.sim.spec import Quirks
from gpuledger.store import Store
from gpuledger.transport import KafkaPublisher
from tests.support.live_server import serving

pytestmark = [pytest.mark.kafka, pytest.mark.slow]  # one module fixture runs the whole pipeline
START_US = 1_790_812_800 * 10**6  # 2026-10-01T00:00:00Z
TICK_S = 10.0
TICKS = 60  # 10 minutes
#: cluster -> nodes of 8 GPUs; one seed: node 0 of each fleet is the same node, pods and names.
FLEETS = {"east": 2, "west": 1, None: 1}
GPU_HOURS = {c or wire.DEFAULT_CLUSTER: n * 8 * TICKS * TICK_S / 3600 for c, n in FLEETS.items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, kafka_broker: str) -> dict:
    from gpuledger.transport import KafkaSubscriber
    from tests.support.kafka import KAFKA_GROUP_TIMING

    topic = f"clusters-{tmp_path_factory.getbasetemp().name}"
    fleets: list[FleetSim] = [demo_fleet(n_nodes=n, gpus_per_node=8, seed=3, quirks=Quirks(), cluster=c,
                                         horizon_s=TICKS * TICK_S, start_us=START_US) for c, n in FLEETS.items()]
    samplers = [Sampler(n, n, node=n.spec.name, cluster=f.spec.cluster) for f in fleets for n in f.nodes]
    for s in samplers:
        s.tick()
    sent: list[bytes] = []
    with KafkaPublisher(kafka_broker, topic) as pub:
        for _ in range(TICKS):
            for f in fleets:
                f.advance(TICK_S)
            for s in samplers:
                msg = s.tick()
                assert msg is not None
                sent.append(wire.encode(msg))
                pub.publish(msg.node.encode(), sent[-1])
        pub.flush()
    db = tmp_path_factory.mktemp("clusters") / "gpuledger.duckdb"
    with Store(db) as store:
        sub = KafkaSubscriber(kafka_broker, topic, "clusters-ingest", **KAFKA_GROUP_TIMING)
        Ingestor(store, sub).run(max_idle_s=5.0, max_messages=len(sent))
        sub.close()
        run_attribution(store)
    with serving(create_app(db, auth=False)) as client:
        api = {
            "by_cluster": client.get("/v1/showback", params={"group_by": "cluster"}),
            "west": client.get("/v1/showback", params={"group_by": "tenant,namespace,pod", "cluster": "west",
                                                       "limit": "1000"}),
            "csv": client.get("/v1/chargeback.csv", params={"month": "2026-10"}),
        }
    return {"db": db, "sent": sent, "api": api}


def test_the_v1_messages_name_no_cluster_and_the_others_theirs(run: dict) -> None:
    named = [wire.decode(b).cluster for b in run["sent"]]
    assert {c: named.count(c) for c in set(named)} == {"east": 2 * TICKS, "west": TICKS, None: TICKS}
    plain = next(b for b in run["sent"] if wire.decode(b).cluster is None)
    assert b'"cluster"' not in plain  # what an older v1 agent sends: no header key at all


def test_one_ingest_stores_each_message_with_its_cluster(run: dict) -> None:
    with Store(run["db"], read_only=True) as store:
        got = store.query("SELECT cluster, count(*) AS n FROM messages GROUP BY 1 ORDER BY 1 NULLS LAST")
        assert store.count("dead_letters") == 0
    assert got.rows() == [("east", 2 * TICKS), ("west", TICKS), (None, TICKS)]


def test_the_ledger_keeps_the_same_pod_apart_per_cluster(run: dict) -> None:
    with Store(run["db"], read_only=True) as store:
        capacity = store.query("SELECT cluster, sum(gpu_seconds) / 3600 AS h FROM ledger GROUP BY 1 ORDER BY 1")
        # node 0 runs the same pods in every cluster: each (cluster, namespace, pod) is its own line, and the
        # three clusters' lines of one pod are equal (the same simulated node), never one line of three times it
        pods = store.query("SELECT cluster, namespace, pod, sum(gpu_seconds) AS s FROM ledger "
                           "WHERE node = 'gpu-node-0' AND pod IS NOT NULL GROUP BY ALL")
        hourly = store.query("SELECT cluster, sum(gpu_seconds) / 3600 AS h FROM ledger_hourly GROUP BY 1 ORDER BY 1")
    assert dict(capacity.rows()) == pytest.approx(GPU_HOURS, abs=1e-6)
    assert dict(hourly.rows()) == pytest.approx(GPU_HOURS, abs=1e-6)  # the rollup's key carries the cluster
    per_pod = pods.pivot(on="cluster", index=["namespace", "pod"], values="s")
    assert per_pod.height >= 5 and per_pod.null_count().sum_horizontal().item() == 0
    for column in ("east", "west"):
        assert per_pod[column].to_list() == pytest.approx(per_pod[wire.DEFAULT_CLUSTER].to_list(), rel=1e-9)


def test_showback_groups_by_cluster_and_filters_one(run: dict) -> None:
    r = run["api"]["by_cluster"]
    assert r.status_code == 200, r.text
    rows = {row["cluster"]: row for row in r.json()["rows"]}
    assert {c: row["gpu_hours"] for c, row in rows.items()} == pytest.approx(GPU_HOURS, abs=1e-5)
    west = run["api"]["west"]
    assert west.status_code == 200, west.text
    with Store(run["db"], read_only=True) as store:
        want = store.query("SELECT tenant, namespace, pod, sum(gpu_seconds) / 3600 AS h FROM ledger "
                           "WHERE cluster = 'west' GROUP BY ALL HAVING sum(gpu_seconds) > 0")
    got = {(x["tenant"], x["namespace"], x["pod"]): x["gpu_hours"] for x in west.json()["rows"]}
    assert got == pytest.approx({(t, n, p): h for t, n, p, h in want.rows()}, abs=1e-5)
    assert sum(got.values()) == pytest.approx(GPU_HOURS["west"], abs=1e-4)
    assert Decimal(rows["west"]["cost"]) == sum(Decimal(x["cost"]) for x in west.json()["rows"])


def test_the_chargeback_file_carries_each_line_s_cluster(run: dict) -> None:
    r = run["api"]["csv"]
    assert r.status_code == 200, r.text
    frame = pl.read_csv(r.content, infer_schema=False).filter(pl.col("PricingUnit") == "GPU-Hours")
    hours = frame.group_by("x_Cluster").agg(pl.col("PricingQuantity").cast(pl.Decimal(20, 6)).sum())
    assert {c: float(h) for c, h in hours.rows()} == pytest.approx(GPU_HOURS, abs=1e-4)
    # the same tenant in three clusters is three rows, one per cluster, each of its own cluster's hours
    lines = frame.group_by("x_Cluster", "SubAccountId", "x_GpuModel", "x_MigProfile", "x_ChargeType", "SkuPriceId").len()
    assert lines["len"].max() == 1
    tenants = frame.group_by("SubAccountId").agg(pl.col("x_Cluster").n_unique().alias("n"))
    assert tenants.filter(pl.col("SubAccountId") != "platform")["n"].max() == 3
    assert all('"gpuledger/cluster":' in t for t in frame["Tags"])
