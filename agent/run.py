"""The agent's main loop: tick, encode, publish.

``run_agent`` is what ``gpuledger agent`` runs. With ``--backend sim`` one
simulated node stands in for the GPUs and its clock advances one interval per
tick, so the same loop, encoder and publisher run without a driver.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from gpuledger import wire
from gpuledger.agent.backend import GpuBackend, WorkloadSource
from gpuledger.agent.sampler import Sampler
from gpuledger.config import Settings

log = logging.getLogger("gpuledger.agent")


def open_backend(name: str, *, seed: int = 7, node: str | None = None) -> tuple[GpuBackend, WorkloadSource, Callable[[float], None] | None]:
    """(gpu backend, workload source, advance-clock function or None for real time)."""
    if name == "nvml":
        from gpuledger.agent.cgroup import ProcWorkloads
        from gpuledger.agent.nvml import NvmlBackend

        return NvmlBackend(), ProcWorkloads(), None
    from gpuledger.agent.sim import demo_fleet

    fleet = demo_fleet(n_nodes=1, gpus_per_node=8, seed=seed, start_us=time.time_ns() // 1000)
    sim_node = fleet.nodes[0]
    return sim_node, sim_node, fleet.advance


def run_agent(args: argparse.Namespace, settings: Settings) -> int:
    backend, workloads, advance = open_backend(args.backend, seed=args.seed)
    node = args.node or socket.gethostname()
    sampler = Sampler(backend, workloads, node=node)
    publisher: Any = None
    if args.kafka:
        from gpuledger.transport import KafkaPublisher

        publisher = KafkaPublisher(args.kafka, args.topic, client_settings=settings.kafka_client_settings())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info("agent on %s: %d GPUs, tick %.1f s, %s", node, backend.device_count(), args.interval,
             f"publishing to {args.kafka} topic {args.topic}" if publisher else "printing (no --kafka)")
    sampler.tick()  # primes the sample-buffer timestamps and the energy counter
    ticks = 0
    next_at = time.monotonic() + args.interval
    while not stop.is_set() and (args.ticks is None or ticks < args.ticks):
        if stop.wait(max(0.0, next_at - time.monotonic())):
            break
        next_at += args.interval
        if advance is not None:
            advance(args.interval)
        msg = sampler.tick()
        if msg is None:
            continue
        ticks += 1
        if publisher is not None:
            publisher.publish(msg.node.encode(), wire.encode(msg))
        else:
            print(summarize(msg), flush=True)
    if publisher is not None:
        publisher.flush()
        publisher.close()
    return 0


def summarize(msg: wire.Message) -> str:
    dev = msg.devices
    whole = dev[dev["mig_index"] == -1]
    util = whole["gpu_util"]
    known = util[util == util]  # drop NaN
    mean = f"{100 * known.mean():.0f}%" if len(known) else "n/a"
    return (
        f"seq {msg.seq} {msg.node}: {len(whole)} GPUs ({len(dev) - len(whole)} MIG devices), "
        f"{len(msg.processes)} processes, {len(msg.allocations)} allocations, mean util {mean}, "
        f"{len(msg.field_errors)} field errors"
    )
