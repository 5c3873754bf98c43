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
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuledger import wire
from gpuledger.agent.backend import GpuBackend, WorkloadSource
from gpuledger.agent.metrics import AgentCollector
from gpuledger.agent.sampler import Sampler
from gpuledger.config import Settings
from gpuledger.errors import ConfigError

log = logging.getLogger("gpuledger.agent")


def open_backend(
    name: str, *, seed: int = 7, node: str | None = None, args: argparse.Namespace | None = None
) -> tuple[GpuBackend, WorkloadSource, Callable[[float], None] | None]:
    """(gpu backend, workload source, advance-clock function or None for real time)."""
    if name == "nvml":
        from gpuledger.agent.nvml import NvmlBackend
        from gpuledger.agent.holders import NodeWorkloads

        dcgm = None
        dcgm_url = getattr(args, "dcgm_exporter_url", None)
        if dcgm_url:
            from gpuledger.agent.dcgm import DcgmExporterScrape

            dcgm = DcgmExporterScrape(dcgm_url)
        backend = NvmlBackend(dcgm=dcgm)
        workloads = NodeWorkloads.for_node(
            backend,
            socket_path=getattr(args, "pod_resources_socket", None),
            pods_url=getattr(args, "kubelet_pods_url", None),
            proc_root=getattr(args, "proc_root", None) or "/proc",
            kubelet_insecure_tls=bool(getattr(args, "kubelet_insecure_tls", False)),
        )
        return backend, workloads, None
    from gpuledger.sim.fleetsim import demo_fleet

    fleet = demo_fleet(n_nodes=1, gpus_per_node=8, seed=seed, start_us=time.time_ns() // 1000)
    sim_node = fleet.nodes[0]
    return sim_node, sim_node, fleet.advance


def open_publisher(args: argparse.Namespace, settings: Settings, node: str) -> Any:
    """A SpoolingPublisher over a KafkaPublisher (the spool covers broker outages)."""
    from gpuledger.agent.spool import Spool, SpoolingPublisher
    from gpuledger.transport import KafkaPublisher

    spool_dir = getattr(args, "spool_dir", None) or str(Path(tempfile.gettempdir()) / f"gpuledger-spool-{node}")
    spool = Spool(spool_dir, max_bytes=getattr(args, "spool_max_bytes", None) or settings.spool_max_bytes)
    log.info("spool %s (bound %d bytes, %d records waiting from before)", spool_dir, spool.max_bytes, spool.pending())
    codec = None if settings.kafka_compression == "none" else settings.kafka_compression
    return SpoolingPublisher(
        lambda: KafkaPublisher(args.kafka, args.topic, client_settings=settings.kafka_client_settings(),
                               compression_type=codec),
        spool,
    )


def serve_metrics(collector: AgentCollector, host: str, port: int) -> Any:
    """Start /metrics on (host, port) in a daemon thread; returns the HTTP server (``.shutdown()``)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve /metrics on {host}:{port}: {exc}",
                          hint="pick a free port with --metrics-port, or 0 to turn /metrics off") from None
    log.info("serving /metrics on http://%s:%d/metrics", host, server.server_port)
    return server


def run_agent(args: argparse.Namespace, settings: Settings, *, stop: threading.Event | None = None,
              ready: Callable[[Any], None] | None = None) -> int:
    """The agent loop, until ``--ticks`` ticks, SIGINT/SIGTERM or ``stop``.

    ``ready(server)`` is called once /metrics serves (None when off): embedders
    and tests learn the bound port from ``server.server_port``.
    """
    if getattr(args, "proc_root", None) is None:
        args.proc_root = settings.proc_root
    if getattr(args, "kubelet_insecure_tls", None) is None:
        args.kubelet_insecure_tls = settings.kubelet_insecure_tls
    backend, workloads, advance = open_backend(args.backend, seed=args.seed, args=args)
    node = args.node or socket.gethostname()
    sampler = Sampler(backend, workloads, node=node)
    publisher: Any = open_publisher(args, settings, node) if args.kafka else None
    collector = AgentCollector(node, extra=[publisher.collect] if publisher is not None else [])
    port = getattr(args, "metrics_port", 0)
    server = serve_metrics(collector, getattr(args, "metrics_host", "0.0.0.0"), port) if port else None
    if ready is not None:
        ready(server)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    log.info("agent on %s: %d GPUs, tick %.1f s, %s", node, backend.device_count(), args.interval,
             f"publishing to {args.kafka} topic {args.topic}" if publisher else "printing (no --kafka)")
    sampler.tick()  # primes the sample-buffer timestamps and the energy counter
    ticks = 0
    next_at = time.monotonic() + args.interval
    try:
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
            collector.update(msg, sampler.device_info)
            if publisher is not None:
                publisher.publish(msg.node.encode(), wire.encode(msg))
            else:
                print(summarize(msg), flush=True)
    finally:
        if publisher is not None:
            publisher.close()
        if server is not None:
            server.shutdown()
            server.server_close()
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
