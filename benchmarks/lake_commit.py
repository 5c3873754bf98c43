"""Lake commit latency and append rate: ``python -m benchmarks.lake_commit [--flushes N] [--sizes 50,200,1000]``.

Not one of the stored ``bench_*`` runs (it starts a PostgreSQL cluster and
moto's S3 server through the test helpers, ``tests/support/postgres.py`` and
``tests/support/s3.py``): a measurement for docs/lake.md, run by hand.

For each flush size (messages per flush; each message an 8-GPU node: 8
devices, 32 processes, 32 allocations, 8 field errors), ``--flushes``
consecutive flushes of new messages go through :meth:`LakeStore.write_arrow`
-- one Iceberg commit per table, messages last, each after reading the keys
the table already holds -- into two lakes: a PostgreSQL catalog with an S3
warehouse (moto, loopback), and a SQLite catalog with a local directory. It
prints, per lake and size, the median and worst flush wall time, the median
commit (append + catalog swap) per table, the first and last flushes' times
(do they grow as files accumulate?), and rows per second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gpuledger.store import batch_to_arrow
from gpuledger.store.lake import LakeConfig, LakeStore
from tests.support.factories import make_message
from tests.support.postgres import Postgres, pg_bindir
from tests.support.s3 import CREDENTIALS, MotoS3


def fleet(flush: int, size: int) -> list:  # type: ignore[type-arg]
    out = []
    for i in range(size):
        node = i % 500
        m = make_message(agent_id=f"agent-{node}", boot_id="b", seq=flush * 1000 + i // 500, node=f"node-{node}", n_gpus=8)
        out.append(m)
    return out


def measure(lake: LakeStore, label: str, size: int, flushes: int) -> None:
    walls, rows = [], 0
    lake.commit_seconds.clear()
    for f in range(flushes):
        tables = batch_to_arrow(fleet(f, size), [None] * size)
        rows += sum(t.num_rows for name, t in tables.items() if name != "pods")
        t0 = time.monotonic()
        stored = lake.write_arrow(tables)
        walls.append(time.monotonic() - t0)
        assert stored == size, (stored, size)
    commits = sorted(lake.commit_seconds)
    print(f"{label:22s} {size:5d} msg/flush: flush median {statistics.median(walls):6.3f} s, worst {max(walls):6.3f} s, "
          f"first {walls[0]:6.3f} s, last {walls[-1]:6.3f} s; commit per table median {statistics.median(commits):6.3f} s; "
          f"{rows / sum(walls):9.0f} rows/s, {size * flushes / sum(walls):7.0f} msg/s", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flushes", type=int, default=20)
    p.add_argument("--sizes", default="50,200,1000")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"load average before: {os.getloadavg()}; {os.cpu_count()} CPUs", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="gpuledger-lake-bench-"))
    bindir = pg_bindir()
    if bindir is None:
        print("error: no PostgreSQL server binaries\nhint: apt-get install postgresql", file=sys.stderr)
        return 2
    os.environ.update(CREDENTIALS)
    pg, s3 = Postgres(bindir), MotoS3(tmp)
    pg.start()
    s3.start()
    try:
        for size in sizes:
            warehouse = s3.bucket(f"bench-{size}") + "/raw"
            lake = LakeStore(LakeConfig(pg.uri, warehouse, s3_endpoint=s3.endpoint, namespace=f"bench_{size}"))
            measure(lake, "postgresql + s3 (moto)", size, args.flushes)
            lake = LakeStore(LakeConfig(f"sqlite:///{tmp}/catalog-{size}.db", str(tmp / f"wh-{size}")))
            measure(lake, "sqlite + local dir", size, args.flushes)
    finally:
        s3.stop()
        pg.remove()
    print(f"load average after: {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
