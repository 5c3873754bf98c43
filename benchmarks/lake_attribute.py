"""Attribution on the lake, peak memory and rate: ``python -m benchmarks.lake_attribute [--nodes 16] [--hours 2]``.

Not one of the stored ``bench_*`` runs: a measurement for docs/lake.md, run by hand. A simulated fleet
(``--nodes`` 8-GPU nodes of the demo fleet, ``--hours`` hours at ``--tick`` seconds) is attributed by the embedded
chunk job, its raw rows written into a lake (SQLite catalog, local warehouse); then, each in a fresh process
(``gpuledger attribute``/``merge`` as an operator runs them), with peak RSS from ``wait4`` (the process and the
pool workers it waited for):

1. ``attribute --lake`` (every shard), in this process and with ``--workers``;
2. the same again with nothing new (reads no data file, commits nothing);
3. for comparison, what it replaces: ``merge --lake`` (the whole lake into a DuckDB file), then ``attribute --db``.

It checks that the lake's ledger_hourly equals the embedded job's rollups exactly, and prints the machine's load.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from gpuledger.analytics.hourly import HOURLY_COLUMNS
from gpuledger.sim.accuracy import simulate
from gpuledger.sim.fleetsim import demo_fleet
from gpuledger.store.lake import LakeConfig, LakeStore, scan
from tests.support.shards import lake_batch, rollups

#: Measures its child: a process forked from this (large) one would start with this one's RSS high-water mark,
#: which Linux carries across exec; forked from a fresh small interpreter, the child's mark is its own.
_MEASURE = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); _, st, ru = os.wait4(p.pid, 0); "
            "print(f'maxrss_kib {ru.ru_maxrss}', file=sys.stderr); sys.exit(os.waitstatus_to_exitcode(st))")


def run(*args: str) -> tuple[float, float, str]:
    """(wall s, peak RSS MiB of the process and the pool workers it waited for, last stdout line) of
    ``gpuledger ARGS`` in a fresh process."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "gpuledger.cli", *args],
                          capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    if proc.returncode:
        raise SystemExit(f"gpuledger {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    kib = int(proc.stderr.rsplit("maxrss_kib ", 1)[1].split()[0])
    return wall, kib / 1024, proc.stdout.strip().splitlines()[-1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--hours", type=float, default=2.0)
    p.add_argument("--tick", type=float, default=10.0, help="seconds per agent interval (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--node-groups", type=int, default=8)
    a = p.parse_args()
    horizon = a.hours * 3600
    t0 = time.monotonic()
    source = simulate(demo_fleet(a.nodes, 8, seed=4, horizon_s=horizon), tick_s=a.tick, horizon_s=horizon)
    messages, devices = source.count("messages"), source.count("devices")
    ledger_rows = source.count("ledger")
    print(f"fleet: {a.nodes} nodes x 8 GPUs x {a.hours:g} h at {a.tick:g} s: {messages:,} messages, {devices:,} device "
          f"rows, {ledger_rows:,} ledger rows (simulated and attributed in {time.monotonic() - t0:.0f} s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpuledger-lake-attr-") as tmp:
        config = LakeConfig(f"sqlite:///{tmp}/catalog.db", f"{tmp}/warehouse")
        lake = LakeStore(config)
        t0 = time.monotonic()
        lake.write_arrow(lake_batch(source))
        print(f"lake written in {time.monotonic() - t0:.1f} s", flush=True)
        where = ["--lake", config.catalog_uri, "--warehouse", config.warehouse, "--node-groups", str(a.node_groups)]
        for workers in (1, a.workers):
            wall, rss, line = run("attribute", *where, "--workers", str(workers), *(["--full"] if workers > 1 else []))
            print(f"attribute --lake, {workers} process(es): {wall:.1f} s wall, peak RSS {rss:.0f} MiB; "
                  f"{messages / wall:,.0f} messages/s, {devices / wall:,.0f} device rows/s, "
                  f"{ledger_rows / wall:,.0f} ledger rows/s\n  {line}", flush=True)
            got = pl.from_arrow(scan(lake, "ledger_hourly"))
            assert isinstance(got, pl.DataFrame)
            assert_frame_equal(got.select(HOURLY_COLUMNS).sort(HOURLY_COLUMNS, nulls_last=True),
                               rollups(source).sort(HOURLY_COLUMNS, nulls_last=True), check_dtypes=False,
                               check_exact=True)
        wall, rss, line = run("attribute", *where)
        print(f"attribute --lake, nothing new: {wall:.1f} s wall (process start included), peak RSS {rss:.0f} MiB\n"
              f"  {line}", flush=True)
        db = str(Path(tmp) / "merged.duckdb")
        wall, rss, _ = run("merge", "--db", db, "--lake", config.catalog_uri, "--warehouse", config.warehouse)
        print(f"for comparison, merge --lake (whole tables into a DuckDB file): {wall:.1f} s, peak RSS {rss:.0f} MiB",
              flush=True)
        wall, rss, _ = run("attribute", "--db", db, "--shards", "--node-groups", str(a.node_groups))
        print(f"  then attribute --db --shards on that file: {wall:.1f} s, peak RSS {rss:.0f} MiB", flush=True)
    print(f"load: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print("lake rollups equal the embedded job's: yes (checked exactly)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
