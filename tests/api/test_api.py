"""The HTTP API under real HTTP: uvicorn on a loopback port, an httpx client, a DuckDB file."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from gpuledger.analytics import kinds as K
from gpuledger.api.app import create_app
from gpuledger.api.tokens import create_token
from gpuledger.store import Store
from tests.support.api_ledger import A100, H100, HOUR_NS, L4, LEDGER, MARCH, row, write_ledger
from tests.support.live_server import serving


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("api") / "gpuledger.duckdb"
    with Store(path) as store:
        write_ledger(store, LEDGER)
        _, token = create_token(store, "admin")
    return path, token


@pytest.fixture(scope="module")
def api(db: tuple[Path, str]) -> Iterator[httpx.Client]:
    with serving(create_app(str(db[0]))) as client:
        client.headers["Authorization"] = f"Bearer {db[1]}"
        yield client


def test_healthz(api: httpx.Client) -> None:
    r = api.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_showback_defaults_to_the_latest_month_with_data(api: httpx.Client) -> None:
    body = api.get("/v1/showback").json()
    assert body["period"] == {"start": "2025-03-01T00:00:00Z", "end": "2025-04-01T00:00:00Z"}
    assert (body["group_by"], body["currency"], body["total_cost"]) == (["tenant"], "USD", "4.97")
    rows = {r["tenant"]: r for r in body["rows"]}
    assert rows["ml"] == {
        "tenant": "ml", "gpu_hours": 0.833333, "used_gpu_hours": 0.5, "allocated_idle_gpu_hours": 0.333333,
        "unmeasured_gpu_hours": 0.0, "unallocated_gpu_hours": 0.0, "memory_gb_hours": None, "energy_kwh": 1.0,
        "cost": "2.49", "currency": "USD", "coverage": 1.0, "idle_cost": "1.00", "utilization": 0.6,
        "drilldown": "/v1/drilldown?tenant=ml&start=2025-03-01T00%3A00%3A00Z&end=2025-04-01T00%3A00%3A00Z",
    }
    assert (rows["cv"]["cost"], rows["cv"]["coverage"], rows["cv"]["energy_kwh"]) == ("1.29", 0.25, None)
    assert (rows["platform"]["cost"], rows["platform"]["unallocated_gpu_hours"], rows["platform"]["coverage"]) == (
        "0.50", 0.166667, None)
    assert rows["=cmd|' /C calc'!A0"]["cost"] == "0.69"


def test_showback_under_each_idle_policy(api: httpx.Client) -> None:
    holder = api.get("/v1/showback").json()
    assert holder["idle_policy"] == "holder"
    platform = api.get("/v1/showback", params={"idle_policy": "platform"}).json()
    rows = {r["tenant"]: r for r in platform["rows"]}
    assert (platform["idle_policy"], platform["total_cost"]) == ("platform", holder["total_cost"])
    assert rows["ml"]["allocated_idle_gpu_hours"] == 0.0 and rows["ml"]["used_gpu_hours"] == 0.5
    assert rows["platform"]["allocated_idle_gpu_hours"] == 0.333333  # ml's idle H100 time moved
    shared = api.get("/v1/showback", params={"idle_policy": "share_unallocated"}).json()
    rows = {r["tenant"]: r for r in shared["rows"]}
    assert shared["total_cost"] == holder["total_cost"] and "platform" not in rows  # ml alone used that H100
    assert rows["ml"]["unallocated_gpu_hours"] == 0.166667 and rows["ml"]["cost"] == "2.99"
    assert api.get("/v1/showback", params={"idle_policy": "nobody"}).status_code == 422


def test_showback_for_an_explicit_period_and_groups(api: httpx.Client) -> None:
    feb = api.get("/v1/showback", params={"start": "2025-02-01", "end": "2025-03-01T01:00:00+01:00"}).json()
    assert feb["period"] == {"start": "2025-02-01T00:00:00Z", "end": "2025-03-01T00:00:00Z"}
    assert [(r["tenant"], r["cost"], r["used_gpu_hours"]) for r in feb["rows"]] == [("ml", "2.99", 1.0)]
    by = api.get("/v1/showback", params={"group_by": "node,model"}).json()
    assert [(r["node"], r["model"], r["cost"]) for r in by["rows"]] == [
        ("node-a", A100, "1.29"), ("node-a", H100, "2.99"), ("node-b", L4, "0.69")]
    by_sharing = api.get("/v1/showback", params={"group_by": "sharing"}).json()
    assert [(r["sharing"], r["cost"]) for r in by_sharing["rows"]] == [("exclusive", "4.97")]
    empty = api.get("/v1/showback", params={"start": "2024-01-01", "end": "2024-02-01"}).json()
    assert (empty["rows"], empty["total_cost"]) == ([], "0.00")


def test_chargeback_csv_totals_capacity_times_price_and_is_safe(api: httpx.Client) -> None:
    r = api.get("/v1/chargeback.csv", params={"month": "2025-03"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == 'attachment; filename="gpuledger-chargeback-2025-03.csv"'
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8"), newline="")))
    # capacity x price: 1 h x (2.99 + 1.29 + 0.69)
    assert sum(Decimal(x["BilledCost"]) for x in rows) == Decimal("4.97")
    assert r.headers["x-billed-total"] == "4.97 USD"
    assert {x["SubAccountId"] for x in rows} == {"cv", "ml", "platform", "'=cmd|' /C calc'!A0"}
    assert all(not x["SubAccountId"].startswith(("=", "+", "-", "@")) for x in rows)


ERRORS = [
    ("GET", "/nope", {}, 404, "not_found"),
    ("POST", "/healthz", {}, 405, "method_not_allowed"),
    ("GET", "/v1/chargeback.csv", {}, 422, "invalid_request"),
    ("GET", "/v1/chargeback.csv", {"month": "2025-13"}, 400, "bad_month"),
    ("GET", "/v1/showback", {"group_by": "tenant,kind"}, 400, "bad_group_by"),
    ("GET", "/v1/showback", {"granularity": "week"}, 400, "bad_granularity"),
    ("GET", "/v1/showback", {"limit": "0"}, 400, "bad_limit"),
    ("GET", "/v1/showback", {"cursor": "!!"}, 400, "bad_cursor"),
    ("GET", "/v1/showback", {"start": "2020-01-01", "end": "2025-01-01"}, 400, "range_too_large"),
    ("GET", "/v1/showback", {"start": "2025-01-01", "end": "2025-04-01", "granularity": "hour"}, 400,
     "too_many_buckets"),
    ("GET", "/v1/drilldown", {"view": "everything"}, 400, "bad_view"),
    ("GET", "/v1/efficiency/top-wasters", {"order_by": "name"}, 400, "bad_order_by"),
    ("GET", "/v1/efficiency/idle-gpus", {"min_hours": "-1"}, 400, "bad_min_hours"),
    ("GET", "/v1/series/gpu", {}, 422, "invalid_request"),
    ("GET", "/v1/showback", {"start": "2025-03-01"}, 400, "bad_period"),
    ("GET", "/v1/showback", {"start": "yesterday", "end": "2025-03-01"}, 400, "bad_period"),
    ("GET", "/v1/showback", {"start": "2025-03-02", "end": "2025-03-01"}, 400, "bad_period"),
]


def assert_error_shape(r: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["error"] and set(body["error"]) == {"code", "message", "hint"}
    assert all(isinstance(v, str) for v in body["error"].values())
    assert body["error"]["code"] == code and body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(("method", "path", "params", "status", "code"), ERRORS)
def test_every_error_has_one_shape(api: httpx.Client, method: str, path: str, params: dict[str, str],
                                   status: int, code: str) -> None:
    error = assert_error_shape(api.request(method, path, params=params), status, code)
    if status != 405:
        assert error["hint"]


def test_missing_database_is_503_with_a_hint(tmp_path: Path) -> None:
    with serving(create_app(str(tmp_path / "absent.duckdb"), auth=False)) as client:
        error = assert_error_shape(client.get("/v1/showback"), 503, "no_database")
    assert "gpuledger ingest" in error["hint"]


def test_database_without_a_ledger_is_503(tmp_path: Path) -> None:
    path = tmp_path / "fresh.duckdb"
    with Store(path) as store:
        store.execute("DROP TABLE ledger")
    with serving(create_app(str(path), auth=False)) as client:
        assert_error_shape(client.get("/v1/chargeback.csv", params={"month": "2025-03"}), 503, "no_ledger")


def test_a_writer_holding_the_file_gives_503_busy(tmp_path: Path) -> None:
    path = tmp_path / "held.duckdb"
    with Store(path) as store:
        write_ledger(store, LEDGER)
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom gpuledger.store import Store\ns = Store(sys.argv[1])\n"
         "print('ready', flush=True)\nsys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
        with serving(create_app(str(path), auth=False)) as client:
            r = client.get("/v1/showback")
            error = assert_error_shape(r, 503, "database_busy")
            assert r.headers["retry-after"] == "5" and "writer" in error["hint"]
            assert writer.stdin is not None
            writer.stdin.close()
            writer.wait(10)
            assert client.get("/v1/showback").json()["total_cost"] == "4.97"  # lock released: served again
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(10)


def test_an_in_process_store_is_served_directly() -> None:
    store = Store(":memory:")
    write_ledger(store, LEDGER)
    with serving(create_app(store=store, auth=False)) as client:
        body = client.get("/v1/showback", params={"group_by": "model"}).json()
        assert [(r["model"], r["cost"]) for r in body["rows"]] == [(A100, "1.29"), (H100, "2.99"), (L4, "0.69")]
        write_ledger(store, [row("ml", K.BUSY, 3600, seq=2, start_ns=MARCH + HOUR_NS)])  # the demo keeps writing
        assert client.get("/v1/showback").json()["total_cost"] == "7.96"
    store.close()


def test_create_app_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        create_app()


@pytest.mark.parametrize("path", ["/healthz", "/", "/static/app.js", "/openapi.json", "/v1/whoami", "/v1/showback",
                                  "/v1/chargeback.csv?month=2025-03"])
def test_head_is_get_without_a_body(api: httpx.Client, path: str) -> None:
    get, head = api.get(path), api.head(path)  # HEAD was 405 on every route, /healthz included
    assert get.status_code == head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers.get("content-length") == get.headers.get("content-length")


def test_head_keeps_the_get_errors(api: httpx.Client) -> None:
    anonymous = httpx.head(str(api.base_url.join("/v1/showback")))
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer" and not anonymous.content
    assert api.head("/v1/showback", params={"limit": "0"}).status_code == 400
    assert api.head("/nope").status_code == 404
    assert_error_shape(api.post("/healthz"), 405, "method_not_allowed")  # other methods stay 405
