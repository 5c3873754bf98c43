"""Ingest runs against the tansu broker, shared by the Kafka failure and storage tests.

``stream`` makes ticks whose totals mean something; ``publish``/``encoded`` put
them on a topic; ``reference`` is the uninterrupted in-process run and
``snapshot`` what it stored (every table plus the attributed totals, order-free),
so ``assert_same(snapshot(db), reference(...))`` states "as if nothing happened".
``ingest_cmd``/``started`` run ``gpuledger ingest`` as a worker process.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from gpuledger import wire
from gpuledger.analytics.job import run_attribution
from gpuledger.ingest.consumer import Ingestor
from gpuledger.store import Store
from gpuledger.transport import KafkaPublisher, KafkaSubscriber
from tests.support.factories import make_message
from tests.support.kafka import KAFKA_GROUP_TIMING

TABLES = ("messages", "devices", "processes", "allocations", "field_errors", "pods")


def stream(n_ticks: int, nodes: int = 4, n_gpus: int = 4) -> list[wire.Message]:
    """Ticks of ``nodes`` agents whose utilization and tenant vary, so totals mean something
    (pod uids made unique per node, as Kubernetes' are)."""
    out = []
    for t in range(n_ticks):
        for n in range(nodes):
            m = make_message(agent_id=f"agent-{n}", boot_id="boot-1", seq=t, node=f"node-{n}", n_gpus=n_gpus,
                             util=((t * 7 + n * 13) % 100) / 100, namespace=f"team-{n % 3}")
            m.pods = [{**p, "uid": f"node-{n}-{p['uid']}"} for p in m.pods]
            out.append(m)
    return out


def publish(bootstrap: str, topic: str, values: Sequence[tuple[bytes, bytes]]) -> None:
    with KafkaPublisher(bootstrap, topic, client_settings={"max_request_size": 16 * 2**20}) as pub:
        for key, value in values:
            pub.publish(key, value)
        pub.flush(30)


def encoded(messages: Sequence[wire.Message]) -> list[tuple[bytes, bytes]]:
    return [(m.node.encode(), wire.encode(m)) for m in messages]


def snapshot(db: Path | Store, *, sources: bool = True) -> dict[str, pl.DataFrame]:
    """Every stored table (ingest time aside; where each message was read from too,
    unless ``sources``) and the attributed totals, order-free."""
    store = db if isinstance(db, Store) else Store(db)
    try:
        run_attribution(store)
        skip = "ingested_at" if sources else "ingested_at, source"
        out = {t: store.query(f"SELECT * EXCLUDE ({skip}) FROM {t} ORDER BY ALL" if t == "messages"
                              else f"SELECT * FROM {t} ORDER BY ALL") for t in TABLES}
        out["ledger"] = store.query("SELECT * FROM ledger ORDER BY ALL")
        # Summed in one fixed order, so equal rows give bit-identical totals.
        out["totals"] = store.query(
            "SELECT tenant, kind, sum(gpu_seconds ORDER BY gpu_seconds) AS gpu_s, "
            "sum(energy_j ORDER BY energy_j) AS energy_j, count(*) AS n FROM ledger GROUP BY ALL ORDER BY ALL")
        return out
    finally:
        if not isinstance(db, Store):
            store.close()


def assert_same(got: dict[str, pl.DataFrame], want: dict[str, pl.DataFrame]) -> None:
    for name in want:
        assert got[name].equals(want[name]), f"{name} differs:\n{got[name]}\nvs\n{want[name]}"


def reference(bootstrap: str, topic: str, n: int, db: Path) -> dict[str, pl.DataFrame]:
    """The uninterrupted run: one in-process worker from the first offset to the last."""
    with Store(db) as store:
        sub = KafkaSubscriber(bootstrap, topic, f"ref-{topic}", **KAFKA_GROUP_TIMING)
        try:
            Ingestor(store, sub).run(max_messages=n, max_idle_s=10)
        finally:
            sub.close()
        assert store.count("messages") == n
        return snapshot(store)


def ingest_cmd(bootstrap: str, topic: str, group: str, db: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gpuledger.cli", "ingest", "--kafka", bootstrap, "--topic", topic,
            "--group", group, "--db", str(db), "--group-timeout-ms", "1000", "--max-age", "0",
            "--max-future", "0", *extra]


def started(proc: subprocess.Popen[str], timeout_s: float = 30) -> None:
    """Wait for the worker's start-up line, then keep draining its log in the background."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    for line in proc.stderr:
        if "ingesting" in line:
            break
        assert time.monotonic() < deadline, "ingest did not start"
    threading.Thread(target=proc.stderr.read, daemon=True).start()
