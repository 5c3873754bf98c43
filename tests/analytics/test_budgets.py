"""Per-tenant budgets: month-to-date and forecast (hand-computed), the API and its /metrics series. The chart's
PrometheusRule on those series is tested with promtool in tests/deploy/test_alerts.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpuledger.analytics import budgets as bud
from gpuledger.analytics import kinds as K
from gpuledger.analytics.hourly import rebuild_hourly
from gpuledger.analytics.prices import default_price_book
from gpuledger.api.app import create_app
from gpuledger.api.metrics import ApiMetrics
from gpuledger.api.tokens import create_token
from gpuledger.errors import ConfigError
from gpuledger.store import Store
from gpuledger.timeutil import month_bounds, to_ns
from tests.support.api_ledger import A100, LEDGER, row, write_ledger
from tests.support.live_server import serving

BUDGETS = bud.parse_budgets("""currency = "USD"
[[budget]]
tenant = "ml"
monthly = "1000.00"
[[budget]]
tenant = "cv"
monthly = "1.00"
[[budget]]
tenant = "research"
monthly = "50"
""")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """api_ledger's March 2025 (one hour: ml 2.49, cv 1.29, platform 0.50, a formula-named tenant 0.69), and the
    first hour of the current UTC month: ml 0.5 h busy on an A100 (1.29/h)."""
    path = tmp_path_factory.mktemp("budgets") / "gpuledger.duckdb"
    now_month = to_ns(month_bounds(f"{datetime.now(UTC):%Y-%m}")[0])
    with Store(path) as store:
        write_ledger(store, [*LEDGER, row("ml", K.BUSY, 1800, seq=9, model=A100, start_ns=now_month, node="node-c"),
                             row("", K.UNALLOCATED, 1800, seq=9, model=A100, start_ns=now_month, node="node-c")])
        rebuild_hourly(store)
    return path


def test_month_to_date_and_forecast_hand_computed(db: Path) -> None:
    with Store(db, read_only=True) as store:
        costs, until = bud.month_to_date(store, "2025-03", default_price_book())
    assert costs == {"ml": Decimal("2.49"), "cv": Decimal("1.29"), "platform": Decimal("0.50"),
                     "=cmd|' /C calc'!A0": Decimal("0.69")}
    lines, as_of = bud.budget_report("2025-03", costs, until, BUDGETS, Decimal("0.01"))
    assert as_of == "2025-03-01T01:00:00Z"  # one hour of data: the forecast is 744 x that hour
    got = {t.tenant: (t.budget, t.month_to_date, t.forecast, t.over_under, t.status) for t in lines}
    assert got == {
        "ml": (Decimal("1000.00"), Decimal("2.49"), Decimal("1852.56"), Decimal("852.56"), "forecast_over"),
        "cv": (Decimal("1.00"), Decimal("1.29"), Decimal("959.76"), Decimal("958.76"), "over_budget"),
        "research": (Decimal("50"), Decimal("0.00"), Decimal("0.00"), Decimal("-50.00"), "ok"),
        "platform": (None, Decimal("0.50"), Decimal("372.00"), None, "no_budget"),
        "=cmd|' /C calc'!A0": (None, Decimal("0.69"), Decimal("513.36"), None, "no_budget"),
    }
    # A month whose data reach its end forecasts what it cost; a month without data has no as_of.
    ended = bud.budget_report("2025-03", costs, to_ns(datetime(2025, 4, 2, tzinfo=UTC)), BUDGETS, Decimal("0.01"))[0]
    assert {t.tenant: t.forecast for t in ended}["cv"] == Decimal("1.29")
    assert bud.budget_report("2025-05", {}, None, BUDGETS, Decimal("0.01"))[1] is None


@pytest.mark.parametrize(("text", "message"), [
    ('[[budget]]\ntenant = "ml"\nmonthly = "1"\n', "expected currency"),
    ('currency = "USD"\n[[budget]]\ntenant = "ml"\nmonthly = 1000.0\n', "quoted decimal"),
    ('currency = "USD"\n[[budget]]\ntenant = "ml"\nmonthly = "-1"\n', "zero or more"),
    ('currency = "USD"\n[[budget]]\ntenant = "ml"\nmonthly = "1"\n[[budget]]\ntenant = "ml"\nmonthly = "2"\n',
     "a second budget"),
])
def test_bad_budgets_say_what_and_how(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        bud.parse_budgets(text)
    assert err.value.hint


@pytest.fixture(scope="module")
def api(db: Path) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    with Store(db) as store:
        tokens = {role: create_token(store, role, "ml" if role == "tenant" else None)[1]
                  for role in ("finance", "tenant")}
    with serving(create_app(str(db), budgets=BUDGETS)) as client:
        yield client, tokens


def test_api_budgets_and_tenant_isolation(api: tuple[httpx.Client, dict[str, str]]) -> None:
    client, tokens = api
    finance = {"Authorization": f"Bearer {tokens['finance']}"}
    body = client.get("/v1/budgets", params={"month": "2025-03"}, headers=finance).json()
    assert (body["as_of"], body["idle_policy"]) == ("2025-03-01T01:00:00Z", "holder")
    assert [(t["tenant"], t["forecast"], t["status"]) for t in body["tenants"]][:2] == [
        ("=cmd|' /C calc'!A0", "513.36", "no_budget"), ("cv", "959.76", "over_budget")]
    mine = client.get("/v1/budgets", params={"month": "2025-03"},
                      headers={"Authorization": f"Bearer {tokens['tenant']}"}).json()
    assert [t["tenant"] for t in mine["tenants"]] == ["ml"]
    assert client.get("/v1/budgets", params={"month": "2025-3"}, headers=finance).status_code == 400


def test_the_apis_metrics_render_the_current_month(db: Path) -> None:
    registry = CollectorRegistry(auto_describe=False)
    create_app(str(db), budgets=BUDGETS, metrics=ApiMetrics(registry))  # `serve --metrics-port` serves registry
    text = generate_latest(registry).decode()
    assert "# TYPE gpuledger_tenant_cost_forecast gauge" in text
    series: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("gpuledger_tenant_"):
                series.setdefault(s.name, {})[s.labels["tenant"]] = s.value
    start, end = month_bounds(f"{datetime.now(UTC):%Y-%m}")
    hours = Decimal(int((end - start).total_seconds()) // 3600)
    # ml: half an A100 hour (0.645 -> 0.65 after the pool's split: 1.29 = 0.65 + 0.64) in the month's first hour.
    assert series["gpuledger_tenant_cost_month_to_date"]["ml"] == 0.65
    assert series["gpuledger_tenant_cost_forecast"]["ml"] == float(Decimal("0.65") * hours)
    assert series["gpuledger_tenant_budget"] == {"ml": 1000.0, "cv": 1.0, "research": 50.0}
    assert "platform" not in series["gpuledger_tenant_budget"]  # no budget: no series, not 0
