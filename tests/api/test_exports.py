"""Export routes over real HTTP: closed files byte for byte, previews with corrections, the report."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import polars as pl
import pyarrow.parquet as pq
import pytest
from gpuledger.analytics import closing
from gpuledger.analytics import kinds as K
from gpuledger.analytics.prices import default_price_book
from gpuledger.api.app import create_app
from gpuledger.api.tokens import create_token

from gpuledger.store import Store
from tests.support.api_ledger import HOUR_NS, SCHEMA, row
from tests.support.live_server import serving

OCT = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp()) * 10**9
NOV = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()) * 10**9


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path, bytes, dict[str, str]]]:
    path = tmp_path_factory.mktemp("exports") / "gpuledger.duckdb"
    with Store(path) as store:
        rows = [row("ml", K.BUSY, 3600, seq=0, start_ns=OCT), row("=evil", K.BUSY, 3600, seq=1, start_ns=NOV)]
        store.append("ledger", pl.DataFrame(rows, schema=SCHEMA))
        closed = closing.export(store, "2026-10", default_price_book(), final=True,
                                now=datetime(2026, 11, 2, tzinfo=UTC)).content
        late = row("late", K.BUSY, 3600, seq=2, gpu=1, start_ns=OCT + HOUR_NS)  # after the close
        store.append("ledger", pl.DataFrame([late], schema=SCHEMA))
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


def test_export_errors_have_the_one_shape(served: tuple[httpx.Client, Path, bytes, dict[str, str]]) -> None:
    client, _, _, tokens = served
    bad = client.get("/v1/exports/chargeback", params={"month": "2026-13"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_month"
    clash = client.get("/v1/exports/chargeback", params={"month": "2026-10", "charge_period": "day"})
    assert clash.status_code == 409 and "--charge-period month" in clash.json()["error"]["hint"]
    tenant = client.get("/v1/exports/chargeback", params={"month": "2026-10"},
                        headers={"Authorization": f"Bearer {tokens['tenant']}"})
    assert tenant.status_code == 403 and tenant.json()["error"]["code"] == "forbidden"
