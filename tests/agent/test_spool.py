"""Store-and-forward: the spool keeps order and its bound, and a broker outage loses no tick."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from gpuledger import wire
from gpuledger.agent.run import open_publisher
from gpuledger.agent.sampler import Sampler
from gpuledger.agent.spool import Spool, SpoolingPublisher
from gpuledger.config import Settings
from gpuledger.ingest.consumer import Ingestor
from gpuledger.sim.fleetsim import FleetSim
from gpuledger.sim.spec import FleetSpec, GpuSpec, Holding, NodeSpec, PodSpec, ProcSpec
from gpuledger.store import Store
from gpuledger.transport import KafkaPublisher, KafkaSubscriber, MemoryTransport
from tests.support.kafka import KAFKA_GROUP_TIMING
from tests.support.system import free_port


def drain(spool: Spool) -> list[bytes]:
    values, cursor = spool.peek(10**6)
    spool.ack(cursor, len(values))
    assert spool.pending() == 0
    return values


def test_records_come_back_in_order_across_segments_and_restarts(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**6, segment_bytes=4096)
    records = [f"record-{i}".encode() * (i % 7 + 1) for i in range(500)]
    for r in records[:300]:
        spool.append(r)
    first, cursor = spool.peek(120)
    spool.ack(cursor, len(first))
    assert first == records[:120] and spool.pending() == 180
    spool.close()
    reopened = Spool(tmp_path, max_bytes=10**6, segment_bytes=4096)  # an agent restart resumes at the cursor
    for r in records[300:]:
        reopened.append(r)
    assert drain(reopened) == records[120:]
    assert reopened.pending() == 0
    assert reopened.size_bytes() == 0  # delivered segments are deleted


def test_a_full_spool_drops_the_oldest_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path, max_bytes=20_000, segment_bytes=5_000)
    records = [i.to_bytes(4, "little") * 250 for i in range(100)]  # 1,000 bytes each
    with caplog.at_level(logging.WARNING, logger="gpuledger.agent.spool"):
        for r in records:
            spool.append(r)
    kept = drain(spool)
    assert spool.size_bytes() <= 20_000 + 5_000
    assert spool.dropped_records == 100 - len(kept) > 0
    assert kept == records[-len(kept):]  # the newest survive, in order
    assert "dropped the oldest" in caplog.text


def test_a_torn_tail_is_skipped_not_replayed_as_garbage(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(b"one")
    spool.append(b"two")
    spool.close()
    seg = next(tmp_path.glob("*.seg"))
    seg.write_bytes(seg.read_bytes()[:-1])  # crash in the middle of the last write
    assert drain(Spool(tmp_path)) == [b"one"]


def test_outage_of_an_in_memory_broker_delays_but_loses_nothing(tmp_path: Path) -> None:
    broker = MemoryTransport()
    pub = SpoolingPublisher(lambda: broker, Spool(tmp_path), retry_min_s=0.05, retry_max_s=0.1)
    try:
        broker.available = False
        for i in range(20):
            pub.publish(b"node", f"m{i}".encode())
        time.sleep(0.3)
        assert len(broker) == 0 and pub.spool.pending() == 20 and pub.failures >= 1
        broker.available = True
        pub.flush(timeout_s=10)
        assert [v for _, v in broker.log[0]] == [f"m{i}".encode() for i in range(20)]
        metrics = {m.name: m.samples[0].value for m in pub.collect()}
        assert metrics["gpuledger_spool_sent_records"] == 20 and metrics["gpuledger_spool_broker_up"] == 1
    finally:
        pub.close()


def test_an_outage_is_one_log_line_down_and_one_up_with_the_spools_counters(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broker = MemoryTransport()
    broker.available = False
    with caplog.at_level(logging.DEBUG, logger="gpuledger.agent.spool"):
        pub = SpoolingPublisher(lambda: broker, Spool(tmp_path), retry_min_s=0.02, retry_max_s=0.05)
        try:
            for i in range(5):
                pub.publish(b"node", f"m{i}".encode())
                time.sleep(0.05)
            deadline = time.monotonic() + 10
            while pub.failures < 5 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert pub.failures >= 5  # several retries ...
            broker.available = True
            pub.flush(timeout_s=10)
            broker.available = False  # a second outage is a second change
            before = pub.failures
            pub.publish(b"node", b"m5")
            while pub.failures == before and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            broker.available = True
            pub.close()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "gpuledger.agent.spool"]
    assert [level for level, _ in lines] == ["WARNING", "INFO", "WARNING", "INFO"], lines  # ... one line per change
    down, up = lines[0][1], lines[1][1]
    assert down.startswith("broker unreachable: ") and "simulated outage" in down and "hint: " in down
    assert "spool: " in down and " 0 dropped, 0 sent, 1 failed send attempts" in down
    assert up.startswith("broker reachable again after ") and "spool: 0 records waiting, 0 dropped, 5 sent" in up


@pytest.fixture
def kafka_log_level():
    """open_publisher quiets the process's ``kafka`` logger: restore it for the next test."""
    level = logging.getLogger("kafka").level
    yield
    logging.getLogger("kafka").setLevel(level)


