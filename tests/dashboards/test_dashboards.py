"""The Grafana dashboards: generated JSON is committed, well-formed, and every query runs.

Infinity panels: each URL is fetched from the live API on simulator demo data
(as Grafana would, with ${__from}/${__to} as epoch ms and ${gpu} from the
fleet) and must answer 200 with a non-empty frame holding every column the
panel reads. PromQL panels: each expression runs against a real Prometheus
that scrapes the agent's /metrics collector fed with the same simulated
fleet's messages, and must return data. Without a prometheus binary that
test skips (fails under CI=true).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gpuledger import wire
from gpuledger.api.app import create_app
from gpuledger.api.tokens import create_token
from gpuledger.store import Store
from tests.support.demo_data import build_demo_db, demo_period_ms
from tests.support.live_server import serving
from tests.support.system import free_port, need_binary

ROOT = Path(__file__).resolve().parents[2]
BOARDS = ROOT / "dashboards"


def _build_module() -> Any:
    spec = importlib.util.spec_from_file_location("dashboards_build", BOARDS / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_all() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(BOARDS.glob("*.json"))}


def targets(board: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for p in board["panels"]:
        for t in p["targets"]:
            yield p, t
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            yield {"title": f"variable {v['name']}"}, v["query"]["infinityQuery"]


def test_committed_json_is_what_build_py_writes() -> None:
    build = _build_module()
    boards = load_all()
    assert set(boards) == {f"gpuledger-{n}.json" for n in build.DASHBOARDS}
    for name in build.DASHBOARDS:
        assert (BOARDS / f"gpuledger-{name}.json").read_text() == build.render(name), \
            f"run `python dashboards/build.py` ({name} is stale)"


def test_structure() -> None:
    metrics_src = (ROOT / "gpuledger" / "agent" / "metrics.py").read_text()
    exported = set(re.findall(r'"((?:DCGM_FI|gpuledger)_[A-Za-z_]+)"', metrics_src))
    provisioned = yaml.safe_load((BOARDS / "provisioning" / "datasources" / "gpuledger.yaml").read_text())
    uids = {d["uid"]: d["type"] for d in provisioned["datasources"]}
    assert uids == {"gpuledger-api": "yesoreyeram-infinity-datasource", "prometheus": "prometheus"}
    providers = yaml.safe_load((BOARDS / "provisioning" / "dashboards" / "gpuledger.yaml").read_text())
    assert providers["providers"][0]["type"] == "file"
    seen_uids = set()
    kinds = {"infinity": 0, "prometheus": 0}
    for name, board in load_all().items():
        assert board["uid"] not in seen_uids and board["title"] and board["schemaVersion"] >= 36
        seen_uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        variables = {v["name"] for v in board["templating"]["list"]}
        for p in board["panels"]:
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24 and g["h"] > 0 and p["targets"], (name, p["title"])
        for p, t in targets(board):
            uid = t["datasource"]["uid"]
            assert uids[uid] == t["datasource"]["type"], (name, p["title"])
            text = t.get("url") or t.get("expr") or ""
            used = set(re.findall(r"\$\{(\w+)\}", text)) - {"__from", "__to"}
            assert used <= variables, (name, p["title"], used)
            if uid == "gpuledger-api":
                kinds["infinity"] += 1
                assert t["url"].startswith("/v1/") and "start=${__from}&end=${__to}" in t["url"], t["url"]
                assert t["columns"] and all(c["selector"] for c in t["columns"])
                if t["format"] == "timeseries":
                    assert t["columns"][0] == {"selector": "time", "text": "time", "type": "timestamp_epoch"}
            else:
                kinds["prometheus"] += 1
                names = set(re.findall(r"\b((?:DCGM_FI|gpuledger)_[A-Za-z_]+)\b", t["expr"]))
                assert names and names <= exported, (name, t["expr"], names - exported)
    assert kinds["infinity"] >= 10 and kinds["prometheus"] >= 8


# --- queries against live services --------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    last: dict[str, wire.Message] = {}
    path = build_demo_db(tmp_path_factory.mktemp("boards") / "demo.duckdb",
                         on_message=lambda m: last.__setitem__(m.node, m))
    with Store(path) as store:
        _, token = create_token(store, "admin")
    with serving(create_app(str(path))) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield {"client": client, "last": last}


def expand(text: str, gpu: str) -> str:
    start, end = demo_period_ms()
    return text.replace("${__from}", str(start)).replace("${__to}", str(end)).replace("${gpu}", gpu)


@pytest.mark.slow
def test_every_infinity_query_returns_a_full_frame_from_the_live_api(demo: dict[str, Any]) -> None:
    client: httpx.Client = demo["client"]
    start, end = demo_period_ms()
    fleet = client.get("/v1/fleet", params={"start": start, "end": end, "limit": 1000}).json()["rows"]
    gpu = next(r["gpu"] for r in fleet if r["sharing"] == "time_sliced")  # shared by several tenants
    ran = 0
    for name, board in load_all().items():
        for p, t in targets(board):
            if t["datasource"]["uid"] != "gpuledger-api":
                continue
            r = client.get(expand(t["url"], gpu))
            assert r.status_code == 200, (name, p["title"], r.text)
            body = r.json()
            frame = body[t["root_selector"]] if t["root_selector"] else body
            assert isinstance(frame, list) and frame, (name, p["title"], "empty frame")
            for c in t["columns"]:
                assert all(c["selector"] in row for row in frame), (name, p["title"], c["selector"])
                if c["type"] != "string":  # strings may be null (e.g. no MIG profile); measures may not all be
                    assert any(row[c["selector"]] is not None for row in frame), (name, p["title"], c["selector"])
            if "/v1/series/gpu" in t["url"]:
                assert len({row["tenant"] for row in frame}) >= 2  # the GPU was shared: more than one tenant
            ran += 1
    assert ran >= 10


@pytest.fixture(scope="module")
def prometheus(demo: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    binary = need_binary("prometheus", hint="apt-get install prometheus, or scripts/system-deps.sh as root")
    from gpuledger.agent.metrics import AgentCollector
    from gpuledger.agent.run import serve_metrics

    msg = demo["last"]["gpu-node-0"]
    collector = AgentCollector(msg.node)
    collector.update(msg)
    server = serve_metrics(collector, "127.0.0.1", 0)
    work = tmp_path_factory.mktemp("prom")
    (work / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "gpuledger-agent",
                            "static_configs": [{"targets": [f"127.0.0.1:{server.server_port}"]}]}]}))
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=open(work / "prometheus.log", "w"))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=base, timeout=5) as c:
            while True:
                assert proc.poll() is None, (work / "prometheus.log").read_text()[-2000:]
                try:
                    r = c.get("/api/v1/query", params={"query": "DCGM_FI_DEV_GPU_UTIL"})
                    # 503 "Service Unavailable" (plain text) until Prometheus is ready
                    if r.status_code == 200 and r.json()["data"]["result"]:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "Prometheus did not scrape the agent in 60 s"
                time.sleep(0.5)
        yield {"base": base, "msg": msg}
    finally:
        proc.terminate()
        proc.wait(10)
        server.shutdown()


@pytest.mark.external
@pytest.mark.slow
def test_every_promql_query_returns_data_from_a_real_prometheus(prometheus: dict[str, Any]) -> None:
    msg = prometheus["msg"]
    uuid = msg.strings[int(msg.devices[msg.devices["mig_index"] == -1]["uuid"][4])]  # a time-sliced GPU
    ran = 0
    with httpx.Client(base_url=prometheus["base"], timeout=10) as c:
        for name, board in load_all().items():
            for p, t in targets(board):
                if t["datasource"]["uid"] != "prometheus":
                    continue
                r = c.get("/api/v1/query", params={"query": expand(t["expr"], uuid)}).json()
                assert r["status"] == "success", (name, p["title"], r)
                assert r["data"]["result"], (name, p["title"], t["expr"], "no data")
                ran += 1
    assert ran >= 8
