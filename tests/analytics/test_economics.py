"""Fleet economics from the hourly rollups: hand-computed pools, the cloud rates book, the CLI and the API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpuledger.analytics import economics as econ
from gpuledger.analytics import kinds as K
from gpuledger.analytics.hourly import rebuild_hourly
from gpuledger.analytics.prices import default_price_book
from gpuledger.api.app import create_app
from gpuledger.api.tokens import create_token
from gpuledger.errors import ConfigError, GpuledgerError
from gpuledger.store import Store
from tests.support.api_ledger import A100, H100, HOUR_NS, MARCH, row, write_ledger
from tests.support.live_server import serving

RATES = econ.parse_cloud_rates("""currency = "USD"
as_of = 2026-03-01
source = "test quote"
[[rate]]
id = "h100-od"
model = "*H100*"
per_gpu_hour = "3.90"
offer = "an on-demand H100"
""", "test")

#: node-a (pool train): two H100 hours at 2.99 -- hour 1: ml busy 30 min, idle 20 min, 10 min nobody's;
#: hour 2: ml busy all hour. node-b (unassigned): one A100 hour (1.29) busy for cv; no cloud rate for A100.
LEDGER = [
    row("ml", K.BUSY, 1800, seq=1), row("ml", K.ALLOCATED_IDLE, 1200, seq=1), row("", K.UNALLOCATED, 600, seq=1),
    row("ml", K.BUSY, 3600, seq=2, start_ns=MARCH + HOUR_NS),
    row("cv", K.BUSY, 3600, seq=1, model=A100, node="node-b"),
]
POOLS = econ.NodePools((("node-a*", "train"),))


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("econ") / "gpuledger.duckdb"
    with Store(path) as store:
        write_ledger(store, LEDGER)
        rebuild_hourly(store)
        _, token = create_token(store, "finance")
    return path, token


def test_pools_hand_computed(db: tuple[Path, str]) -> None:
    with Store(db[0], read_only=True) as store:
        rows, pending = econ.read_month(store, "2025-03")
    train, other = econ.economics(rows, default_price_book(), RATES, POOLS)
    assert pending == 0
    assert (train.pool, train.model, other.pool, other.model) == ("train", H100, econ.UNASSIGNED, A100)
    assert (train.capacity_gpu_hours, train.used_gpu_hours, train.allocated_gpu_hours) == (
        Decimal("2.000000"), Decimal("1.500000"), Decimal("1.833333"))
    assert (train.utilization, train.allocation, train.efficiency) == (
        Decimal("0.750000"), Decimal("0.916667"), Decimal("0.818182"))  # 1.5/2, 1.833/2, 1.5/1.833
    assert (train.own_cost, train.cost_per_used_gpu_hour) == (Decimal("5.98"), Decimal("3.99"))  # 2 x 2.99; /1.5
    assert (train.cloud_rate, train.rented_used_cost, train.rented_allocated_cost) == (
        Decimal("3.90"), Decimal("5.85"), Decimal("7.15"))  # 1.5 x 3.90; 1.833333 x 3.90 = 7.1499987
    assert train.break_even_utilization == Decimal("0.766667")  # 5.98 / (2 x 3.90): owning wins above 76.7 %
    # No cloud rate for the A100: rented costs and break-even are unknown (null), never 0.
    assert (other.own_cost, other.utilization, other.cloud_rate, other.rented_used_cost,
            other.break_even_utilization) == (Decimal("1.29"), Decimal("1.000000"), None, None, None)
    assert econ.totals([train, other]) == {"own_cost": "7.27", "rented_used_cost": None,
                                           "rented_allocated_cost": None}


def test_an_idle_pool_has_no_cost_per_used_hour_and_no_efficiency() -> None:
    import polars as pl
    idle = pl.LazyFrame({"hour_start_ns": [MARCH], "cluster": ["default"], "node": ["n"], "model": [H100], "profile": [None],
                         "kind": [K.UNALLOCATED], "gpu_seconds": [3600.0]}, schema_overrides={"profile": pl.String})
    (e,) = econ.economics(idle, default_price_book(), RATES)
    assert (e.utilization, e.allocation, e.efficiency, e.cost_per_used_gpu_hour) == (
        Decimal("0.000000"), Decimal("0.000000"), None, None)


def test_two_clusters_same_named_pool_are_two_entries(tmp_path: Path) -> None:
    """node-a in east (busy one hour) and node-a in west (idle one hour): pool train x H100 once per cluster."""
    path = tmp_path / "gpuledger.duckdb"
    with Store(path) as store:
        write_ledger(store, [row("ml", K.BUSY, 3600, seq=1, cluster="east"),
                             row("", K.UNALLOCATED, 3600, seq=1, cluster="west")])
        rebuild_hourly(store)
        rows, _ = econ.read_month(store, "2025-03")
    east, west = econ.economics(rows, default_price_book(), RATES, POOLS)
    assert [(e.pool, e.model, e.cluster) for e in (east, west)] == [("train", H100, "east"), ("train", H100, "west")]
    assert (east.capacity_gpu_hours, east.used_gpu_hours, east.utilization) == (
        Decimal("1.000000"), Decimal("1.000000"), Decimal("1.000000"))
    assert (west.capacity_gpu_hours, west.used_gpu_hours, west.utilization) == (
        Decimal("1.000000"), Decimal("0.000000"), Decimal("0.000000"))
    assert east.own_cost == west.own_cost == Decimal("2.99")  # each cluster's own GPU-hour, never one pool of two


def test_the_shipped_cloud_rates_are_dated_and_sourced() -> None:
    rates = econ.default_cloud_rates()
    assert rates.as_of.isoformat() == "2026-03-01" and rates.source.startswith("costnimbus.com")
    assert rates.rate(H100) == (Decimal("3.90"), "h100-aws-p5") and rates.rate(A100) is None
    assert rates.rate("NVIDIA L4") == (Decimal("0.75"), "l4-gcp-g2")


@pytest.mark.parametrize(("text", "message"), [
    ('currency = "USD"\n[[rate]]\nmodel = "*"\nper_gpu_hour = "1"\n', "need currency, as_of"),
    ('currency = "USD"\nas_of = 2026-01-01\nsource = "x"\n[[rate]]\nmodel = "*"\nper_gpu_hour = 1.5\n',
     "quoted decimal"),
    ('currency = "USD"\nas_of = 2026-01-01\nsource = "x"\n[[rate]]\nmodel = "*"\nper_gpu_hour = "-1"\n',
     "must be positive"),
    ('currency = "USD"\nas_of = 2026-01-01\nsource = "x"\n', "no \\[\\[rate\\]\\]"),
])
def test_bad_cloud_rates_say_what_and_how(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        econ.parse_cloud_rates(text)
    assert err.value.hint


def test_node_pools_file(tmp_path: Path) -> None:
    path = tmp_path / "pools.toml"
    path.write_text('[[pool]]\nname = "train"\nnodes = ["gpu-a-*", "gpu-b-*"]\n[[pool]]\nname = "infer"\nnodes = "*"\n')
    pools = econ.load_node_pools(path)
    assert [pools.pool_of(n) for n in ("gpu-b-7", "x")] == ["train", "infer"]
    path.write_text('[[pool]]\nname = "train"\n')
    with pytest.raises(ConfigError, match="needs name"):
        econ.load_node_pools(path)


def test_rates_in_another_currency_are_refused(db: tuple[Path, str]) -> None:
    eur = econ.parse_cloud_rates('currency = "EUR"\nas_of = 2026-01-01\nsource = "x"\n[[rate]]\nmodel = "*"\n'
                                 'per_gpu_hour = "1"\n')
    with Store(db[0], read_only=True) as store, pytest.raises(GpuledgerError, match="in EUR, the price book in USD"):
        econ.economics(econ.read_month(store, "2025-03")[0], default_price_book(), eur)


def test_cli_report_economics(db: tuple[Path, str], tmp_path: Path, capsys: Any) -> None:
    from gpuledger.cli import main

    pools = tmp_path / "pools.toml"
    pools.write_text('[[pool]]\nname = "train"\nnodes = "node-a*"\n')
    assert main(["report", "economics", "--month", "2025-03", "--db", str(db[0]), "--node-pools", str(pools),
                 "--format", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [(p["pool"], p["break_even_utilization"]) for p in body["pools"]] == [
        ("train", "0.766667"), ("unassigned", None)]  # the shipped rates: H100 3.90
    assert body["cloud_rates"]["as_of"] == "2026-03-01"
    assert main(["report", "economics", "--month", "2025-03", "--db", str(db[0])]) == 0
    assert "break_even_utilization" in capsys.readouterr().out
    assert main(["report", "economics", "--month", "2025-07", "--db", str(db[0])]) == 2
    err = capsys.readouterr().err
    assert "error: no data for 2025-07" in err and "hint:" in err


@pytest.fixture(scope="module")
def api(db: tuple[Path, str]) -> Iterator[httpx.Client]:
    with serving(create_app(str(db[0]), cloud_rates=RATES, node_pools=POOLS)) as client:
        client.headers["Authorization"] = f"Bearer {db[1]}"
        yield client


def test_api_economics(api: httpx.Client, db: tuple[Path, str]) -> None:
    body = api.get("/v1/economics", params={"month": "2025-03"}).json()
    train = body["pools"][0]
    assert (train["pool"], train["own_cost"], train["rented_allocated_cost"]) == ("train", "5.98", "7.15")
    assert body["cloud_rates"]["source"] == "test quote" and body["currency"] == "USD"
    assert api.get("/v1/economics", params={"month": "2025-13"}).json()["error"]["code"] == "bad_month"
    with Store(db[0]) as store:
        tenant = create_token(store, "tenant", "ml")[1]
    r = api.get("/v1/economics", params={"month": "2025-03"}, headers={"Authorization": f"Bearer {tenant}"})
    assert r.status_code == 403  # fleet economics are the platform's and finance's, not a tenant's


def test_api_economics_for_a_period(api: httpx.Client) -> None:
    # Grafana's time range (epoch ms): the first March hour only -> the train pool's first hour
    body = api.get("/v1/economics", params={"start": MARCH // 10**6, "end": (MARCH + HOUR_NS) // 10**6}).json()
    assert (body["month"], body["period"]) == (None, {"start": "2025-03-01T00:00:00Z", "end": "2025-03-01T01:00:00Z"})
    train = body["pools"][0]
    assert (train["capacity_gpu_hours"], train["used_gpu_hours"], train["own_cost"]) == ("1.000000", "0.500000", "2.99")
    latest = api.get("/v1/economics").json()  # neither: the latest month with data
    assert latest["period"] == {"start": "2025-03-01T00:00:00Z", "end": "2025-04-01T00:00:00Z"}
