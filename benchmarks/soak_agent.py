"""Soak: the agent against one simulated 8-GPU node for many ticks; memory must stay flat.

    python -m benchmarks.soak_agent [--ticks 3600] [--spool-dir DIR]     (make soak)

Each tick runs the whole agent path -- Sampler, wire encoding, the /metrics
collector (update and a scrape), the store-and-forward spool (append, send to
a publisher that acknowledges and discards, ack, segment deletion). The
simulated node is the demo node (time-sliced, fractional, MIG and exclusive
GPUs, pods coming and going) at a 10 s tick, so 3,600 ticks are 10 simulated
hours.

Memory is sampled every ``--every`` ticks: the process RSS (VmRSS), and with
tracemalloc the bytes allocated from the agent's own modules (agent/ minus the
simulator, gpuledger/wire.py) that are still alive. After a warm-up (the
first 10 % of ticks) the agent's live bytes may not grow by more than
``--max-growth-kb``; the exit status says whether they did. The RSS line
includes the simulator, which is not under test here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


class Discard:
    """A Publisher that acknowledges everything and keeps nothing."""

    def __init__(self) -> None:
        self.count = 0

    def publish(self, key: bytes, value: bytes) -> None:
        self.count += 1

    def flush(self, timeout_s: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def agent_bytes(snapshot: tracemalloc.Snapshot) -> int:
    keep = [tracemalloc.Filter(True, "*/agent/*"), tracemalloc.Filter(True, "*/gpuledger/wire.py")]
    drop = [tracemalloc.Filter(False, "*/sim/*")]
    total = 0
    for f in keep:
        total += sum(s.size for s in snapshot.filter_traces([f, *drop]).statistics("filename"))
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak_agent", description=__doc__.split("\n")[0])
    p.add_argument("--ticks", type=int, default=3600)
    p.add_argument("--every", type=int, default=300, help="sample memory every N ticks")
    p.add_argument("--max-growth-kb", type=int, default=512, help="allowed growth of the agent's live bytes")
    p.add_argument("--spool-dir", default=None)
    args = p.parse_args(argv)

    from gpuledger import wire
    from gpuledger.agent.metrics import AgentCollector
    from gpuledger.agent.sampler import Sampler
    from gpuledger.agent.spool import Spool, SpoolingPublisher
    from gpuledger.sim.fleetsim import demo_fleet

    tracemalloc.start(1)
    fleet = demo_fleet(n_nodes=1, gpus_per_node=8, seed=7)
    node = fleet.nodes[0]
    sampler = Sampler(node, node, node="soak-node")
    collector = AgentCollector("soak-node")
    tmp = tempfile.TemporaryDirectory()
    sink = Discard()
    pub = SpoolingPublisher(lambda: sink, Spool(args.spool_dir or tmp.name, max_bytes=32 * 2**20))
    sampler.tick()
    warm = max(args.every, args.ticks // 10)
    rows = []
    t0 = time.monotonic()
    for k in range(1, args.ticks + 1):
        fleet.advance(10.0)
        msg = sampler.tick()
        assert msg is not None
        collector.update(msg, sampler.device_info)
        pub.publish(msg.node.encode(), wire.encode(msg))
        if k % 60 == 0:
            list(collector.collect())  # a scrape every 10 simulated minutes
        if k % args.every == 0 or k == warm:
            pub.flush(timeout_s=30)
            rows.append((k, rss_kb(), agent_bytes(tracemalloc.take_snapshot()), len(collector._totals)))
            print(f"tick {k:6d}  rss {rows[-1][1] / 1024:7.1f} MB  agent live {rows[-1][2] / 1024:8.1f} KB  "
                  f"pod series {rows[-1][3]:4d}  spooled {pub.spool.pending()}  sent {sink.count}", flush=True)
    pub.close()
    tmp.cleanup()
    after = [r for r in rows if r[0] >= warm]
    growth_kb = (max(r[2] for r in after) - after[0][2]) / 1024
    rss_growth = (after[-1][1] - after[0][1]) / 1024
    ok = growth_kb <= args.max_growth_kb and sink.count == args.ticks
    print(f"{args.ticks} ticks in {time.monotonic() - t0:.0f} s; after warm-up (tick {warm}): agent live bytes "
          f"grew {growth_kb:.1f} KB (limit {args.max_growth_kb}), process RSS {rss_growth:+.1f} MB; "
          f"{sink.count} messages sent -> {'FLAT' if ok else 'GROWING'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
