"""Builders of valid wire messages for tests: data, not mocks.

``make_message()`` gives one node's tick with ``n_gpus`` whole GPUs, one pod
holding each GPU and running one process on it, and one field error (the
memory temperature is not supported), the shape a real agent sends.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuledger import wire

TICK_NS = 10_000_000_000  # 10 s, the agent's default interval
EPOCH_NS = 1_735_689_600_000_000_000  # 2025-01-01T00:00:00Z


def make_pod(i: int, namespace: str = "team-a") -> dict[str, Any]:
    return {"uid": f"pod-uid-{i}", "namespace": namespace, "name": f"train-{i}", "labels": {"team": namespace}}


def make_message(
    agent_id: str = "a",
    boot_id: str = "b",
    seq: int = 0,
    node: str = "n0",
    n_gpus: int = 2,
    *,
    util: float = 0.5,
    start_ns: int | None = None,
    tick_ns: int = TICK_NS,
    namespace: str = "team-a",
    with_processes: bool = True,
    with_allocations: bool = True,
    driver_version: str | None = "550.54.15",
) -> wire.Message:
    """A valid message; interval ``seq`` of a 10 s tick unless ``start_ns`` is given."""
    strings = wire.StringTable()
    start = EPOCH_NS + seq * tick_ns if start_ns is None else start_ns
    pods = [make_pod(g, namespace) for g in range(n_gpus)]

    devices = wire.empty("devices", n_gpus)
    for g in range(n_gpus):
        devices["gpu_index"][g] = g
        devices["mig_index"][g] = -1
        devices["uuid"][g] = strings(f"GPU-{node}-{g:04d}")
        devices["model"][g] = strings("NVIDIA H100 80GB HBM3")
        devices["profile"][g] = wire.NULL_STR
        devices["slice_fraction"][g] = 1.0
        devices["health"][g] = wire.HEALTH_OK
        devices["util_samples"][g] = 60
        devices["gpu_util"][g] = util
        devices["fb_total_bytes"][g] = 80 * 2**30
        devices["fb_used_bytes"][g] = 40 * 2**30
        devices["power_w"][g] = 350.0
        devices["energy_delta_mj"][g] = 350.0 * tick_ns / 1e6  # W x s -> mJ
        # mem_temp_c stays NaN: see the field error below.

    n_proc = n_gpus if with_processes else 0
    processes = wire.empty("processes", n_proc)
    for g in range(n_proc):
        processes["gpu_index"][g] = g
        processes["mig_index"][g] = -1
        processes["pid"][g] = 1000 + g
        processes["pod"][g] = g
        processes["container"][g] = strings("trainer")
        processes["slurm_job"][g] = wire.NULL_STR
        processes["kind"][g] = 0
        processes["samples"][g] = 60
        processes["sm_util_sum"][g] = util * 60
        processes["mem_util_sum"][g] = 0.2 * 60
        processes["used_memory_bytes"][g] = 40 * 2**30

    n_alloc = n_gpus if with_allocations else 0
    allocations = wire.empty("allocations", n_alloc)
    for g in range(n_alloc):
        allocations["gpu_index"][g] = g
        allocations["mig_index"][g] = -1
        allocations["replica"][g] = -1
        allocations["pod"][g] = g
        allocations["container"][g] = strings("trainer")
        allocations["resource"][g] = strings("nvidia.com/gpu")
        allocations["share"][g] = 1.0

    field_errors = wire.empty("field_errors", n_gpus)
    for g in range(n_gpus):
        field_errors["gpu_index"][g] = g
        field_errors["mig_index"][g] = -1
        field_errors["pid"][g] = 0
        field_errors["field"][g] = strings("mem_temp_c")
        field_errors["reason"][g] = strings("NotSupported")
    assert np.isnan(devices["mem_temp_c"]).all()

    return wire.Message(
        agent_id=agent_id,
        boot_id=boot_id,
        seq=seq,
        node=node,
        interval_start_ns=start,
        interval_end_ns=start + tick_ns,
        strings=strings.items,
        pods=pods,
        devices=devices,
        processes=processes,
        allocations=allocations,
        field_errors=field_errors,
        driver_version=driver_version,
    )


def make_stream(n: int, *, nodes: int = 3, n_gpus: int = 2) -> list[wire.Message]:
    """``n`` messages round-robin over ``nodes`` agents, each with its own seq."""
    return [
        make_message(agent_id=f"agent-{i % nodes}", boot_id="boot-1", seq=i // nodes, node=f"node-{i % nodes}", n_gpus=n_gpus)
        for i in range(n)
    ]
