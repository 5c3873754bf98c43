"""Tokens, roles and tenant isolation, over real HTTP on demo data from the simulator."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpuledger.analytics import kinds as K
from gpuledger.api.app import create_app
from gpuledger.api.tokens import create_token, revoke_token
from gpuledger.store import Store
from tests.support.demo_data import build_demo_db, other_tenants_pods
from tests.support.live_server import serving

pytestmark = pytest.mark.slow  # most tests read the module's demo file (simulated hours, built once)
TENANT = "nlp"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = build_demo_db(tmp_path_factory.mktemp("auth") / "demo.duckdb")
    with Store(path) as store:
        tokens = {role: create_token(store, role, TENANT if role == "tenant" else None)[1]
                  for role in ("admin", "tenant", "finance")}
        tokens["revoked"] = create_token(store, "admin")[1]
        revoke_token(store, tokens["revoked"])
    return {"path": path, "tokens": tokens}


@pytest.fixture(scope="module")
def client(demo: dict[str, Any]) -> Iterator[httpx.Client]:
    with serving(create_app(str(demo["path"]))) as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def routes(client: httpx.Client) -> list[tuple[str, list[dict[str, Any]]]]:
    spec = client.get("/openapi.json").json()
    return [(path, op.get("parameters", [])) for path, ops in sorted(spec["paths"].items())
            for method, op in ops.items() if method == "get"]


def required_params(params: list[dict[str, Any]], gpu: str) -> dict[str, str]:
    values = {"month": "2026-10", "gpu": gpu}
    return {p["name"]: values.get(p["name"], "x") for p in params if p.get("required") and p["in"] == "query"}


def strings_under(body: Any, key: str) -> list[Any]:
    """Every value of ``key`` anywhere in a JSON document."""
    found: list[Any] = []
    if isinstance(body, dict):
        for k, v in body.items():
            if k == key:
                found.extend(v if isinstance(v, list) else [v])
            found.extend(strings_under(v, key))
    elif isinstance(body, list):
        for v in body:
            found.extend(strings_under(v, key))
    return found


def test_every_v1_route_needs_a_valid_token(client: httpx.Client, demo: dict[str, Any]) -> None:
    v1 = [(p, params) for p, params in routes(client) if p.startswith("/v1/")]
    assert len(v1) >= 10
    for path, params in v1:
        query = required_params(params, "GPU-x")
        for headers, code in (({}, "unauthenticated"), (auth("glt_0000_short"), "invalid_token"),
                              (auth("glt_00000000_" + "A" * 43), "invalid_token"),
                              (auth(demo["tokens"]["revoked"]), "invalid_token")):
            r = client.get(path, params=query, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.json()["error"]["code"] == code and r.headers["www-authenticate"] == "Bearer"
    assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200


def test_roles_allow_and_forbid(client: httpx.Client, demo: dict[str, Any]) -> None:
    t = demo["tokens"]
    month = {"month": "2026-10"}
    assert client.get("/v1/chargeback.csv", params=month, headers=auth(t["finance"])).status_code == 200
    assert client.get("/v1/showback", headers=auth(t["finance"])).status_code == 200
    for path in ("/v1/fleet", "/v1/drilldown", "/v1/efficiency", "/v1/series/showback"):
        r = client.get(path, headers=auth(t["finance"]))
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden"), path
    r = client.get("/v1/chargeback.csv", params=month, headers=auth(t["tenant"]))
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    r = client.get("/v1/showback", params={"tenant": "vision"}, headers=auth(t["tenant"]))
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden_tenant")
    assert client.get("/v1/showback", params={"tenant": TENANT}, headers=auth(t["tenant"])).status_code == 200
    who = client.get("/v1/whoami", headers=auth(t["tenant"])).json()
    assert (who["role"], who["tenant"], who["auth"]) == ("tenant", TENANT, True)


def test_a_tenant_token_reads_only_its_tenant_on_every_route(client: httpx.Client, demo: dict[str, Any]) -> None:
    """Walk every GET route of the OpenAPI document with a tenant token, also asking for others' data."""
    path_db: Path = demo["path"]
    foreign_pods = other_tenants_pods(path_db, TENANT)
    with Store(path_db, read_only=True) as store:
        foreign_gpu = store.scalar("SELECT gpu_uuid FROM ledger GROUP BY gpu_uuid HAVING bool_and(tenant <> ?) "
                                   "ORDER BY 1 LIMIT 1", [TENANT])
        foreign_pod = min(foreign_pods)
    assert foreign_pods and foreign_gpu
    admin = client.get("/v1/showback", headers=auth(demo["tokens"]["admin"])).json()
    assert {r["tenant"] for r in admin["rows"]} > {TENANT}  # there is other tenants' data to leak
    token = demo["tokens"]["tenant"]
    seen_ok = 0
    for path, params in routes(client):
        names = {p["name"] for p in params}
        base = required_params(params, foreign_gpu)
        probes = [base]
        if "group_by" in names:
            probes += [{**base, "group_by": g} for g in ("tenant,pod", "pod", "namespace,workload")]
        if "pod" in names:
            probes.append({**base, "pod": foreign_pod})
        if "gpu" in names:
            probes.append({**base, "gpu": foreign_gpu})
        if "view" in names:
            probes += [{**base, "view": v} for v in ("gpus", "rules")]
        for query in probes:
            r = client.get(path, params={**query, "limit": "1000"} if "limit" in names else query,
                           headers=auth(token))
            if r.status_code == 403:
                assert r.json()["error"]["code"] == "forbidden", (path, r.text)
                continue
            assert r.status_code == 200, (path, query, r.text)
            if not r.headers["content-type"].startswith("application/json"):
                continue  # the page and its script: no data
            body = r.json()
            text = json.dumps(body)
            assert not [p for p in foreign_pods if f'"{p}"' in text], (path, query)
            assert set(strings_under(body, "tenant")) <= {TENANT}, (path, query)
            assert set(strings_under(body, "tenants")) <= {TENANT}, (path, query)
            if query.get("pod") == foreign_pod or query.get("gpu") == foreign_gpu:
                assert not strings_under(body, "gpu_hours"), (path, query)  # nothing of the other's is measured
            seen_ok += 1
        if "tenant" in names:
            r = client.get(path, params={**base, "tenant": "vision"}, headers=auth(token))
            assert r.status_code == 403, (path, r.text)
    assert seen_ok >= 15


