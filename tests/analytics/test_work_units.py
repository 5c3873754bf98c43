"""Work units: per-pod counters imported from a real Prometheus, joined with the rollups per 1M tokens.

A process serves vLLM-named counters (``vllm:prompt_tokens_total``,
``vllm:generation_tokens_total``, with the ``namespace``/``pod`` labels
Prometheus's Kubernetes discovery would add); a real Prometheus scrapes it;
the import queries Prometheus's HTTP API.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from gpuledger.analytics import kinds as K
from gpuledger.analytics import work_units as wu
from gpuledger.analytics.hourly import rebuild_hourly
from gpuledger.analytics.prices import default_price_book
from gpuledger.errors import ConfigError
from gpuledger.sim import promserver
from gpuledger.store import Store
from gpuledger.timeutil import HOUR_NS
from tests.support.api_ledger import H100, row, write_ledger
from tests.support.importers import UNITS, VLLM_METRICS
from tests.support.system import free_port, need_binary


class FakePrometheus:
    """The Prometheus seam's twin: fixed answers per query."""

    def __init__(self, answers: dict[str, list[tuple[dict[str, str], float]]]) -> None:
        self.answers, self.asked = answers, []  # type: ignore[var-annotated]

    def query(self, promql: str, at_s: float) -> list[tuple[dict[str, str], float]]:
        self.asked.append((promql, at_s))
        return self.answers.get(promql, [])


def test_import_replaces_an_hour_and_keeps_missing_series_absent(tmp_path: Path) -> None:
    units = wu.parse_work_units('[[unit]]\nname = "tokens"\nquery = "q"\nper = 1000000\n')
    hour = 1_700_000_000 * 10**9 // HOUR_NS * HOUR_NS
    fake = FakePrometheus({"q": [({"namespace": "inf", "pod": "a"}, 10.0), ({"pod": "no-namespace"}, 5.0),
                                 ({"namespace": "inf", "pod": "b"}, float("nan"))]})
    with Store(tmp_path / "w.duckdb") as store:
        result = wu.import_hours(store, fake, units, [hour + 5, hour + 10])  # one hour, asked once
        assert (result.hours, result.rows, result.skipped) == (1, 1, 2)
        assert fake.asked == [("q", (hour + HOUR_NS) / 1e9)]  # evaluated at the hour's end
        fake.answers["q"] = [({"namespace": "inf", "pod": "a", "cluster": "eu"}, 12.0)]
        wu.import_hours(store, fake, units, [hour])  # re-import: replaces, never adds
        rows = store.query("SELECT cluster, namespace, pod, unit, count FROM work_units").rows()
        assert rows == [("eu", "inf", "a", "tokens", 12.0)]
        fake.answers["q"] = []
        wu.import_hours(store, fake, units, [hour])
        assert store.count("work_units") == 0  # gone from Prometheus: no row, not a 0


def test_the_shipped_units_count_vllm_tokens() -> None:
    shipped = wu.default_work_units()
    tokens = {u.name: u for u in shipped.units}["tokens"]
    assert tokens.per == 1_000_000
    assert "vllm:prompt_tokens_total" in tokens.query and "vllm:generation_tokens_total" in tokens.query
    with pytest.raises(ConfigError, match="needs name, query"):
        wu.parse_work_units('[[unit]]\nname = "x"\n')


@pytest.fixture
def vllm_exporter() -> Iterator[int]:
    with promserver.TextExporter(lambda: VLLM_METRICS) as exporter:
        yield exporter.port


@pytest.fixture
def prometheus(tmp_path: Path, vllm_exporter: int) -> Iterator[str]:
    binary = need_binary("prometheus", "/usr/bin/prometheus", hint="apt-get install prometheus, or "
                         "scripts/system-deps.sh as root")
    with promserver.prometheus(binary, [f"127.0.0.1:{vllm_exporter}"], tmp_path / "prom",
                               ready_query="vllm:prompt_tokens_total") as url:
        yield url


