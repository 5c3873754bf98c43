"""A real Prometheus server scrapes the running agent and answers PromQL over its series.

Needs the ``prometheus`` binary (Debian package; ``scripts/system-deps.sh``
installs it where ``make test`` runs as root). Without it the test skips with
the reason, except under CI=true where it fails.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from gpuledger.agent.run import run_agent
from gpuledger.cli.agent import simulated_node
from gpuledger.config import Settings
from tests.support.system import free_port, need_binary

pytestmark = [pytest.mark.external, pytest.mark.slow]
PROMETHEUS_HINT = "the Debian package; scripts/system-deps.sh installs it as root"


def query(client: httpx.Client, promql: str) -> list[dict]:
    resp = client.get("/api/v1/query", params={"query": promql})
    resp.raise_for_status()
    body = resp.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_the_agent_and_answers_promql(tmp_path: Path) -> None:
    binary = need_binary("prometheus", "/usr/bin/prometheus", hint=PROMETHEUS_HINT)
    servers: list = []
    stop = threading.Event()
    settings = Settings(node_name="prom-node", kafka_bootstrap=None, kafka_topic="t", interval_s=0.5,
                        metrics_port=free_port(), metrics_host="127.0.0.1")
    agent = threading.Thread(target=run_agent, args=(settings, simulated_node(seed=7)),
                             kwargs={"stop": stop, "ready": servers.append}, daemon=True)
    agent.start()
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: gpuledger-agent\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{settings.metrics_port}']\n")
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
    prom = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{prom_port}", timeout=5) as client:
            deadline = time.monotonic() + 60
            info: list[dict] = []
            while time.monotonic() < deadline:
                assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
                try:
                    info = query(client, "count(gpuledger_gpu_info)")
                    if info:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            log_tail = (tmp_path / "prometheus.log").read_text()[-2000:]
            assert info, f"Prometheus never stored a scrape of the agent:\n{log_tail}"
            assert float(info[0]["value"][1]) == 8  # the simulated node's eight GPUs
            up = query(client, 'up{job="gpuledger-agent"}')
            assert float(up[0]["value"][1]) == 1
            # dcgm-exporter's names and labels work in PromQL
            fb = query(client, 'DCGM_FI_DEV_FB_USED{Hostname="prom-node"} + DCGM_FI_DEV_FB_FREE'
                               ' + DCGM_FI_DEV_FB_RESERVED')
            whole = [r for r in fb if "GPU_I_ID" not in r["metric"]]  # Prometheus drops empty labels
            assert len(whole) == 8 and all(float(r["value"][1]) > 10_000 for r in whole)  # MiB: an H100 has ~81,000
            # the per-pod split never exceeds the device: busy shares sum to at most the device utilization
            split = query(client, "sum by (gpu) (gpuledger_pod_gpu_busy_ratio)"
                                  " - on (gpu) group_left max by (gpu) (gpuledger_gpu_utilization_ratio)")
            assert split and all(float(r["value"][1]) <= 1e-9 for r in split)
            assert not query(client, '{__name__=~"gpuledger_pod_.*", pid!=""}')  # no pid label
    finally:
        prom.terminate()
        prom.wait(10)
        log.close()
        stop.set()
        agent.join(10)
    assert not agent.is_alive()