def test_verbose_keeps_kafka_pythons_own_lines(tmp_path: Path, kafka_log_level) -> None:
    """`gpuledger -v agent` (root logger at DEBUG): kafka-python's lines are shown again."""
    root = logging.getLogger()
    saved = root.level
    root.setLevel(logging.DEBUG)
    try:
        pub = open_publisher(Settings(kafka_bootstrap="127.0.0.1:9", spool_dir=str(tmp_path / "s")), "v-node")
        pub.close(timeout_s=0.1)
    finally:
        root.setLevel(saved)
    assert logging.getLogger("kafka").level == logging.NOTSET  # the root's level (DEBUG with -v) applies


@pytest.mark.slow
def test_an_agent_publishing_to_an_unreachable_broker_logs_one_line_not_kafka_pythons_flood(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, kafka_log_level) -> None:
    """kafka-python logs each connection attempt (77 lines in 10 s at a 1 s tick, before): the agent's log
    has the spool's one line for the outage, and kafka-python's only with -v (DEBUG)."""
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", spool_dir=str(tmp_path / "spool"))
    with caplog.at_level(logging.INFO):
        pub = open_publisher(settings, "quiet-node")
        try:
            for i in range(3):
                pub.publish(b"quiet-node", f"m{i}".encode())
            deadline = time.monotonic() + 30  # the producer's bootstrap gives up after 10 s
            while pub.failures == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert pub.failures >= 1
        finally:
            pub.close(timeout_s=0.1)
    kafka_lines = [r.getMessage() for r in caplog.records if r.name.startswith("kafka")]
    assert not kafka_lines, kafka_lines[:5]
    down = [r.getMessage() for r in caplog.records if r.getMessage().startswith("broker unreachable")]
    assert len(down) == 1 and "3 records waiting" in down[0]
    assert logging.getLogger("kafka").getEffectiveLevel() == logging.CRITICAL


def small_node() -> FleetSim:
    pods = tuple(
        PodSpec(f"u{k}", f"ns{k}", f"p{k}", holds=(Holding(k),), procs=(ProcSpec(k, series=k + 1),)) for k in range(2)
    )
    return FleetSim(FleetSpec((NodeSpec("spool-node", (GpuSpec("NVIDIA H100 80GB HBM3"),) * 2, pods),)), seed=5)


def ingest(bootstrap: str, topic: str, db: Path, n: int) -> None:
    with Store(db) as store:
        sub = KafkaSubscriber(bootstrap, topic, f"g-{time.monotonic_ns()}", **KAFKA_GROUP_TIMING)
        try:
            Ingestor(store, sub).run(max_idle_s=20.0, max_messages=n)
        finally:
            sub.close()