@pytest.mark.external
@pytest.mark.slow
def test_tokens_from_a_real_prometheus_per_1m_tokens(tmp_path: Path, prometheus: str) -> None:
    hour = time.time_ns() // HOUR_NS * HOUR_NS  # the hour the scrapes are in
    pod_rows = [  # llm-0 on an H100 (2.99/h): busy 30 min, held idle 30 min, 1 kWh measured over the hour
        {**row("inf", K.BUSY, 1800, seq=1, start_ns=hour, energy_j=2.4e6), "pod": "llm-0"},
        {**row("inf", K.ALLOCATED_IDLE, 1800, seq=1, start_ns=hour, energy_j=1.2e6), "pod": "llm-0"},
    ]
    with Store(tmp_path / "w.duckdb") as store:
        write_ledger(store, pod_rows)
        rebuild_hourly(store)
        result = wu.import_hours(store, wu.PrometheusHTTP(prometheus), UNITS, [hour])
        assert (result.rows, result.skipped) == (3, 0)  # tokens: llm-0 only (llm-1 has no prompt series)
        got = store.query("SELECT pod, unit, count FROM work_units ORDER BY pod, unit").rows()
        assert got == [("llm-0", "output_tokens", 1_500_000.0), ("llm-0", "tokens", 2_000_000.0),
                       ("llm-1", "output_tokens", 7000.0)]
        month = f"{time.gmtime(hour / 1e9).tm_year:04d}-{time.gmtime(hour / 1e9).tm_mon:02d}"
        report = {(r["unit"], r["pod"]): r for r in wu.unit_report(store, month, default_price_book(), UNITS)}
    tokens = report[("tokens", "llm-0")]
    assert (tokens["tenant"], tokens["model"], tokens["count"], tokens["per"]) == ("inf", H100, 2_000_000.0, 1_000_000)
    assert (tokens["used_gpu_hours"], tokens["held_gpu_hours"], tokens["energy_kwh"]) == (
        "0.500000", "1.000000", "1.000000")
    # busy only: 0.5 h x 2.99 = 1.495 for 2M tokens -> 0.7475 per 1M; including held idle: 2.99 -> 1.495 per 1M
    assert (tokens["cost_busy"], tokens["cost_held"]) == ("1.50", "2.99")
    assert (tokens["cost_per_busy"], tokens["cost_per_held"]) == ("0.75", "1.50")
    assert (tokens["used_gpu_hours_per"], tokens["held_gpu_hours_per"], tokens["kwh_per"]) == (
        "0.250000", "0.500000", "0.500000")
    assert ("tokens", "llm-1") not in report  # no GPU time in the rollups and no tokens series: nothing
    assert pl.Series([report[("output_tokens", "llm-0")]["count"]]).item() == 1_500_000.0


