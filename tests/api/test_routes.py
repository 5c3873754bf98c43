"""Showback buckets and pages, drill-down, efficiency, idle runs and series on a hand-written ledger.

The ledger (tests/support/api_ledger.py ``LEDGER`` plus an idle notebook) has known
answers, so every figure below is derived by hand in the comments.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from gpuledger.analytics import kinds as K
from gpuledger.api.app import create_app
from gpuledger.api.tokens import create_token
from gpuledger.store import Store
from tests.support.api_ledger import HOUR_NS, L4, LEDGER, MARCH, row, write_ledger
from tests.support.live_server import serving

#: "nb" holds an L4 on node-c for 3 consecutive hours from 2025-03-02 and never runs anything,
#: then runs for an hour: one idle run of 3 h, not ongoing (node-c has a later interval).
DAY2 = MARCH + 24 * HOUR_NS
NOTEBOOK = [
    {**row("nb", K.ALLOCATED_IDLE, 3600, seq=10 + h, start_ns=DAY2 + h * HOUR_NS, model=L4, node="node-c"),
     "pod": "jupyter-x7k2p"} for h in range(3)
] + [{**row("nb", K.BUSY, 3600, seq=13, start_ns=DAY2 + 3 * HOUR_NS, model=L4, node="node-c"),
      "pod": "jupyter-x7k2p"}]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    path: Path = tmp_path_factory.mktemp("routes") / "gpuledger.duckdb"
    with Store(path) as store:
        write_ledger(store, LEDGER + NOTEBOOK)
        _, token = create_token(store, "admin")
    with serving(create_app(str(path))) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


MARCH_Q = {"start": "2025-03-01", "end": "2025-04-01"}


def test_day_buckets_split_the_month_and_sum_to_it(api: httpx.Client) -> None:
    month = api.get("/v1/showback", params=MARCH_Q).json()
    days = api.get("/v1/showback", params={**MARCH_Q, "granularity": "day"}).json()
    assert days["granularity"] == "day" and days["total_cost"] == month["total_cost"]
    assert {r["time"] for r in days["rows"]} == {"2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z"}
    nb = [r for r in days["rows"] if r["tenant"] == "nb"]
    # 4 L4-hours at 0.69: 2.76, all on day 2; 3 of them idle
    assert [(r["time"], r["cost"], r["allocated_idle_gpu_hours"]) for r in nb] == [
        ("2025-03-02T00:00:00Z", "2.76", 3.0)]
    # epoch milliseconds work as period bounds (Grafana's ${__from}/${__to})
    ms = api.get("/v1/showback", params={"start": MARCH // 10**6, "end": (MARCH + 31 * 24 * HOUR_NS) // 10**6}).json()
    assert ms["period"] == month["period"] and ms["total_cost"] == month["total_cost"]


def test_pages_walk_every_row_once(api: httpx.Client) -> None:
    everything = api.get("/v1/showback", params={**MARCH_Q, "group_by": "tenant,node"}).json()["rows"]
    seen, cursor = [], None
    while True:
        page = api.get("/v1/showback", params={**MARCH_Q, "group_by": "tenant,node", "limit": 2,
                                               **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["rows"]) <= 2 and page["total_rows"] == len(everything)
        seen += page["rows"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == everything and len(everything) == 5


def test_drilldown_link_of_a_line_lists_exactly_its_rows(api: httpx.Client) -> None:
    body = api.get("/v1/showback", params={**MARCH_Q, "group_by": "tenant,model"}).json()
    for line in body["rows"]:
        rows = api.get(line["drilldown"] + "&limit=1000").json()["rows"]
        assert round(sum(r["gpu_seconds"] for r in rows) / 3600, 6) == line["gpu_hours"], line
        assert {r["tenant"] for r in rows} == {line["tenant"]} and {r["model"] for r in rows} == {line["model"]}
    rules = api.get("/v1/drilldown", params={**MARCH_Q, "tenant": "cv", "view": "rules"}).json()["rows"]
    assert rules == [{"kind": "busy", "rule": K.RULE_EQUAL_PROCESSES, "gpu_hours": 0.75, "rows": 1},
                     {"kind": "busy", "rule": K.RULE_PROCESS_SAMPLES, "gpu_hours": 0.25, "rows": 1}]


def test_efficiency_idle_cost_and_top_wasters(api: httpx.Client) -> None:
    eff = {r["tenant"]: r for r in api.get("/v1/efficiency", params=MARCH_Q).json()["rows"]}
    assert "platform" not in eff  # unallocated capacity is nobody's waste
    # ml on the H100 (2.99/h): 30 min busy, 20 min idle -> idle cost 2.99 x 20/60 = 0.9967 -> 1.00
    assert (eff["ml"]["utilization"], eff["ml"]["idle_cost"], eff["ml"]["allocated_gpu_hours"]) == (0.6, "1.00", 0.833333)
    assert (eff["nb"]["utilization"], eff["nb"]["idle_cost"]) == (0.25, "2.07")  # 3 idle L4-hours
    top = api.get("/v1/efficiency/top-wasters", params={**MARCH_Q, "limit": 2}).json()
    assert [r["tenant"] for r in top["rows"]] == ["nb", "ml"] and top["next_cursor"] is not None


def test_idle_gpus_finds_the_notebook_run(api: httpx.Client) -> None:
    runs = api.get("/v1/efficiency/idle-gpus", params={**MARCH_Q, "min_hours": 2}).json()["rows"]
    assert [(r["pod"], r["idle_since"], r["idle_until"], r["idle_hours"], r["ongoing"]) for r in runs] == [
        ("jupyter-x7k2p", "2025-03-02T00:00:00Z", "2025-03-02T03:00:00Z", 3.0, False)]
    assert api.get("/v1/efficiency/idle-gpus", params={**MARCH_Q, "min_hours": 4}).json()["rows"] == []


def test_series_rows_are_flat_with_epoch_ms_time(api: httpx.Client) -> None:
    rows = api.get("/v1/series/showback", params={**MARCH_Q, "granularity": "day"}).json()
    assert isinstance(rows, list) and rows and all(isinstance(r["time"], int) for r in rows)
    assert sum(Decimal(str(r["cost"])) for r in rows) == Decimal(
        api.get("/v1/showback", params=MARCH_Q).json()["total_cost"])
    gpu = api.get("/v1/series/gpu", params={**MARCH_Q, "gpu": "GPU-node-a-0", "granularity": "day"}).json()
    assert {(r["tenant"], r["gpu_hours"]) for r in gpu} == {("ml", 0.833333), ("platform", 0.166667)}
