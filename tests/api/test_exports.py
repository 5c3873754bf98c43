"""Export routes over real HTTP: closed files byte for byte, previews with corrections, the report."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI

from gpuledger.analytics import closing
from gpuledger.analytics import kinds as K
from gpuledger.analytics.focus import ExportContext
from gpuledger.analytics.prices import default_price_book
from gpuledger.api.app import create_app
from gpuledger.api.tokens import create_token
from gpuledger.store import Store
from tests.support.api_ledger import HOUR_NS, row
from tests.support.api_ledger import book_ledger as book
from tests.support.live_server import serving

OCT = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp()) * 10**9
NOV = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()) * 10**9


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path, bytes, dict[str, str]]]:
    path = tmp_path_factory.mktemp("exports") / "gpuledger.duckdb"
    with Store(path) as store:
        rows = [row("ml", K.BUSY, 3600, seq=0, start_ns=OCT), row("=evil", K.BUSY, 3600, seq=1, start_ns=NOV)]
        book(store, rows)
        closed = closing.export(store, "2026-10", default_price_book(), final=True,
                                now=datetime(2026, 11, 2, tzinfo=UTC)).content
        late = row("late", K.BUSY, 3600, seq=2, gpu=1, start_ns=OCT + HOUR_NS)  # after the close
        book(store, [late])
        tokens = {role: create_token(store, role, "ml" if role == "tenant" else None)[1]
                  for role in ("finance", "tenant")}
    with serving(create_app(str(path))) as client:
        client.headers["Authorization"] = f"Bearer {tokens['finance']}"
        yield client, path, closed, tokens


def test_a_closed_month_is_served_byte_for_byte(served: tuple[httpx.Client, Path, bytes, dict[str, str]]) -> None:
    client, _, closed, _ = served
    r = client.get("/v1/exports/chargeback", params={"month": "2026-10"})
    assert r.status_code == 200 and r.content == closed
    assert r.headers["x-month-closed"] == "true"
    assert r.headers["content-disposition"] == 'attachment; filename="gpuledger-chargeback-2026-10.csv"'
    p = client.get("/v1/exports/chargeback", params={"month": "2026-10", "format": "parquet"})
    table = pq.read_table(io.BytesIO(p.content))
    assert str(table.schema.field("BilledCost").type) == "decimal128(38, 2)"
    assert table.column("BilledCost").to_pylist() == [Decimal("2.99")]


def test_an_open_month_previews_corrections_and_reconciles(
        served: tuple[httpx.Client, Path, bytes, dict[str, str]]) -> None:
    client = served[0]
    r = client.get("/v1/exports/chargeback", params={"month": "2026-11"})
    assert r.status_code == 200 and r.headers["x-month-closed"] == "false"
    lines = r.text.splitlines()
    assert any("'=evil" in line for line in lines) and not any(",=evil" in line for line in lines)
    assert sum(1 for line in lines if ",Correction," in line) == 1
    report = client.get("/v1/exports/reconciliation", params={"month": "2026-11"}).json()
    assert report["ok"] and report["regular_total"] == "2.99"
    assert report["corrections"] == {"2026-10": "2.99"}
    assert report["billed_total"] == str(Decimal(report["regular_total"]) + Decimal("2.99"))
    closed = client.get("/v1/exports/reconciliation", params={"month": "2026-10"}).json()
    assert closed["closed"] and closed["drift_since_close"] == "2.99"


def test_an_open_month_in_either_focus_version(served: tuple[httpx.Client, Path, bytes, dict[str, str]]) -> None:
    client = served[0]
    v14 = client.get("/v1/exports/chargeback", params={"month": "2026-11"})
    v12 = client.get("/v1/exports/chargeback", params={"month": "2026-11", "focus_version": "1.2"})
    h14, h12 = (next(csv.reader(io.StringIO(r.text))) for r in (v14, v12))
    assert "ServiceProviderName" in h14 and "AllocatedMethodDetails" in h14 and "ProviderName" not in h14
    assert "ProviderName" in h12 and "AllocatedMethodDetails" not in h12 and "InvoiceId" in h12
    assert v14.headers["x-billed-total"] == v12.headers["x-billed-total"]
    bad = client.get("/v1/exports/chargeback", params={"month": "2026-11", "focus_version": "1.3"})
    assert bad.status_code == 422


def test_the_idle_policy_is_a_parameter_and_a_header(served: tuple[httpx.Client, Path, bytes, dict[str, str]]) -> None:
    client = served[0]
    default = client.get("/v1/exports/chargeback", params={"month": "2026-11"})
    platform = client.get("/v1/exports/chargeback", params={"month": "2026-11", "idle_policy": "platform"})
    assert (default.headers["x-idle-policy"], platform.headers["x-idle-policy"]) == ("holder", "platform")
    assert {r["x_IdlePolicy"] for r in csv.DictReader(io.StringIO(platform.text))} == {"platform"}
    closed = client.get("/v1/exports/chargeback", params={"month": "2026-10", "idle_policy": "platform"})
    assert closed.headers["x-idle-policy"] == "holder"  # a closed file says the policy it was closed with
    assert client.get("/v1/exports/chargeback", params={"month": "2026-11", "idle_policy": "x"}).status_code == 422


def test_export_errors_have_the_one_shape(served: tuple[httpx.Client, Path, bytes, dict[str, str]]) -> None:
    client, _, _, tokens = served
    bad = client.get("/v1/exports/chargeback", params={"month": "2026-13"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_month"
    clash = client.get("/v1/exports/chargeback", params={"month": "2026-10", "charge_period": "day"})
    assert clash.status_code == 409 and "--charge-period month" in clash.json()["error"]["hint"]
    tenant = client.get("/v1/exports/chargeback", params={"month": "2026-10"},
                        headers={"Authorization": f"Bearer {tokens['tenant']}"})
    assert tenant.status_code == 403 and tenant.json()["error"]["code"] == "forbidden"


# --- /v1/chargeback.csv and /v1/exports/chargeback are one route ----------------------


@pytest.fixture(scope="module")
def day_closed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, FastAPI, bytes]]:
    """October closed with charge period ``day``; November open."""
    path = tmp_path_factory.mktemp("day-closed") / "gpuledger.duckdb"
    with Store(path) as store:
        rows = [row("ml", K.BUSY, 3600, seq=0, start_ns=OCT), row("nlp", K.BUSY, 1800, seq=1, start_ns=NOV)]
        book(store, rows)
        closed = closing.export(store, "2026-10", default_price_book(), final=True,
                                context=ExportContext(charge_period="day"), now=datetime(2026, 11, 2, tzinfo=UTC)).content
        token = create_token(store, "finance")[1]
    app = create_app(str(path))
    with serving(app) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client, app, closed


def _file_headers(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.startswith("x-") or k in ("content-disposition", "content-type")}


def test_both_chargeback_routes_serve_a_closed_month_as_it_was_closed(
        day_closed: tuple[httpx.Client, FastAPI, bytes]) -> None:
    client, _, closed = day_closed
    page = client.get("/v1/chargeback.csv", params={"month": "2026-10"})  # was 500: it asked for a month-period file
    export = client.get("/v1/exports/chargeback", params={"month": "2026-10"})
    assert page.status_code == export.status_code == 200
    assert page.content == export.content == closed
    assert _file_headers(page) == _file_headers(export)
    billed = closing.money_sum(r["BilledCost"] for r in closing.parse_csv(closed)[1])
    assert page.headers["x-billed-total"] == f"{billed} USD" and page.headers["x-month-closed"] == "true"
    parquet = client.get("/v1/exports/chargeback", params={"month": "2026-10", "format": "parquet"})
    assert parquet.headers["x-billed-total"] == page.headers["x-billed-total"]
    # Asking for another charge period than the close's is refused, also once the file is cached.
    clash = client.get("/v1/exports/chargeback", params={"month": "2026-10", "charge_period": "month"})
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "closed_month"


def test_both_chargeback_routes_parse_months_alike(day_closed: tuple[httpx.Client, FastAPI, bytes]) -> None:
    client = day_closed[0]
    for month in ("previous", "2026-13", "2026-1"):
        page = client.get("/v1/chargeback.csv", params={"month": month})
        export = client.get("/v1/exports/chargeback", params={"month": month})
        assert (page.status_code, page.content) == (export.status_code, export.content), month
    assert client.get("/v1/chargeback.csv", params={"month": "previous"}).status_code == 200
    assert client.get("/v1/chargeback.csv", params={"month": "2026-13"}).json()["error"]["code"] == "bad_month"


def test_both_chargeback_routes_share_one_cached_file(day_closed: tuple[httpx.Client, FastAPI, bytes]) -> None:
    client, app, _ = day_closed
    page = client.get("/v1/chargeback.csv", params={"month": "2026-11"})
    export = client.get("/v1/exports/chargeback", params={"month": "2026-11", "format": "csv"})
    files = [key for _, key in app.state.db._cache if "2026-11" in key]  # (version, key) -> value
    assert len(files) == 1, files  # one computation answered both routes
    assert page.status_code == 200 and page.content == export.content
    assert _file_headers(page) == _file_headers(export)


@pytest.mark.parametrize("route", ["/v1/chargeback.csv", "/v1/exports/chargeback", "/v1/exports/reconciliation"])
@pytest.mark.parametrize("month", ["２０２６-１０", "2026-10\u00e9", "9999-12"])
def test_a_month_is_validated_before_it_reaches_a_header(
        served: tuple[httpx.Client, Path, bytes, dict[str, str]], route: str, month: str) -> None:
    r = served[0].get(route, params={"month": month})  # full-width digits were a 500 (latin-1 header)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_month", r.text
    assert "year 10000" not in r.text


def test_both_csv_routes_neutralise_formula_names(served: tuple[httpx.Client, Path, bytes, dict[str, str]]) -> None:
    client = served[0]  # November bills a tenant named "=evil"; the page's download is /v1/chargeback.csv
    for r in (client.get("/v1/chargeback.csv", params={"month": "2026-11"}),
              client.get("/v1/exports/chargeback", params={"month": "2026-11"})):
        rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8"), newline="")))
        assert "'=evil" in {x["SubAccountId"] for x in rows}
        assert not [v for x in rows for k, v in x.items() if v and v.startswith(("=", "+", "@", "\t", "\r"))
                    or (v.startswith("-") and not _is_number(v))]


def _is_number(text: str) -> bool:
    try:
        Decimal(text)
    except ArithmeticError:
        return False
    return True