def test_cli_units_import_and_report(tmp_path: Path, capsys: Any) -> None:
    from gpuledger.cli import main

    db = tmp_path / "w.duckdb"
    hour = 1_741_392_000 * 10**9  # 2025-03-08T00:00Z
    with Store(db) as store:
        write_ledger(store, [{**row("inf", K.BUSY, 3600, seq=1, start_ns=hour), "pod": "llm-0"}])
        rebuild_hourly(store)
        wu.import_hours(store, FakePrometheus({"q": [({"namespace": "inf", "pod": "llm-0"}, 4e6)]}),
                        wu.parse_work_units('[[unit]]\nname = "tokens"\nquery = "q"\nper = 1000000\n'), [hour])
    assert main(["report", "units", "--month", "2025-03", "--db", str(db), "--format", "json"]) == 0
    (line,) = json.loads(capsys.readouterr().out)["rows"]
    assert (line["cost_held"], line["cost_per_held"]) == ("2.99", "0.75")  # 1 H100 hour for 4M tokens: 2.99 / 4
    assert main(["report", "units", "--month", "2025-03", "--db", str(db)]) == 0  # the table: the same line
    title, header, table_line = capsys.readouterr().out.splitlines()
    cells = dict(zip(header.split("\t"), table_line.split("\t"), strict=True))
    assert title == "work units 2025-03" and (cells["cost_held"], cells["cost_per_held"]) == ("2.99", "0.75")
    assert main(["report", "units", "--month", "2025-04", "--db", str(db)]) == 2
    assert "error: no work units for 2025-04" in capsys.readouterr().err
    port = free_port()  # nothing listens there
    assert main(["units", "import", "--db", str(db), "--prometheus-url", f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert "cannot query Prometheus" in err and "hint:" in err


def test_api_units_with_tenant_isolation(tmp_path: Path) -> None:
    from gpuledger.api.app import create_app
    from gpuledger.api.tokens import create_token
    from tests.support.live_server import serving

    db = tmp_path / "w.duckdb"
    hour = 1_741_392_000 * 10**9  # 2025-03-08T00:00Z
    units = wu.parse_work_units('[[unit]]\nname = "tokens"\nquery = "q"\nper = 1000000\n')
    with Store(db) as store:
        write_ledger(store, [{**row("inf", K.BUSY, 3600, seq=1, start_ns=hour), "pod": "llm-0"},
                             {**row("cv", K.BUSY, 3600, seq=1, gpu=1, start_ns=hour), "pod": "cv-0"}])
        rebuild_hourly(store)
        wu.import_hours(store, FakePrometheus({"q": [({"namespace": "inf", "pod": "llm-0"}, 2e6),
                                                     ({"namespace": "cv", "pod": "cv-0"}, 1e6)]}), units, [hour])
        admin, tenant = create_token(store, "admin")[1], create_token(store, "tenant", "cv")[1]
    with serving(create_app(str(db), work_units=units)) as client:
        body = client.get("/v1/units", params={"month": "2025-03"}, headers={"Authorization": f"Bearer {admin}"}).json()
        assert [(r["tenant"], r["cost_per_held"]) for r in body["rows"]] == [("cv", "2.99"), ("inf", "1.50")]
        mine = client.get("/v1/units", params={"month": "2025-03"}, headers={"Authorization": f"Bearer {tenant}"})
        assert [r["tenant"] for r in mine.json()["rows"]] == ["cv"]
        # Grafana's start/end (epoch ms): the month holding the period's last instant
        auth = {"Authorization": f"Bearer {admin}"}
        grafana = client.get("/v1/units", params={"start": "1740787200000", "end": "1740787200000"}, headers=auth)
        assert grafana.status_code == 400  # start must be before end
        grafana = client.get("/v1/units", params={"start": "1738368000000", "end": "1740787200000"}, headers=auth)
        assert grafana.json()["month"] == "2025-02"  # 2025-02-01 .. 2025-03-01 (exclusive): February
        grafana = client.get("/v1/units", params={"start": "1738368000000", "end": "1740787200001"}, headers=auth)
        assert grafana.json()["month"] == "2025-03" and len(grafana.json()["rows"]) == 2
        neither = client.get("/v1/units", headers=auth).json()  # the current UTC month
        assert neither["month"] == time.strftime("%Y-%m", time.gmtime()) and neither["rows"] == []
        half = client.get("/v1/units", params={"start": "1738368000000"}, headers=auth)
        assert half.status_code == 400 and half.json()["error"]["code"] == "bad_period"


def test_a_sample_with_a_cluster_label_joins_that_cluster_s_pod_only() -> None:
    hour = 1_741_392_000 * 10**9  # 2025-03-08T00:00Z
    store = Store()
    write_ledger(store, [{**row("inf", K.BUSY, 3600, seq=1, start_ns=hour, cluster=c), "pod": "llm-0"}
                         for c in ("east", "west")])  # the same namespace and pod name in two clusters
    rebuild_hourly(store)
    units = wu.parse_work_units('[[unit]]\nname = "tokens"\nquery = "q"\nper = 1000000\n')
    wu.import_hours(store, FakePrometheus({"q": [({"cluster": "east", "namespace": "inf", "pod": "llm-0"}, 4e6)]}),
                    units, [hour])
    (line,) = wu.unit_report(store, "2025-03", default_price_book(), units)
    assert (line["count"], line["held_gpu_hours"], line["cost_per_held"]) == (4e6, "1.000000", "0.75")
    wu.import_hours(store, FakePrometheus({"q": [({"namespace": "inf", "pod": "llm-0"}, 4e6)]}), units, [hour])
    (line,) = wu.unit_report(store, "2025-03", default_price_book(), units)  # no cluster label: the pod anywhere
    assert (line["count"], line["held_gpu_hours"], line["cost_per_held"]) == (4e6, "2.000000", "1.50")
