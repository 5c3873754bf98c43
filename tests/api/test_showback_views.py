"""What the showback page reads from the API: idle cost and utilization per row, the data span of a period,
a view's CSV, the values of a dimension (pickers, Grafana variables), pod-label and cluster views.

Real HTTP against a DuckDB file holding the hand-made ledger of tests/support/api_ledger.py, with pods
and their labels added.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from decimal import Decimal

import httpx
import polars as pl
import pytest

from gpuledger.analytics import kinds as K
from gpuledger.api.app import create_app
from gpuledger.api.tokens import create_token
from gpuledger.store import Store
from tests.support.api_ledger import LEDGER, MARCH, row, write_ledger
from tests.support.live_server import serving

#: ml's March hour split over two pods; cv's pod has no team label (its group is null).
PODS = [
    {"pod_uid": "u1", "namespace": "ml", "name": "train-0", "labels": json.dumps({"team": "research"}),
     "last_seen_ns": MARCH},
    {"pod_uid": "u0", "namespace": "ml", "name": "train-0", "labels": json.dumps({"team": "old-team"}),
     "last_seen_ns": MARCH - 1},  # an older uid of the same pod name: the newest labels win
    {"pod_uid": "u2", "namespace": "ml", "name": "serve-0", "labels": json.dumps({"team": "product"}),
     "last_seen_ns": MARCH},
    {"pod_uid": "u3", "namespace": "cv", "name": "cv-0", "labels": json.dumps({"app": "cv"}), "last_seen_ns": MARCH},
]


def _with_pod(r: dict[str, object], pod: str) -> dict[str, object]:
    return {**r, "pod": pod}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    path = tmp_path_factory.mktemp("views") / "gpuledger.duckdb"
    ledger = [r for r in LEDGER if r["interval_start_ns"] != MARCH or r["tenant"] not in ("ml", "cv")]
    ledger += [_with_pod(row("ml", K.BUSY, 1800, seq=1, energy_j=3.6e6), "train-0"),
               _with_pod(row("ml", K.ALLOCATED_IDLE, 1200, seq=1), "serve-0"),
               _with_pod(row("cv", K.BUSY, 3600, seq=1, gpu=1, model="NVIDIA A100-SXM4-40GB"), "cv-0"),
               row(K.UNATTRIBUTED_TENANT, K.BUSY, 0, seq=1)]  # what the ledger books when nobody's busy is zero
    with Store(path) as store:
        write_ledger(store, ledger)
        store.append("pods", pl.DataFrame(PODS))
        _, admin = create_token(store, "admin")
        _, tenant = create_token(store, "tenant", "ml")
    with serving(create_app(str(path))) as client:
        client.headers["Authorization"] = f"Bearer {admin}"
        yield client, tenant


def _error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["code"] == code and body["message"] and body["hint"]


def test_rows_carry_idle_cost_and_utilization_as_efficiency_computes_them(api: tuple[httpx.Client, str]) -> None:
    client, _ = api
    show = {r["tenant"]: r for r in client.get("/v1/showback").json()["rows"]}
    eff = {r["tenant"]: r for r in client.get("/v1/efficiency").json()["rows"]}
    assert (show["ml"]["idle_cost"], show["ml"]["utilization"]) == ("1.00", 0.6)
    for tenant in ("ml", "cv"):
        assert show[tenant]["idle_cost"] == eff[tenant]["idle_cost"]
        assert show[tenant]["utilization"] == eff[tenant]["utilization"]
    # Nothing held idle: zero idle cost; nothing measured held (the platform's unallocated line): no utilization.
    assert (show["cv"]["idle_cost"], show["platform"]["idle_cost"], show["platform"]["utilization"]) == (
        "0.00", "0.00", None)


def test_a_group_holding_nothing_is_no_line(api: tuple[httpx.Client, str]) -> None:
    client, _ = api
    assert K.UNATTRIBUTED_TENANT not in {r["tenant"] for r in client.get("/v1/showback").json()["rows"]}
    assert K.UNATTRIBUTED_TENANT not in {v["value"] for v in client.get("/v1/values").json()}
    drill = client.get("/v1/drilldown", params={"tenant": K.UNATTRIBUTED_TENANT}).json()
    assert drill["total_rows"] == 1 and drill["rows"][0]["gpu_seconds"] == 0.0  # still in the ledger's detail


def test_data_says_how_much_of_the_period_holds_data(api: tuple[httpx.Client, str]) -> None:
    client, _ = api
    body = client.get("/v1/showback").json()  # the latest month: March, one hour of data
    assert body["data"] == {"first": "2025-03-01T00:00:00Z", "last": "2025-03-01T01:00:00Z",
                            "hours_with_data": 1, "period_hours": 744.0}
    both = client.get("/v1/showback", params={"start": "2025-02-01", "end": "2025-04-01"}).json()
    assert both["data"]["hours_with_data"] == 2 and both["data"]["first"] == "2025-02-01T00:00:00Z"
    none = client.get("/v1/showback", params={"start": "2025-01-01", "end": "2025-01-02"}).json()
    assert none["rows"] == [] and none["data"] == {"first": None, "last": None, "hours_with_data": 0,
                                                     "period_hours": 24.0}


def test_csv_is_the_whole_view_spreadsheet_safe_and_a_tenant_gets_its_own_lines(
        api: tuple[httpx.Client, str]) -> None:
    client, tenant = api
    body = client.get("/v1/showback", params={"limit": 1}).json()
    r = client.get("/v1/showback", params={"format": "csv", "limit": 1})  # every row, not the page
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert 'filename="gpuledger-showback-20250301-20250401.csv"' in r.headers["content-disposition"]
    lines = list(csv.DictReader(io.StringIO(r.text, newline="")))
    assert len(lines) == body["total_rows"] > 1
    assert sum(Decimal(x["cost"]) for x in lines) == Decimal(body["total_cost"])
    assert "'=cmd|' /C calc'!A0" in [x["tenant"] for x in lines]  # a formula-like name is neutralised
    ml = next(x for x in lines if x["tenant"] == "ml")
    assert (ml["period_start"], ml["used_gpu_hours"], ml["idle_cost"], ml["utilization"], ml["currency"]) == (
        "2025-03-01T00:00:00Z", "0.5", "1.00", "0.6", "USD")
    assert next(x for x in lines if x["tenant"] == "cv")["energy_kwh"] == ""  # not measured: empty, not 0
    own = client.get("/v1/showback", params={"format": "csv", "group_by": "namespace"},
                     headers={"Authorization": f"Bearer {tenant}"})
    assert [x["namespace"] for x in csv.DictReader(io.StringIO(own.text, newline=""))] == ["ml"]
    _error(client.get("/v1/showback", params={"format": "xlsx"}), 422, "invalid_request")


def test_values_list_a_dimension_for_pickers_and_variables(api: tuple[httpx.Client, str]) -> None:
    client, tenant = api

    def values(dimension: str, token: str | None = None, **params: str) -> list[str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = client.get("/v1/values", params={"dimension": dimension, **params}, headers=headers)
        assert r.status_code == 200, r.text
        return [v["value"] for v in r.json()]

    assert values("tenant") == ["=cmd|' /C calc'!A0", "cv", "ml", "platform"]
    assert values("namespace", tenant="ml") == ["ml"]  # $namespace follows $tenant
    assert values("pod") == ["cv-0", "serve-0", "train-0"]
    assert values("cluster") == ["default"]
    assert values("model", start="2025-02-01", end="2025-03-01") == ["NVIDIA H100 80GB HBM3"]
    assert values("tenant", tenant) == ["ml"] and values("pod", tenant) == ["serve-0", "train-0"]
    _error(client.get("/v1/values", params={"dimension": "colour"}), 400, "bad_group_by")
    _error(client.get("/v1/values", params={"start": "yesterday", "end": "today"}), 400, "bad_period")


def test_group_by_a_pod_label_newest_labels_win(api: tuple[httpx.Client, str]) -> None:
    client, _ = api
    body = client.get("/v1/showback", params={"group_by": "label:team"}).json()
    rows = {r["label:team"]: r for r in body["rows"]}
    assert set(rows) == {"research", "product", None}  # cv's pod and unpodded rows have no team label
    assert (rows["research"]["used_gpu_hours"], rows["product"]["allocated_idle_gpu_hours"]) == (0.5, 0.333333)
    assert all(r["drilldown"] is None for r in body["rows"])  # the drill-down cannot filter by a label
    assert sum(Decimal(r["cost"]) for r in body["rows"]) == Decimal(body["total_cost"])
    by_app = client.get("/v1/showback", params={"group_by": "label:app,tenant"}).json()["rows"]
    assert {(r["label:app"], r["tenant"]) for r in by_app if r["tenant"] in ("cv", "ml")} == {("cv", "cv"), (None, "ml")}
    _error(client.get("/v1/showback", params={"group_by": "label:bad key!"}), 400, "bad_group_by")
    _error(client.get("/v1/efficiency", params={"group_by": "label:team"}), 400, "bad_group_by")


def test_cluster_is_a_dimension_and_a_filter(api: tuple[httpx.Client, str]) -> None:
    client, _ = api
    everything = client.get("/v1/showback").json()
    default = client.get("/v1/showback", params={"cluster": "default"}).json()
    assert default["total_cost"] == everything["total_cost"] and default["rows"]
    assert client.get("/v1/showback", params={"cluster": "eu-2"}).json()["rows"] == []
    by = client.get("/v1/showback", params={"group_by": "cluster"}).json()["rows"]
    assert [(r["cluster"], r["cost"]) for r in by] == [("default", everything["total_cost"])]
    assert "cluster=default" in by[0]["drilldown"]
    drill = client.get(by[0]["drilldown"]).json()
    assert drill["total_rows"] == 6  # March: ml busy and idle, unallocated, cv, the L4, the zero unattributed row
