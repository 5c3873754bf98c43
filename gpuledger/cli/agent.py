"""``gpuledger agent``: the node agent, on the local driver or on one simulated node."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gpuledger.cli.common import add_command, setting_flags
from gpuledger.config import Settings

if TYPE_CHECKING:
    from gpuledger.agent.run import GpuSource


def register(sub: Any, settings: Settings) -> None:
    a = add_command(
        sub, "agent", run,
        help="sample this node's GPUs every tick and publish to Kafka",
        description="Node agent (a DaemonSet with hostPID on every GPU node). Each tick it integrates the "
        "driver's utilization sample buffers, per-process samples, memory and the energy counter, maps host "
        "PIDs to pods, and publishes one wire-schema-v1 message per node to Kafka.\n\n"
        "  gpuledger agent --backend nvml --kafka broker:9092\n"
        "  gpuledger agent --backend sim --ticks 5          # a simulated 8-GPU node, prints each tick",
    )
    a.add_argument("--backend", choices=["nvml", "sim"], default="nvml",
                   help="nvml: the local NVIDIA driver; sim: one simulated node (default: nvml)")
    setting_flags(a, settings, "--kafka", "--topic", "--interval", "--node", "--cluster")
    a.add_argument("--ticks", type=int, default=None, help="stop after this many ticks (default: run until Ctrl-C)")
    a.add_argument("--seed", type=int, default=7, help="simulator seed (with --backend sim)")
    setting_flags(a, settings, "--metrics-port", "--metrics-host", "--spool-dir", "--spool-max-bytes",
                  "--pod-resources-socket", "--kubelet-pods-url", "--dcgm-exporter-url")


def run(args: argparse.Namespace, settings: Settings, *, stop: threading.Event | None = None,
        ready: Callable[[Any], None] | None = None) -> int:
    """The agent until ``--ticks``, Ctrl-C or ``stop``; ``ready`` as in :func:`~gpuledger.agent.run.run_agent`."""
    from gpuledger.agent.run import open_nvml, run_agent

    source = open_nvml(settings) if args.backend == "nvml" else simulated_node(args.seed)
    return run_agent(settings, source, ticks=args.ticks, stop=stop, ready=ready)


def simulated_node(seed: int = 7) -> GpuSource:
    """One simulated 8-GPU node starting now, whose clock the agent advances one tick at a time."""
    from gpuledger.agent.run import GpuSource
    from gpuledger.sim.fleetsim import demo_fleet

    fleet = demo_fleet(n_nodes=1, gpus_per_node=8, seed=seed, start_us=time.time_ns() // 1000)  # its cluster: --cluster
    node = fleet.nodes[0]
    return GpuSource(node, node, fleet.advance)
