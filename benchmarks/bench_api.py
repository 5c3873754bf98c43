"""API load: monthly showback over 1,000 GPUs and 50 tenants, 50 concurrent clients on loopback.

Set-up: a synthetic ledger written straight to DuckDB (not through the
simulator, which would take hours at this size): 125 nodes x 8 GPUs, one
month of hourly intervals (720 per GPU), each GPU held by one of 50 tenants
(or nobody, 10 %) with a random busy share, so one busy, one allocated-idle
or one unallocated row per GPU interval plus a second tenant on 20 % of GPUs
(time-sliced). ``gpuledger serve`` runs as its own process with auth on and an
admin token; a load generator in another process (asyncio + httpx, one
keep-alive connection per client) runs ``concurrency`` clients, each sending
``GET /v1/showback?start=<month>&end=<next month>&group_by=tenant`` back to
back for ``seconds``.

Rows: ``cold`` is the first request after start-up (reads the month, prices
it, caches it under the file's version); ``load`` is the steady state at 50
clients: p50/p99 latency measured by the clients (ms), throughput (req/s) and
the server's CPU time per request (from /proc); ``load_wrk`` is the same load
from ``wrk`` (Debian package; skipped when it is not installed), whose own
CPU cost on the shared VM is far lower than the Python generator's.
``quick`` shrinks to 100 GPUs x 7 days and 3 s of load.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from benchmarks.result import Target
from gpuledger.analytics import kinds as K

UNITS = {
    "gpus": "count", "tenants": "count", "days": "d", "ledger_rows": "rows", "build_s": "s",
    "latency_ms": "ms", "second_request_ms": "ms", "clients": "count", "seconds": "s", "requests": "count",
    "errors": "count", "p50_ms": "ms", "p99_ms": "ms", "max_ms": "ms", "throughput_rps": "req/s", "cpus": "count",
    "server_cpu_ms_per_request": "ms CPU", "load_avg_1m": "load", "hourly_rows": "rows", "rollup_build_s": "s",
    "cold_from_rollups_ms": "ms", "cold_from_ledger_ms": "ms", "same_answer": "bool",
}
TARGETS = (
    Target("monthly showback by tenant, p99 latency at 50 concurrent clients (wrk)", "p99_ms", "<", 50.0, "ms",
           "issue 6", {"case": "load_wrk"}),
)
MONTH_START = 1_790_812_800 * 10**9  # 2026-10-01T00:00:00Z in ns
HOUR_NS = 3_600 * 10**9
MODELS = ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA L4")


def synthetic_ledger(n_gpus: int, hours: int, n_tenants: int, seed: int = 1, tick_s: int = 3600) -> pl.DataFrame:
    """Ledger rows (the ``ledger`` table's columns) for ``n_gpus`` x ``hours`` of ``tick_s`` intervals."""
    rng = np.random.default_rng(seed)
    n = hours * 3600 // tick_s
    g = np.repeat(np.arange(n_gpus), n)
    h = np.tile(np.arange(n), n_gpus)
    owner = rng.integers(0, n_tenants, n_gpus)[g]
    held = rng.random(n_gpus)[g] > 0.10
    busy = np.where(held, rng.random(g.size) * tick_s, 0.0)
    second = (rng.random(n_gpus) < 0.20)[g] & held
    other = (owner + 1 + rng.integers(0, n_tenants - 1, n_gpus)[g]) % n_tenants
    start = MONTH_START + h.astype(np.int64) * tick_s * 10**9
    node = g // 8
    frames = []

    def part(mask: np.ndarray, kind: str, tenant: np.ndarray | None, seconds: np.ndarray, rule: str) -> None:
        idx = np.flatnonzero(mask)
        t = np.array([f"team-{i:02d}" for i in range(n_tenants)])
        names = t[tenant[idx]] if tenant is not None else np.full(idx.size, K.PLATFORM_TENANT)
        frames.append(pl.DataFrame({
            "agent_id": [f"node-{n:03d}" for n in node[idx]], "boot_id": "b", "seq": h[idx].astype(np.uint64),
            "node": [f"node-{n:03d}" for n in node[idx]], "interval_start_ns": start[idx],
            "interval_end_ns": start[idx] + tick_s * 10**9, "gpu_uuid": [f"GPU-{x:05d}" for x in g[idx]],
            "gpu_index": (g[idx] % 8).astype(np.uint16), "mig_index": np.full(idx.size, -1, np.int16),
            "model": np.array(MODELS)[g[idx] % 3], "profile": None,
            "sharing": np.where(second[idx], "time_sliced", np.where(held[idx], "exclusive", "unallocated")),
            "kind": kind, "tenant": names, "namespace": None if tenant is None else names,
            "pod": None if tenant is None else [f"{n}-job-{x % 7}" for n, x in zip(names, g[idx])],
            "rule": rule, "gpu_seconds": seconds[idx], "energy_j": seconds[idx] * 300.0,
            "memory_gb_seconds": seconds[idx] * 20.0, "cluster": "default",
        }))

    share = np.where(second, 0.5, 1.0)
    part(held, K.BUSY, owner, busy * share, K.RULE_PROCESS_SAMPLES)
    part(held, K.ALLOCATED_IDLE, owner, (tick_s - busy) * share, K.RULE_IDLE_SHARE)
    part(second, K.BUSY, other, busy * 0.5, K.RULE_PROCESS_SAMPLES)
    part(second, K.ALLOCATED_IDLE, other, (tick_s - busy) * 0.5, K.RULE_IDLE_SHARE)
    part(~held, K.UNALLOCATED, None, np.full(g.size, float(tick_s)), K.RULE_UNALLOCATED)
    return pl.concat(frames, how="vertical_relaxed")


async def _load(url: str, token: str, concurrency: int, seconds: float) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors = 0
    ready = asyncio.Barrier(concurrency)
    stop = 0.0

    async def client() -> None:
        nonlocal errors, stop
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            await c.get(url)  # connect and warm up: not measured
            await ready.wait()
            stop = stop or time.perf_counter() + seconds
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await c.get(url)
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != 200

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {"latencies": latencies, "errors": errors, "wall_s": seconds + (time.perf_counter() - stop)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parameters(quick: bool) -> dict[str, Any]:
    return {"gpus": 100 if quick else 1000, "days": 7 if quick else 31, "tenants": 50, "clients": 50,
            "seconds": 3.0 if quick else 15.0, "tick_case_gpus": 16 if quick else 100,
            "tick_case_days": 1 if quick else 2, "tick_case_tick_s": 10}


def run(quick: bool) -> list[dict[str, Any]]:
    from gpuledger.api.tokens import create_token
    from gpuledger.store import Store

    params = parameters(quick)
    n_gpus, days, tenants, concurrency = params["gpus"], params["days"], params["tenants"], params["clients"]
    seconds = params["seconds"]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        t0 = time.perf_counter()
        ledger = synthetic_ledger(n_gpus, days * 24, tenants)
        with Store(db) as store:
            store.append("ledger", ledger)
            _, token = create_token(store, "admin")
        build_s = time.perf_counter() - t0
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "gpuledger.cli", "serve", "--db", str(db), "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"
        url = f"{base}/v1/showback?start=2026-10-01&end=2026-11-01&group_by=tenant"
        try:
            _wait(base)
            cold = _once(url, token)
            warm = _once(url, token)
            cpu0 = _cpu_s(server.pid)
            load = subprocess.run([sys.executable, "-m", "benchmarks.bench_api", "--load", url, token,
                                   str(concurrency), str(seconds)], capture_output=True, text=True, timeout=300,
                                  cwd=Path(__file__).resolve().parents[1], check=False)
            if load.returncode != 0:
                raise RuntimeError(load.stderr[-2000:])
            result = json.loads(load.stdout)
            server_cpu_s = _cpu_s(server.pid) - cpu0
            wrk = _wrk(url, token, concurrency, seconds)
        finally:
            server.terminate()
            server.wait(10)
    lat = np.array(result["latencies"]) * 1000
    return [
        {"case": "setup", "gpus": n_gpus, "tenants": tenants, "days": days, "ledger_rows": ledger.height,
         "build_s": round(build_s, 1)},
        {"case": "cold", "request": "monthly showback by tenant", "latency_ms": round(cold * 1000, 1),
         "second_request_ms": round(warm * 1000, 1)},
        {"case": "load", "clients": concurrency, "seconds": seconds, "requests": int(lat.size),
         "errors": result["errors"], "p50_ms": round(float(np.percentile(lat, 50)), 1),
         "p99_ms": round(float(np.percentile(lat, 99)), 1), "max_ms": round(float(lat.max()), 1),
         "throughput_rps": round(lat.size / result["wall_s"], 1), "cpus": os.cpu_count(),
         "server_cpu_ms_per_request": round(server_cpu_s * 1000 / max(1, lat.size), 2),
         "load_avg_1m": round(os.getloadavg()[0], 1)},
        wrk,
        _cold_at_tick(Path(__file__).resolve().parents[1], quick),
    ]


def _cold_at_tick(repo: Path, quick: bool) -> dict[str, Any]:
    """The first showback request over a ledger at the agent's 10 s tick: from the hourly
    rollups (as served), then with every hour marked pending (forces the interval-grain ledger)."""
    from gpuledger.analytics.hourly import rebuild_hourly
    from gpuledger.api.tokens import create_token
    from gpuledger.store import Store

    n_gpus, days = parameters(quick)["tick_case_gpus"], parameters(quick)["tick_case_days"]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "tick.duckdb"
        ledger = synthetic_ledger(n_gpus, days * 24, 20, seed=2, tick_s=10)
        with Store(db) as store:
            store.append("ledger", ledger)
            t0 = time.perf_counter()
            rebuild_hourly(store)
            rollup_s = time.perf_counter() - t0
            hourly_rows = store.count("ledger_hourly")
            _, token = create_token(store, "admin")
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "gpuledger.cli", "serve", "--db", str(db), "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=repo)
        base = f"http://127.0.0.1:{port}"
        url = f"{base}/v1/showback?start=2026-10-01&end=2026-11-01&group_by=tenant,node"
        try:
            _wait(base)
            t0 = time.perf_counter()
            fast = _get(url, token)
            rollups_s = time.perf_counter() - t0
            with Store(db) as store:  # the file changes: the API's cache is dropped
                store.pend_ledger_hours()
            t0 = time.perf_counter()
            slow = _get(url, token)
            ledger_s = time.perf_counter() - t0
        finally:
            server.terminate()
            server.wait(10)
    return {"case": "cold_10s_tick", "gpus": n_gpus, "days": days, "ledger_rows": ledger.height,
            "hourly_rows": hourly_rows, "rollup_build_s": round(rollup_s, 2),
            "cold_from_rollups_ms": round(rollups_s * 1000, 1), "cold_from_ledger_ms": round(ledger_s * 1000, 1),
            "same_answer": fast == slow, "load_avg_1m": round(os.getloadavg()[0], 1)}


def _wrk(url: str, token: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """The same load from wrk (C, Debian package ``wrk``): a load generator that costs the VM far less CPU."""
    row: dict[str, Any] = {"case": "load_wrk", "clients": concurrency, "seconds": seconds}
    if shutil.which("wrk") is None:
        return {**row, "skipped": "wrk is not installed (apt-get install wrk)"}
    out = subprocess.run(["wrk", "-t2", f"-c{concurrency}", f"-d{int(seconds)}s", "--latency",
                          "-H", f"Authorization: Bearer {token}", url], capture_output=True, text=True,
                         timeout=seconds + 60, check=False).stdout
    pct = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(50|99)%\s+(\S+)$", out, re.M)}
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {**row, "p50_ms": pct.get("50"), "p99_ms": pct.get("99"),
            "throughput_rps": float(rps.group(1)) if rps else None, "errors": int(bad.group(1)) if bad else 0,
            "load_avg_1m": round(os.getloadavg()[0], 1)}


def _ms(text: str) -> float:
    """wrk's '812.00us' / '1.23ms' / '1.02s' in milliseconds."""
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return round(float(text[: -len(unit)]) * scale, 2)
    raise ValueError(f"unknown wrk duration {text!r}")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; includes the warm-up requests)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait(base: str) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("gpuledger serve did not start in 60 s")


def _get(url: str, token: str) -> Any:
    import httpx

    r = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=600)
    if r.status_code != 200:
        raise RuntimeError(f"{r.status_code}: {r.text[:500]}")
    return r.json()


def _once(url: str, token: str) -> float:
    import httpx

    t0 = time.perf_counter()
    r = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    elapsed = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"{r.status_code}: {r.text[:500]}")
    return elapsed


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--load":
    out = asyncio.run(_load(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
    print(json.dumps(out))
