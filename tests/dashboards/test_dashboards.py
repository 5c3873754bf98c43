"""The Grafana dashboards: generated JSON is committed, well-formed, valid, and every query runs.

Valid: each dashboard against Grafana's dashboard JSON schema (vendored with
its provenance in dashboards/schema/), each Infinity query and variable query
against the plugin's query model (``INFINITY_MODEL`` below, from its source).

Infinity panels: each URL is fetched from the live API on simulator demo data
(as Grafana would, with ${__from}/${__to} as epoch ms and ${gpu} from the
fleet) and must answer 200 with a non-empty frame holding every column the
panel reads. PromQL panels: each expression runs against a real Prometheus
that scrapes the agent's /metrics collector fed with the same simulated
fleet's messages, and must return data. Without a prometheus binary that
test skips (fails under CI=true).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml

from gpuledger import wire
from gpuledger.analytics.budgets import parse_budgets
from gpuledger.api.app import create_app
from gpuledger.api.tokens import create_token
from gpuledger.store import Store
from tests.support.demo_data import DEMO_BUDGETS, add_business_data, build_demo_db, demo_period_ms, demo_queues
from tests.support.live_server import serving
from tests.support.system import free_port, need_binary

ROOT = Path(__file__).resolve().parents[2]
BOARDS = ROOT / "dashboards"
SCHEMA = BOARDS / "schema" / "dashboard.jsonschema.json"
SCHEMA_SHA256 = "67451cd5b288f97e3f68eccd52ffa4f75151fc87c669b8cd93c051056b294265"  # dashboards/schema/README.md
VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}")  # ${name} or ${name:format}
FILTER_VARIABLES = {"cluster", "tenant", "namespace", "model"}

#: The Infinity plugin's query model, from grafana/grafana-infinity-datasource src/types/query.types.ts
#: (InfinityJSONQuery with a URL source: InfinityQueryWithDataSource, InfinityURLOptions, InfinityColumn)
#: and src/types/variables.types.ts (VariableQueryInfinity), read at commit 03a788f5 / 0268d749.
INFINITY_MODEL: dict[str, Any] = {
    "type": {"json", "csv", "tsv", "xml", "graphql", "html", "series", "global", "uql", "groq", "google-sheets",
             "transformations"},
    "source": {"url", "inline", "reference", "random-walk", "expression"},
    "format": {"table", "timeseries", "dataframe", "as-is", "node-graph-nodes", "node-graph-edges"},
    "json_parser": {"simple", "backend", "sqlite", "uql", "groq"},
    "column_type": {"string", "number", "timestamp", "timestamp_epoch", "timestamp_epoch_s"},
    "method": {"GET", "POST"},
    # DataQuery's own fields, then InfinityJSONQuery's with a URL source.
    "keys": {"refId", "hide", "key", "queryType", "datasource", "type", "source", "parser", "url", "url_options",
             "root_selector", "columns", "filters", "format", "json_options", "filterExpression",
             "summarizeExpression", "summarizeBy", "computed_columns"},
    "url_option_keys": {"method", "params", "headers", "data", "body_type", "body_content_type", "body_form",
                        "body_graphql_query"},
    "column_keys": {"selector", "text", "type", "timestampFormat"},
    "variable_keys": {"queryType", "refId", "infinityQuery", "query"},
}


def infinity_problems(q: dict[str, Any]) -> list[str]:
    """What in an Infinity JSON/URL query does not fit the plugin's model (empty: it fits)."""
    m = INFINITY_MODEL
    out = [f"unknown field {k!r}" for k in q if k not in m["keys"]]
    checks = [("type", m["type"]), ("source", m["source"]), ("format", m["format"])]
    out += [f"{k}={q.get(k)!r} is not one of {sorted(allowed)}" for k, allowed in checks if q.get(k) not in allowed]
    if q.get("type") == "json" and q.get("parser", "simple") not in m["json_parser"]:
        out.append(f"parser={q.get('parser')!r} is not a JSON parser")
    if not isinstance(q.get("refId"), str) or not q["refId"]:
        out.append("refId missing")
    if q.get("source") == "url":
        opts = q.get("url_options")
        if not isinstance(q.get("url"), str) or not isinstance(opts, dict):
            out.append("a URL source needs url and url_options")
        else:
            out += [f"unknown url_options field {k!r}" for k in opts if k not in m["url_option_keys"]]
            if opts.get("method") not in m["method"]:
                out.append(f"url_options.method={opts.get('method')!r}")
    if not isinstance(q.get("root_selector"), str) or not isinstance(q.get("columns"), list):
        out.append("root_selector (string) and columns (list) are required")
    for c in q.get("columns", []):
        out += [f"unknown column field {k!r}" for k in c if k not in m["column_keys"]]
        if not (isinstance(c.get("selector"), str) and isinstance(c.get("text"), str)):
            out.append(f"column {c} needs selector and text")
        if c.get("type") not in m["column_type"]:
            out.append(f"column type {c.get('type')!r} is not one of {sorted(m['column_type'])}")
    return out


def variable_problems(v: dict[str, Any]) -> list[str]:
    """What in a query variable's ``query`` does not fit Infinity's ``VariableQueryInfinity``."""
    q = v["query"]
    out = [f"unknown variable query field {k!r}" for k in q if k not in INFINITY_MODEL["variable_keys"]]
    if q.get("queryType") != "infinity" or not isinstance(q.get("refId"), str):
        out.append("a variable query needs queryType 'infinity' and a refId")
    return out + infinity_problems(q.get("infinityQuery", {}))


