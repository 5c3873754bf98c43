"""The API's ``cluster`` dimension and filter come from the ledger's column: two clusters' identical tenant,
namespace, pod and node names stay two lines in showback, values and the chargeback file."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import polars as pl
import pytest

from gpuledger.analytics import kinds as K
from gpuledger.api.app import create_app
from gpuledger.store import Store
from tests.support.api_ledger import row, write_ledger
from tests.support.live_server import serving

#: One H100 hour in each cluster on a node named node-a in both, pod ml/train-0 in both:
#: east: busy 30 min, allocated idle 30 min; west: busy the whole hour. H100: 2.99 an hour.
LEDGER = [
    {**row("ml", K.BUSY, 1800, seq=1, cluster="east"), "pod": "train-0"},
    {**row("ml", K.ALLOCATED_IDLE, 1800, seq=1, cluster="east"), "pod": "train-0"},
    {**row("ml", K.BUSY, 3600, seq=1, cluster="west"), "pod": "train-0"},
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    path = tmp_path_factory.mktemp("clusters") / "gpuledger.duckdb"
    with Store(path) as store:
        write_ledger(store, LEDGER)
    with serving(create_app(str(path), auth=False)) as c:
        yield c


def _rows(client: httpx.Client, *params: tuple[str, str]) -> list[dict]:
    r = client.get("/v1/showback", params=[("start", "2025-03-01"), ("end", "2025-04-01"), *params])
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def test_group_by_cluster_prices_each_cluster_s_gpu_hour(client: httpx.Client) -> None:
    rows = {r["cluster"]: r for r in _rows(client, ("group_by", "cluster"))}
    assert set(rows) == {"east", "west"}
    assert rows["east"]["gpu_hours"] == rows["west"]["gpu_hours"] == 1.0
    assert (rows["east"]["used_gpu_hours"], rows["west"]["used_gpu_hours"]) == (0.5, 1.0)
    assert Decimal(rows["east"]["cost"]) == Decimal(rows["west"]["cost"]) == Decimal("2.99")


def test_the_cluster_filter_keeps_one_cluster_s_pod(client: httpx.Client) -> None:
    (west,) = _rows(client, ("group_by", "pod"), ("cluster", "west"))
    assert (west["pod"], west["used_gpu_hours"], west["allocated_idle_gpu_hours"]) == ("train-0", 1.0, 0.0)
    both = _rows(client, ("group_by", "cluster,pod"), ("cluster", "east,west"))
    assert sorted((r["cluster"], r["pod"]) for r in both) == [("east", "train-0"), ("west", "train-0")]
    values = client.get("/v1/values", params={"dimension": "cluster", "start": "2025-03-01", "end": "2025-04-01"})
    assert [v["value"] for v in values.json()] == ["east", "west"]


def test_the_chargeback_file_has_a_row_per_cluster(client: httpx.Client) -> None:
    r = client.get("/v1/chargeback.csv", params={"month": "2025-03"})
    assert r.status_code == 200, r.text
    frame = pl.read_csv(r.content, infer_schema=False)
    got = sorted(frame.select("x_Cluster", "SubAccountId", "x_UsedGpuHours", "BilledCost").rows())
    assert got == [("east", "ml", "0.500000", "2.99"), ("west", "ml", "1.000000", "2.99")]
