"""The chart's embedded pod, run here: its three containers' own command lines and settings (from the rendered
chart), against a real Kafka-protocol broker (tansu) and one DuckDB file, fed by a simulated agent. They take
turns at DuckDB's one writer, the API answers from what the attribution loop wrote, and every process serves its
/metrics. Only the addresses change (broker, file, ports), the loop's cadence (2 s, not 300) and ingest's group
timing (tansu completes a join only after the max poll interval; tests/support/kafka.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from tests.support.chart import render
from tests.support.system import free_port, wait_until


def scrape(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", text, re.M)}


@pytest.mark.slow
def test_the_embedded_pod_ingests_attributes_and_serves(tmp_path: Path, kafka_broker: str, kafka_topic: str) -> None:
    objects = render()
    config = objects["ConfigMap/gpuledger-config"]["data"]
    pod = objects["StatefulSet/gpuledger"]["spec"]["template"]["spec"]
    db = tmp_path / "gpuledger.duckdb"
    ports = {"ingest": free_port(), "attribution": free_port(), "api": free_port(), "api-metrics": free_port()}
    base = {**os.environ, **config, "GPULEDGER_KAFKA_BOOTSTRAP": kafka_broker, "GPULEDGER_KAFKA_TOPIC": kafka_topic,
            "GPULEDGER_METRICS_HOST": "127.0.0.1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    procs: list[subprocess.Popen[str]] = []
    try:
        for c in pod["containers"]:
            env = {**base, **{e["name"]: e["value"] for e in c["env"] if "value" in e}}
            env["GPULEDGER_DB_PATH"], env["NUMBA_CACHE_DIR"] = str(db), str(tmp_path / "numba")
            args = list(c["args"])
            metrics_port = str(ports["api-metrics"] if c["name"] == "api" else ports[c["name"]])
            args[args.index("--metrics-port") + 1] = metrics_port
            if c["name"] == "api":
                args[args.index("--port") + 1] = str(ports["api"])
                args[args.index("--host") + 1] = "127.0.0.1"
                args[args.index("--audit-dir") + 1] = str(tmp_path / "audit")
            if c["name"] == "ingest":
                args += ["--group-timeout-ms", "1000"]
            if c["name"] == "attribution":
                args[args.index("--every") + 1] = "2"  # not 300 s
            command = c.get("command", ["gpuledger"] if c["name"] != "api" else None)
            procs.append(subprocess.Popen([*command, *args], env=env, cwd=tmp_path, text=True,
                                          stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{c['name']}.log", "w")))
        agent = subprocess.run(
            [sys.executable, "-m", "gpuledger.cli", "agent", "--backend", "sim", "--ticks", "4", "--interval", "1",
             "--metrics-port", "0", "--spool-dir", str(tmp_path / "spool")],
            env={**base, "GPULEDGER_NODE_NAME": "node-a"}, capture_output=True, text=True, timeout=120)
        assert agent.returncode == 0, agent.stderr[-2000:]

        def logs() -> str:
            return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in tmp_path.glob("*.log"))

        wait_until(lambda: scrape(ports["ingest"]).get("gpuledger_ingest_messages_stored_total", 0) >= 4, 120,
                   "ingest to store the agent's 4 messages")

        def lag() -> dict[str, float]:
            return {k: v for k, v in scrape(ports["ingest"]).items()
                    if k.startswith("gpuledger_ingest_consumer_lag_messages{")}

        wait_until(lambda: len(lag()) == 3 and sum(lag().values()) == 0, 30,
                   "ingest's lag, measured on the broker, to read 0 on the topic's 3 partitions")
        wait_until(lambda: scrape(ports["attribution"]).get("gpuledger_attribution_messages_total", 0) >= 4, 120,
                   "the attribution loop to attribute them")
        attribution = scrape(ports["attribution"])
        assert "gpuledger_attribution_last_success_timestamp_seconds" in attribution, logs()
        for _ in range(60):  # the token is written to the file: it may wait for a flush or a run
            made = subprocess.run([sys.executable, "-m", "gpuledger.cli", "token", "create", "--role", "admin"],
                                  env={**base, "GPULEDGER_DB_PATH": str(db)}, capture_output=True, text=True)
            if made.returncode == 0:
                break
            time.sleep(1)
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        with httpx.Client(base_url=f"http://127.0.0.1:{ports['api']}", timeout=30) as api:
            wait_until(lambda: _ok(api), 60, "the API")
            body = api.get("/v1/showback", headers={"Authorization": f"Bearer {token}"}).json()
            assert api.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 404
        assert body["rows"], json.dumps(body)[:2000]
        served = scrape(ports["api-metrics"])  # the API's one /metrics: its requests and this month's costs
        assert any(k.startswith("gpuledger_api_requests_total{") and 'route="/v1/showback"' in k for k in served)
        assert any(k.startswith("gpuledger_tenant_cost_month_to_date{") for k in served), served
        assert all(p.poll() is None for p in procs), logs()  # nobody crashed on the shared file
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _ok(api: httpx.Client) -> bool:
    try:
        return api.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False