def test_tenant_rows_equal_the_admin_view_of_that_tenant(client: httpx.Client, demo: dict[str, Any]) -> None:
    admin = client.get("/v1/showback", params={"tenant": TENANT}, headers=auth(demo["tokens"]["admin"])).json()
    mine = client.get("/v1/showback", headers=auth(demo["tokens"]["tenant"])).json()
    assert mine["rows"] == admin["rows"] and len(mine["rows"]) == 1 and mine["total_cost"] == admin["total_cost"]


def test_revoking_takes_effect_on_the_next_request(tmp_path: Path, demo: dict[str, Any]) -> None:
    path = tmp_path / "t.duckdb"
    with Store(path) as store:
        token_id, token = create_token(store, "admin")
    with serving(create_app(str(path))) as c:
        assert c.get("/v1/whoami", headers=auth(token)).status_code == 200
        with Store(path) as store:
            revoke_token(store, token_id)
        r = c.get("/v1/whoami", headers=auth(token))
        assert r.status_code == 401 and token_id in r.json()["error"]["message"]
        assert token.split("_", 2)[2] not in r.text


def test_tokens_are_stored_hashed_and_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "t.duckdb"
    with Store(path) as store:
        _, token = create_token(store, "tenant", "nlp")
        stored = store.query("SELECT * FROM api_tokens")
    secret = token.split("_", 2)[2]
    assert secret not in json.dumps(stored.rows(), default=str)
    caplog.set_level(logging.DEBUG)
    with serving(create_app(str(path))) as c:
        c.get("/v1/showback", headers=auth(token))
        c.get("/v1/showback", headers=auth(token[:-1] + "x"))
    assert secret not in caplog.text and secret[:-1] not in caplog.text


def test_token_cli_create_list_revoke(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.duckdb")
    Store(db).close()  # the file ingest writes (token commands no longer create one: a typo would)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gpuledger.cli", "token", *args, "--db", db],
                              capture_output=True, text=True, timeout=60, check=False)

    made = cli("create", "--role", "tenant", "--tenant", "vision", "--name", "vision-grafana")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("glt_") and "shown only now" in made.stderr
    token_id = token.split("_", 2)[1]
    listed = cli("list")
    assert token_id in listed.stdout and "vision-grafana" in listed.stdout and token.split("_", 2)[2] not in listed.stdout
    assert cli("revoke", token_id).returncode == 0
    assert "revoked" in cli("list").stdout
    bad = cli("create", "--role", "tenant")
    assert bad.returncode == 2 and "hint:" in bad.stderr


def test_fleet_shows_health_sharing_and_holders(client: httpx.Client, demo: dict[str, Any]) -> None:
    rows = client.get("/v1/fleet", params={"limit": 1000}, headers=auth(demo["tokens"]["admin"])).json()["rows"]
    assert len(rows) == 16 and {r["health"] for r in rows} == {"ok"}
    mig = next(r for r in rows if r["sharing"] == "mig")
    assert mig["mig_profiles"] == ["1g.10gb", "2g.20gb", "3g.40gb"] and mig["field_errors"] > 0
    sliced = next(r for r in rows if r["sharing"] == "time_sliced")
    assert len({h["tenant"] for h in sliced["holders"]}) >= 2
    mine = client.get("/v1/fleet", params={"limit": 1000}, headers=auth(demo["tokens"]["tenant"])).json()["rows"]
    assert 0 < len(mine) < len(rows)
    assert all(h["tenant"] == TENANT for r in mine for h in r["holders"])


