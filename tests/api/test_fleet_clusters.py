"""``/v1/fleet`` keys a GPU by (cluster, node, GPU index): two clusters' same-named nodes (one simulator seed:
the same node names, pods and GPU UUIDs) are two sets of GPUs, each with its own cluster's holders, and the
``cluster`` filter keeps one. Real messages from the sampler, stored as ingest stores them, attributed, served
over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from gpuledger.agent.sampler import Sampler
from gpuledger.analytics.job import run_attribution
from gpuledger.api.app import create_app
from gpuledger.sim.fleetsim import demo_fleet
from gpuledger.sim.spec import Quirks
from gpuledger.store import Store
from gpuledger.store.arrow import batch_to_arrow
from tests.support.live_server import serving

START_US = 1_790_812_800 * 10**6  # 2026-10-01T00:00:00Z
GPUS = 4
TICKS = 6
CLUSTERS = ("east", "west")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    fleets = [demo_fleet(n_nodes=1, gpus_per_node=GPUS, seed=3, quirks=Quirks(), cluster=c,
                         horizon_s=TICKS * 10.0, start_us=START_US) for c in CLUSTERS]
    samplers = [Sampler(n, n, node=n.spec.name, cluster=f.spec.cluster) for f in fleets for n in f.nodes]
    for s in samplers:
        s.tick()
    messages = []
    for _ in range(TICKS):
        for f in fleets:
            f.advance(10.0)
        for s in samplers:
            msg = s.tick()
            assert msg is not None
            messages.append(msg)
    path = tmp_path_factory.mktemp("fleet-clusters") / "gpuledger.duckdb"
    with Store(path) as store:
        store.write_arrow(batch_to_arrow(messages, [None] * len(messages)))
        run_attribution(store)
    with serving(create_app(str(path), auth=False)) as c:
        yield c


def _fleet(client: httpx.Client, **params: str) -> list[dict]:
    r = client.get("/v1/fleet", params={"limit": "1000", **params})
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def test_same_named_nodes_of_two_clusters_are_two_sets_of_gpus(client: httpx.Client) -> None:
    rows = _fleet(client)
    keys = [(r["cluster"], r["node"], r["gpu_index"]) for r in rows]
    assert len(set(keys)) == len(keys) == len(CLUSTERS) * GPUS
    assert {r["cluster"] for r in rows} == set(CLUSTERS)
    assert len({r["node"] for r in rows}) == 1  # the one node name both clusters have
    east = {r["gpu_index"]: r for r in rows if r["cluster"] == "east"}
    west = {r["gpu_index"]: r for r in rows if r["cluster"] == "west"}
    # the same simulated node in both: each cluster's GPU shows its own holders once, never both clusters'
    assert [east[i]["holders"] for i in range(GPUS)] == [west[i]["holders"] for i in range(GPUS)]
    assert any(east[i]["holders"] for i in range(GPUS))
    for r in rows:
        assert r["health"] == "ok"
        assert len({(h["namespace"], h["pod"], h["mig_index"], h["replica"]) for h in r["holders"]}) \
            == len(r["holders"])


def test_the_cluster_filter_keeps_one_cluster_s_gpus(client: httpx.Client) -> None:
    west = _fleet(client, cluster="west")
    assert west and {r["cluster"] for r in west} == {"west"}
    assert len(west) == GPUS


def test_idle_runs_keep_each_cluster_s_same_named_gpu_apart(client: httpx.Client) -> None:
    r = client.get("/v1/efficiency/idle-gpus", params={"min_hours": "0", "limit": "1000"})
    assert r.status_code == 200, r.text
    runs = r.json()["rows"]
    assert runs, "the demo holds a GPU idle from the start"
    key = ("node", "gpu_index", "mig_index", "namespace", "pod", "idle_since", "idle_until", "idle_gpu_hours",
           "ongoing")
    per = {c: sorted(tuple(x[k] for k in key) for x in runs if x["cluster"] == c) for c in CLUSTERS}
    # the same simulated node in both clusters: the same runs, once per cluster, each of its own hours
    assert per["east"] and per["east"] == per["west"] and len(runs) == 2 * len(per["east"])
    assert all(x["ongoing"] for x in runs if x["idle_until"] == max(y["idle_until"] for y in runs))