@pytest.mark.slow
@pytest.mark.kafka
def test_broker_outage_and_restart_every_tick_arrives_exactly_once(private_tansu, tmp_path: Path) -> None:
    broker = private_tansu
    topic = "agent-spool"
    sim = small_node()
    node = sim.nodes[0]
    sampler = Sampler(node, node, node="spool-node")
    sampler.tick()

    def factory() -> KafkaPublisher:
        return KafkaPublisher(broker.bootstrap, topic, delivery_timeout_ms=3_000, max_block_ms=1_000,
                              bootstrap_timeout_ms=2_000)

    pub = SpoolingPublisher(factory, Spool(tmp_path / "spool"), retry_min_s=0.2, retry_max_s=1.0)
    db = tmp_path / "ingest.duckdb"

    def tick(n: int) -> None:
        for _ in range(n):
            sim.advance(10.0)
            msg = sampler.tick()
            assert msg is not None
            pub.publish(msg.node.encode(), wire.encode(msg))

    try:
        tick(5)
        pub.flush(timeout_s=30)
        ingest(broker.bootstrap, topic, db, 5)  # consumed before the outage: tansu forgets on restart
        broker.stop()
        tick(6)  # the outage: these exist only in the spool
        deadline = time.monotonic() + 20
        while pub.failures == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pub.failures >= 1 and pub.spool.pending() == 6
        broker.start()  # same port, empty broker
        tick(4)
        pub.flush(timeout_s=60)
        ingest(broker.bootstrap, topic, db, 10)
    finally:
        pub.close()
    with Store(db, read_only=True) as store:
        seqs = store.query("SELECT seq, count(*) AS n FROM messages GROUP BY seq ORDER BY seq")
    assert seqs["seq"].to_list() == list(range(15))
    assert set(seqs["n"].to_list()) == {1}


@pytest.mark.kafka
def test_the_agent_loop_publishes_through_the_spool(kafka_broker, kafka_topic, tmp_path: Path) -> None:
    """`gpuledger agent --backend sim --kafka ... --ticks 3` as run_agent runs it: spool, send, drain."""
    from gpuledger.agent.run import run_agent
    from gpuledger.cli.agent import simulated_node
    from gpuledger.config import Settings

    settings = Settings(node_name="loop-node", kafka_bootstrap=kafka_broker, kafka_topic=kafka_topic,
                        interval_s=0.05, metrics_port=0, metrics_host="127.0.0.1",
                        spool_dir=str(tmp_path / "spool"), spool_max_bytes=2**20)
    assert run_agent(settings, simulated_node(seed=7), ticks=3) == 0
    assert Spool(tmp_path / "spool").pending() == 0  # all acknowledged, and the cursor says so on disk
    assert sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.seg")) == 0  # and the data is gone
    sub = KafkaSubscriber(kafka_broker, kafka_topic, f"loop-{time.monotonic_ns()}", **KAFKA_GROUP_TIMING)
    try:
        got: list = []
        deadline = time.monotonic() + 30
        while len(got) < 3 and time.monotonic() < deadline:
            got += sub.poll(1.0)
    finally:
        sub.close()
    msgs = sorted((wire.decode(r.value) for r in got), key=lambda m: m.seq)
    assert [m.seq for m in msgs] == [0, 1, 2] and {r.key for r in got} == {b"loop-node"}


def test_records_dropped_while_a_batch_is_in_flight_are_counted_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=20_000, segment_bytes=5_000)
    for i in range(10):
        spool.append(bytes([i]) * 1000)
    batch, cursor = spool.peek(3)  # the sender takes three...
    for i in range(30):  # ...while the tick keeps appending past the bound
        spool.append(bytes([100 + i]) * 1000)
    spool.ack(cursor, len(batch))
    rest, _ = spool.peek(10**6)
    assert spool.pending() == len(rest) > 0
    assert spool.dropped_records + len(rest) + len(batch) >= 40


def test_the_default_bound_holds_a_day_of_an_eight_gpu_node() -> None:
    """256 MiB >= 24 h at a 10 s tick for the benchmark node (8 GPUs, 32 time-sliced processes)."""
    from benchmarks.bench_agent import node_spec
    from gpuledger.agent.spool import DEFAULT_MAX_BYTES

    sim = FleetSim(node_spec(), seed=11)
    sampler = Sampler(sim.nodes[0], sim.nodes[0], node="bench-node")
    sampler.tick()
    sizes = []
    for _ in range(30):
        sim.advance(10.0)
        sizes.append(len(wire.encode(sampler.tick())) + 8)  # + the spool's record header
    per_day = max(sizes) * 8640
    assert per_day < DEFAULT_MAX_BYTES, f"{per_day} bytes a day"
    assert DEFAULT_MAX_BYTES / per_day > 3  # about 3.9 days, as the docs say