def test_fleet_reports_a_lost_gpu(tmp_path: Path) -> None:
    path = build_demo_db(tmp_path / "lost.duckdb", hours=4.0, lost_gpu=True)
    with serving(create_app(str(path), auth=False)) as c:
        rows = c.get("/v1/fleet", params={"limit": 1000}).json()["rows"]
    lost = [r for r in rows if r["health"] == "lost"]
    assert [(r["node"], r["gpu_index"]) for r in lost] == [("gpu-node-1", 2)]  # the simulator's lost GPU, only it
    assert lost[0]["gpu"].startswith("GPU-") and lost[0]["model"]  # last known identity, not null


def test_cached_answers_are_per_token(client: httpx.Client, demo: dict[str, Any]) -> None:
    """The whole-response cache never hands one token's answer to another, or to no token."""
    admin = client.get("/v1/showback", headers=auth(demo["tokens"]["admin"]))
    again = client.get("/v1/showback", headers=auth(demo["tokens"]["admin"]))
    assert admin.status_code == 200 and again.content == admin.content
    mine = client.get("/v1/showback", headers=auth(demo["tokens"]["tenant"])).json()
    assert {r["tenant"] for r in mine["rows"]} == {TENANT}
    assert client.get("/v1/showback").status_code == 401
    assert client.get("/v1/showback", headers=auth(demo["tokens"]["revoked"])).status_code == 401


# --- names that hold a comma (issue 15): repeated parameters, quoting, a tenant token's own name ------------


@pytest.fixture(scope="module")
def comma_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    from tests.support.api_ledger import row, write_ledger

    path = tmp_path_factory.mktemp("comma") / "gpuledger.duckdb"
    with Store(path) as store:
        write_ledger(store, [row(name, K.BUSY, 3600, seq=0, gpu=i) for i, name in
                             enumerate(["Acme, Inc.", "Acme", "Inc.", "ml", 'say "hi", world'])])
        tokens = {"admin": create_token(store, "admin")[1], "acme": create_token(store, "tenant", "Acme, Inc.")[1]}
    with serving(create_app(str(path))) as client:
        yield client, tokens


def _tenants(client: httpx.Client, token: str, query: list[tuple[str, str]]) -> set[str] | int:
    r = client.get("/v1/showback", params=[("group_by", "tenant"), *query],
                   headers={"Authorization": f"Bearer {token}"})
    return {x["tenant"] for x in r.json()["rows"]} if r.status_code == 200 else r.status_code


def test_a_tenant_whose_name_holds_a_comma_can_be_asked_for(comma_api: tuple[httpx.Client, dict[str, str]]) -> None:
    client, tokens = comma_api
    admin, acme = tokens["admin"], tokens["acme"]
    # its own token, the name given once as it is: was split on "," and answered 403 forbidden_tenant
    assert _tenants(client, acme, [("tenant", "Acme, Inc.")]) == {"Acme, Inc."}
    assert _tenants(client, acme, []) == {"Acme, Inc."}
    assert _tenants(client, acme, [("tenant", "Acme, Inc."), ("tenant", "ml")]) == 403
    assert _tenants(client, acme, [("tenant", "Acme")]) == 403
    # repeated parameters: each occurrence whole
    assert _tenants(client, admin, [("tenant", "Acme, Inc."), ("tenant", "ml")]) == {"Acme, Inc.", "ml"}
    assert _tenants(client, admin, [("tenant", 'say "hi", world'), ("tenant", "")]) == {'say "hi", world'}
    # given once: the comma-separated form stays, double quotes protect a comma
    assert _tenants(client, admin, [("tenant", "Acme,ml")]) == {"Acme", "ml"}
    assert _tenants(client, admin, [("tenant", " Acme , ml ,")]) == {"Acme", "ml"}
    assert _tenants(client, admin, [("tenant", '"Acme, Inc.",ml')]) == {"Acme, Inc.", "ml"}
    assert _tenants(client, admin, [("tenant", '"say ""hi"", world"')]) == {'say "hi", world'}


def test_drilldown_links_keep_a_name_with_a_comma_whole(comma_api: tuple[httpx.Client, dict[str, str]]) -> None:
    client, tokens = comma_api
    auth = {"Authorization": f"Bearer {tokens['admin']}"}
    lines = client.get("/v1/showback", params={"group_by": "tenant"}, headers=auth).json()["rows"]
    for line in lines:
        rows = client.get(line["drilldown"], headers=auth).json()["rows"]
        assert rows and {r["tenant"] for r in rows} == {line["tenant"]}, line["drilldown"]
