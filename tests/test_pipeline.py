"""The whole pipeline, every stage real: simulated GPUs -> agent samplers ->
Kafka (tansu) -> ingest consumer group -> DuckDB file -> attribution -> API over
HTTP, checked against the simulator's ground truth."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from gpuledger import wire
from gpuledger.agent.sampler import Sampler
from gpuledger.analytics.job import run_attribution
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.api.app import create_app
from gpuledger.ingest.consumer import Ingestor
from gpuledger.sim.accuracy import compare
from gpuledger.sim.fleetsim import demo_fleet
from gpuledger.sim.spec import Quirks
from gpuledger.store import Store
from gpuledger.transport import KafkaPublisher
from tests.support.live_server import serving

pytestmark = [pytest.mark.kafka, pytest.mark.slow]  # one module fixture runs the whole pipeline
START_US = 1_790_812_800 * 10**6  # 2026-10-01T00:00:00Z
TICK_S = 10.0
TICKS = 180  # half an hour of 2 nodes x 8 GPUs: 360 messages


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, kafka_broker: str) -> dict:
    from tests.support.kafka import KAFKA_GROUP_TIMING

    topic = f"pipeline-{tmp_path_factory.getbasetemp().name}"
    fleet = demo_fleet(n_nodes=2, gpus_per_node=8, seed=3, quirks=Quirks(), horizon_s=TICKS * TICK_S,
                       start_us=START_US)
    samplers = [Sampler(n, n, node=n.spec.name) for n in fleet.nodes]
    for s in samplers:
        s.tick()
    sent: list[bytes] = []
    with KafkaPublisher(kafka_broker, topic) as pub:
        for _ in range(TICKS):
            fleet.advance(TICK_S)
            for s in samplers:
                msg = s.tick()
                assert msg is not None
                sent.append(wire.encode(msg))
                pub.publish(msg.node.encode(), sent[-1])
        pub.flush()
    db = tmp_path_factory.mktemp("pipeline") / "gpuledger.duckdb"
    from gpuledger.transport import KafkaSubscriber

    with Store(db) as store:
        sub = KafkaSubscriber(kafka_broker, topic, "pipeline-ingest", **KAFKA_GROUP_TIMING)
        ingestor = Ingestor(store, sub)
        ingestor.run(max_idle_s=5.0, max_messages=len(sent))
        sub.close()
        run_attribution(store)
    return {"db": db, "fleet": fleet, "sent": sent, "topic": topic, "broker": kafka_broker}


def test_every_tick_of_every_node_is_stored_once(run: dict) -> None:
    with Store(run["db"], read_only=True) as store:
        assert store.count("messages") == len(run["sent"]) == 2 * TICKS
        assert store.count("dead_letters") == 0


def test_attributed_busy_matches_ground_truth_per_tenant(run: dict) -> None:
    with Store(run["db"], read_only=True) as store:
        acc = compare(run["fleet"], store, TenancyRules())
    busy = acc.filter(pl.col("true_s") > 60)  # tenants with at least a GPU-minute of work
    assert busy.height >= 3
    worst = busy["error_pct"].abs().max()
    assert worst < 1.0, f"worst tenant busy error {worst:.3f}% over 1%:\n{acc}"
    assert acc.filter(pl.col("true_s") == 0)["ledger_s"].abs().max() < 1e-6


def test_ledger_conserves_capacity_for_every_gpu_and_interval(run: dict) -> None:
    from gpuledger.analytics.ledger import conservation_error

    with Store(run["db"], read_only=True) as store:
        err = conservation_error(store.query("SELECT * FROM ledger").lazy(),
                                 store.query("SELECT * FROM devices").lazy()).collect()
    assert err.height == 2 * 8 * TICKS
    assert err["error"].abs().max() < 1e-9


def test_api_over_http_reports_what_the_ledger_holds(run: dict) -> None:
    with serving(create_app(run["db"], auth=False)) as client:  # auth: tests/api/test_auth.py
        r = client.get("/v1/showback", params={"group_by": "tenant"})
        assert r.status_code == 200, r.text
        body = r.json()
        csv = client.get("/v1/chargeback.csv", params={"month": "2026-10"})
        assert csv.status_code == 200
    rows = body["rows"]
    with Store(run["db"], read_only=True) as store:
        used = store.query("SELECT tenant, sum(gpu_seconds) / 3600 AS h FROM ledger WHERE kind = 'busy' GROUP BY 1")
    expected = dict(zip(used["tenant"], used["h"]))
    got = {r["tenant"]: r["used_gpu_hours"] for r in rows}
    for tenant, hours in expected.items():
        # the API rounds hours to 6 places, and leaves out groups that hold nothing (zero-second rows)
        assert got.get(tenant, 0.0) == pytest.approx(hours, abs=1e-6)
    total = sum(Decimal(r["cost"]) for r in rows)
    frame = pl.read_csv(csv.content, infer_schema=False)
    assert sum(Decimal(v) for v in frame["BilledCost"]) == total


def test_redelivering_every_message_changes_no_total(run: dict, tmp_path: Path) -> None:
    from gpuledger.transport import KafkaSubscriber
    from tests.support.kafka import KAFKA_GROUP_TIMING

    with Store(run["db"], read_only=True) as store:
        before = store.query("SELECT tenant, kind, sum(gpu_seconds) s FROM ledger GROUP BY ALL ORDER BY ALL")
    # Replay: the same bytes a second time, plus a fresh consumer group that re-reads the topic.
    with KafkaPublisher(run["broker"], run["topic"]) as pub:
        for value in run["sent"]:
            pub.publish(b"replay", value)
        pub.flush()
    with Store(run["db"]) as store:
        sub = KafkaSubscriber(run["broker"], run["topic"], "pipeline-replay", **KAFKA_GROUP_TIMING)
        stats = Ingestor(store, sub).run(max_idle_s=5.0, max_messages=2 * len(run["sent"]))
        sub.close()
        assert stats.stored == 0 and stats.duplicates == 2 * len(run["sent"])
        run_attribution(store)
        after = store.query("SELECT tenant, kind, sum(gpu_seconds) s FROM ledger GROUP BY ALL ORDER BY ALL")
    assert before.equals(after)
