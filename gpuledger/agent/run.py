"""The agent's main loop: tick, encode, publish.

``run_agent`` is what ``gpuledger agent`` runs, over a :class:`GpuSource`:
the GPUs, who holds them, and how the clock moves. :func:`open_nvml` is the
production source (the local driver, kubelet and /proc); the CLI builds the
simulated one for ``--backend sim`` (production code never imports the
simulator), whose clock advances one interval per tick, so the same loop,
encoder and publisher run without a driver.
"""

from __future__ import annotations

import logging
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuledger import wire
from gpuledger.agent.backend import GpuBackend, WorkloadSource
from gpuledger.agent.metrics import AgentCollector
from gpuledger.agent.sampler import Sampler
from gpuledger.config import Settings
from gpuledger.errors import ConfigError

log = logging.getLogger("gpuledger.agent")


@dataclass(frozen=True)
class GpuSource:
    """What the agent samples: the GPUs, who holds them, and how time passes."""

    backend: GpuBackend
    workloads: WorkloadSource
    #: None: real time. Else called with each tick's length in seconds before the tick is sampled
    #: (a simulator's clock, which moves only when told).
    advance: Callable[[float], None] | None = None


def open_nvml(settings: Settings) -> GpuSource:
    """The local NVIDIA driver, the kubelet's PodResources and pods, /proc, and optionally dcgm-exporter."""
    from gpuledger.agent.holders import NodeWorkloads
    from gpuledger.agent.nvml import NvmlBackend

    dcgm = None
    if settings.dcgm_exporter_url:
        from gpuledger.agent.dcgm import DcgmExporterScrape

        dcgm = DcgmExporterScrape(settings.dcgm_exporter_url)
    backend = NvmlBackend(dcgm=dcgm)
    workloads = NodeWorkloads.for_node(
        backend,
        socket_path=settings.pod_resources_socket,
        pods_url=settings.kubelet_pods_url,
        proc_root=settings.proc_root,
        kubelet_insecure_tls=settings.kubelet_insecure_tls,
    )
    return GpuSource(backend, workloads)


def open_publisher(settings: Settings, node: str) -> Any:
    """A SpoolingPublisher over a KafkaPublisher to ``settings.kafka_bootstrap`` (the spool covers outages)."""
    from gpuledger.agent.spool import Spool, SpoolingPublisher
    from gpuledger.transport import KafkaPublisher, quiet_client_logs

    bootstrap = settings.kafka_bootstrap
    if not bootstrap:
        raise ConfigError("the agent has no Kafka bootstrap servers to publish to",
                          hint="pass --kafka host:port or set GPULEDGER_KAFKA_BOOTSTRAP")
    spool_dir = settings.spool_dir or str(Path(tempfile.gettempdir()) / f"gpuledger-spool-{node}")
    spool = Spool(spool_dir, max_bytes=settings.spool_max_bytes)
    log.info("spool %s (bound %d bytes, %d records waiting from before)", spool_dir, spool.max_bytes, spool.pending())
    codec = None if settings.kafka_compression == "none" else settings.kafka_compression
    # the spool logs the broker's state once per change; kafka-python's per-attempt lines only with -v
    quiet_client_logs(verbose=logging.getLogger().isEnabledFor(logging.DEBUG))
    return SpoolingPublisher(
        lambda: KafkaPublisher(bootstrap, settings.kafka_topic, client_settings=settings.kafka_client_settings(),
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


#: Ticks between two :func:`release_freed_memory` calls (5 minutes at the default 10 s tick).
UPKEEP_TICKS = 30


def run_agent(settings: Settings, source: GpuSource, *, ticks: int | None = None,
              stop: threading.Event | None = None, ready: Callable[[Any], None] | None = None,
              upkeep: Callable[[], object] | None = None, upkeep_ticks: int = UPKEEP_TICKS) -> int:
    """The agent loop, until ``ticks`` ticks (None: no bound), SIGINT/SIGTERM or ``stop``.

    ``upkeep`` (default :func:`release_freed_memory`) runs after the first
    tick and then every ``upkeep_ticks`` ticks.

    Publishes to ``settings.kafka_bootstrap`` when set, else prints a summary per
    tick. ``ready(server)`` is called once /metrics serves (None when off):
    embedders and tests learn the bound port from ``server.server_port``.
    """
    cap_malloc_arenas()
    backend, advance, interval = source.backend, source.advance, settings.interval_s
    node = settings.node_name or socket.gethostname()
    sampler = Sampler(backend, source.workloads, node=node, cluster=settings.cluster)
    publisher: Any = open_publisher(settings, node) if settings.kafka_bootstrap else None
    collector = AgentCollector(node, extra=[publisher.collect] if publisher is not None else [])
    port = settings.metrics_port
    server = serve_metrics(collector, settings.metrics_host, port) if port else None
    if ready is not None:
        ready(server)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    log.info("agent on %s: %d GPUs, tick %.1f s, %s", node, backend.device_count(), interval,
             f"publishing to {settings.kafka_bootstrap} topic {settings.kafka_topic}" if publisher
             else "printing (no --kafka)")
    sampler.tick()  # primes the sample-buffer timestamps and the energy counter
    upkeep = upkeep or release_freed_memory
    upkeep()  # what start-up (imports, argument parsing, the first connections) left behind
    done = 0
    next_at = time.monotonic() + interval
    try:
        while not stop.is_set() and (ticks is None or done < ticks):
            if stop.wait(max(0.0, next_at - time.monotonic())):
                break
            next_at += interval
            if advance is not None:
                advance(interval)
            msg = sampler.tick()
            if msg is None:
                continue
            done += 1
            if done % upkeep_ticks == 0:
                upkeep()
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


#: glibc's mallopt parameter M_ARENA_MAX (malloc.h).
_M_ARENA_MAX = -8


def cap_malloc_arenas(arenas: int = 2) -> bool:
    """Let glibc's malloc keep at most ``arenas`` arenas; True where it could (glibc), False elsewhere.

    glibc gives each new thread its own arena (up to 8 per core) and memory freed in one is not reused
    by another: the agent's threads (spool sender, Kafka I/O, one per /metrics scrape) would each keep
    some. Measured on the production agent (bench agent, process case, 60 ticks, MALLOC_ARENA_MAX in
    the environment): 0.7 MiB less RSS with 2 arenas, 0.9-1.0 with 1; the threads are mostly idle, so
    sharing costs nothing. Called before the agent starts its
    threads.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


def release_freed_memory() -> int:
    """Collect cyclic garbage now and hand the heap's free pages back to the OS (glibc ``malloc_trim``);
    returns the objects collected.

    A tick leaves reference cycles (exceptions with their tracebacks: every NotSupported field is one)
    that only Python's rare full collection frees, and freed memory that glibc keeps. Measured on the
    production agent (bench agent, process case, 120 ticks; the quick runs before and after this):
    60.3 -> 59.2 MiB on a Kubernetes node, 59.2 -> 58.7 bare metal. One call took 36-59 ms on the
    benchmark machine (2 loaded CPUs, ~49,000 objects): every 30 ticks of 10 s, ~0.02 % of a core.
    """
    import ctypes
    import gc

    collected = gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the collection alone
    return collected


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