def grafana_schema() -> dict[str, Any]:
    """The vendored schema, with the one correction dashboards/schema/README.md explains."""
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    query = schema["definitions"]["VariableModel"]["properties"]["query"]
    branches = query["oneOf"] if "oneOf" in query else query["anyOf"]
    assert branches[1] == {"type": "object", "additionalProperties": {"type": "object", "additionalProperties": {}}}
    branches[1] = {"type": "object"}  # CUE: query?: string | {...}
    return schema


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
            used = {v for v, _ in VARIABLE.findall(text)} - {"__from", "__to"}
            assert used <= variables, (name, p["title"], used)
            assert {f for v, f in VARIABLE.findall(text) if v in FILTER_VARIABLES} <= {"percentencode"}, text
            if board["uid"] in ("gpuledger-showback", "gpuledger-idle") and "id" in p:  # every panel filters
                assert used >= FILTER_VARIABLES, (name, p["title"], FILTER_VARIABLES - used)
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
    for uid in ("gpuledger-showback", "gpuledger-idle"):
        board = next(b for b in load_all().values() if b["uid"] == uid)
        assert [v["name"] for v in board["templating"]["list"]] == ["cluster", "tenant", "namespace", "model"]


def test_every_dashboard_validates_against_grafanas_dashboard_schema() -> None:
    import jsonschema_rs

    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256, "update dashboards/schema/README.md"
    validator = jsonschema_rs.Draft7Validator(grafana_schema())
    for name, board in load_all().items():
        errors = [f"{list(e.instance_path)}: {e.message[:200]}" for e in validator.iter_errors(board)]
        assert not errors, (name, errors)
    board = load_all()["gpuledger-showback.json"]  # the validator does reject what Grafana would
    for broken in ({k: v for k, v in board.items() if k != "annotations"},
                   {**board, "panels": [{**board["panels"][0], "gridPos": {"x": 0, "y": 0, "w": 25, "h": 8}}]},
                   {**board, "templating": {"list": [{**board["templating"]["list"][0], "refresh": 7}]}}):
        assert not validator.is_valid(broken)


def test_every_infinity_query_follows_the_plugins_query_model() -> None:
    checked = 0
    for name, board in load_all().items():
        for p in board["panels"]:
            for t in p["targets"]:
                if t["datasource"]["uid"] == "gpuledger-api":
                    assert not infinity_problems(t), (name, p["title"], infinity_problems(t))
                    checked += 1
        for v in board["templating"]["list"]:
            assert not variable_problems(v), (name, v["name"], variable_problems(v))
            checked += 1
    assert checked >= 25
    good = next(t for b in load_all().values() for p in b["panels"] for t in p["targets"] if "url" in t)
    for bad in ({**good, "format": "tabel"}, {**good, "columns": [{"selector": "x", "text": "x", "type": "int"}]},
                {**good, "url_options": {"method": "PUT"}}, {**good, "rootSelector": "rows"},
                {k: v for k, v in good.items() if k != "refId"}):
        assert infinity_problems(bad), bad
    var = copy.deepcopy(next(v for b in load_all().values() for v in b["templating"]["list"]))
    var["query"]["queryType"] = "legacy"
    assert variable_problems(var)


# --- queries against live services --------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    last: dict[str, wire.Message] = {}
    path = add_business_data(build_demo_db(tmp_path_factory.mktemp("boards") / "demo.duckdb",
                                           on_message=lambda m: last.__setitem__(m.node, m)))
    with Store(path) as store:
        _, token = create_token(store, "admin")
    app = create_app(str(path), budgets=parse_budgets(DEMO_BUDGETS), queues=demo_queues(path))
    with serving(app) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield {"client": client, "last": last}


def expand(text: str, gpu: str, values: dict[str, str] | None = None) -> str:
    """A query as Grafana sends it: the demo's span, ``gpu``, and the variables (default: All, empty)."""
    start, end = demo_period_ms()
    chosen = {"__from": str(start), "__to": str(end), "gpu": gpu, **{v: "" for v in FILTER_VARIABLES},
              **(values or {})}

    def one(m: re.Match[str]) -> str:
        value = chosen[m.group(1)]
        return quote(value, safe="") if m.group(2) == "percentencode" else value

    return VARIABLE.sub(one, text)


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


@pytest.mark.slow
def test_variables_list_values_and_every_panel_follows_them(demo: dict[str, Any]) -> None:
    """Choose values as a person would, each from its variable's own list; every panel answers within them."""
    client: httpx.Client = demo["client"]
    board = load_all()["gpuledger-showback.json"]
    chosen: dict[str, str] = {}
    for v in board["templating"]["list"]:
        listed = [row["value"] for row in client.get(expand(v["query"]["infinityQuery"]["url"], "", chosen)).json()]
        assert listed, v["name"]
        chosen[v["name"]] = "nlp" if v["name"] == "tenant" else listed[0]  # a tenant with several namespaces
    assert chosen["cluster"] == "default"
    everything = client.get(expand("/v1/values?dimension=namespace&start=${__from}&end=${__to}", "")).json()
    mine = client.get(expand(board["templating"]["list"][2]["query"]["infinityQuery"]["url"], "", chosen)).json()
    assert 0 < len(mine) < len(everything)  # $namespace follows $tenant
    answered = 0
    for name in ("gpuledger-showback.json", "gpuledger-idle.json"):
        for p, t in targets(load_all()[name]):
            if "id" not in p:
                continue
            r = client.get(expand(t["url"], "", chosen))
            assert r.status_code == 200, (name, p["title"], r.text)
            body = r.json()
            frame = body[t["root_selector"]] if t["root_selector"] else body
            for dim in ("tenant", "namespace", "model"):
                assert {row[dim] for row in frame if dim in row} <= {chosen[dim]}, (name, p["title"], dim)
            answered += bool(frame)
    assert answered >= 8


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
