"""Showback against Kueue quotas: Kueue-shaped series from a real Prometheus, checked against hand-computed numbers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuledger.analytics import kinds as K
from gpuledger.analytics import queues as qu
from gpuledger.analytics.hourly import rebuild_hourly
from gpuledger.analytics.local_queues import local_queue_report
from gpuledger.analytics.work_units import PrometheusHTTP
from gpuledger.errors import ConfigError
from gpuledger.sim import promserver
from gpuledger.store import Store
from gpuledger.timeutil import HOUR_NS
from tests.support.api_ledger import row, write_ledger
from tests.support.importers import KUEUE_METRICS, QUEUES
from tests.support.system import need_binary


def test_quantile_interpolates_like_histogram_quantile() -> None:
    buckets = [(1.0, 2.0), (10.0, 6.0), (100.0, 10.0), (float("inf"), 10.0)]
    assert qu.quantile(0.5, buckets) == 7.75  # rank 5 in (1, 10]: 1 + 9 x 3/4
    assert qu.quantile(0.95, buckets) == 88.75  # rank 9.5 in (10, 100]: 10 + 90 x 3.5/4
    assert qu.quantile(0.99, [(1.0, 1.0), (float("inf"), 5.0)]) == 1.0  # +Inf bucket: the highest finite bound
    assert qu.quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None  # no admissions: unknown, not 0
    with pytest.raises(ConfigError, match="needs cluster_queue and tenant"):
        qu.parse_queues('[[queue]]\ncluster_queue = "x"\n')
    with pytest.raises(ConfigError, match=r"\[\[local_queue\]\] #1 needs namespace, name and cluster_queue"):
        qu.parse_queues('[[local_queue]]\nnamespace = "a"\nname = "main"\n')


@pytest.fixture
def kueue_prometheus(tmp_path: Path) -> Iterator[str]:
    binary = need_binary("prometheus", "/usr/bin/prometheus", hint="apt-get install prometheus, or "
                         "scripts/system-deps.sh as root")
    with promserver.TextExporter(lambda: KUEUE_METRICS) as exporter, \
            promserver.prometheus(binary, [exporter.target], tmp_path / "prom",
                                  ready_query="kueue_admission_wait_time_seconds_bucket") as url:
        yield url


@pytest.mark.external
@pytest.mark.slow
def test_kueue_quotas_from_a_real_prometheus(tmp_path: Path, kueue_prometheus: str, capsys: Any) -> None:
    hour = time.time_ns() // HOUR_NS * HOUR_NS
    db = tmp_path / "q.duckdb"
    with Store(db) as store:  # ml's measured hour: busy 30 min, held idle 30 min
        write_ledger(store, [row("ml", K.BUSY, 1800, seq=1, start_ns=hour),
                             row("ml", K.ALLOCATED_IDLE, 1800, seq=1, start_ns=hour)])
        rebuild_hourly(store)
        assert qu.import_queue_hours(store, PrometheusHTTP(kueue_prometheus), QUEUES, [hour]) > 0
        assert qu.import_queue_hours(store, PrometheusHTTP(kueue_prometheus), QUEUES, [hour]) > 0  # replaces
        month = time.strftime("%Y-%m", time.gmtime(hour / 1e9))
        ml, cv = qu.queue_report(store, month, QUEUES)[::-1]
        local = {r["local_queue"]: r for r in local_queue_report(store, month, QUEUES)}
    assert (ml["cluster_queue"], ml["tenant"], ml["hours"]) == ("cq-ml", "ml", 1)
    assert (ml["quota_gpu_hours"], ml["borrowing_limit_gpu_hours"], ml["reserved_gpu_hours"],
            ml["kueue_usage_gpu_hours"]) == (6.0, 2.0, 7.0, 5.0)
    assert (ml["borrowed_gpu_hours"], ml["unused_quota_gpu_hours"]) == (1.0, 0.0)
    assert (ml["used_gpu_hours"], ml["allocated_idle_gpu_hours"]) == (0.5, 0.5)
    assert (ml["admissions"], ml["wait_p50_s"], ml["wait_p95_s"]) == (10.0, 7.75, 88.75)
    assert (cv["cluster_queue"], cv["tenant"], cv["quota_gpu_hours"], cv["borrowed_gpu_hours"],
            cv["unused_quota_gpu_hours"]) == ("cq-cv", "cq-cv", 4.0, 0.0, 3.0)  # the CPU quota is not counted
    assert (cv["used_gpu_hours"], cv["wait_p50_s"], cv["admissions"]) == (None, None, None)  # unknown, not 0
    # LocalQueues: cq-ml's quota 6, admitted 7 (1 borrowed); ml-a took 5/7 of it, ml-b 2/7.
    assert sorted(local) == ["ml-a/main", "ml-b/main", "x/stray"]
    a, b, stray = local["ml-a/main"], local["ml-b/main"], local["x/stray"]
    assert (a["cluster_queue"], a["tenant"], a["reserved_gpu_hours"], a["kueue_usage_gpu_hours"]) == (
        "cq-ml", "ml", 5.0, 4.0)
    assert (a["quota_share_gpu_hours"], a["borrowed_gpu_hours"], a["share_of_quota"]) == (
        round(6 * 5 / 7, 6), round(1 * 5 / 7, 6), round(5 / 7, 6))
    assert (a["used_gpu_hours"], a["allocated_idle_gpu_hours"]) == (0.5, 0.5)  # the tenant ml's measured hour
    assert (b["tenant"], b["reserved_gpu_hours"], b["quota_share_gpu_hours"], b["borrowed_gpu_hours"]) == (
        "ml-b", 2.0, round(6 * 2 / 7, 6), round(1 * 2 / 7, 6))  # the CPU reservation is not counted
    assert (b["kueue_usage_gpu_hours"], b["used_gpu_hours"]) == (None, None)  # no series, no rollups: unknown
    assert a["quota_share_gpu_hours"] + b["quota_share_gpu_hours"] == pytest.approx(ml["quota_gpu_hours"])
    assert a["borrowed_gpu_hours"] + b["borrowed_gpu_hours"] == pytest.approx(ml["borrowed_gpu_hours"])
    assert (stray["cluster_queue"], stray["tenant"], stray["reserved_gpu_hours"], stray["quota_share_gpu_hours"]) == (
        None, "x", 1.0, None)
    from gpuledger.cli import main

    assert main(["report", "queues", "--month", month, "--db", str(db), "--format", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [q["cluster_queue"] for q in body["queues"]] == ["cq-cv", "cq-ml"]
    assert [q["local_queue"] for q in body["local_queues"]] == ["ml-a/main", "ml-b/main", "x/stray"]


class FakePrometheus:
    """The Prometheus seam's twin: answers by metric name in the query, per evaluation time."""

    def __init__(self) -> None:
        self.by_time: dict[float, dict[str, list[tuple[dict[str, str], float]]]] = {}

    def query(self, promql: str, at_s: float) -> list[tuple[dict[str, str], float]]:
        answers = self.by_time.get(at_s, {})
        return next((v for k, v in answers.items() if k in promql), [])


def test_a_months_waits_are_its_newest_buckets_minus_the_months_before(tmp_path: Path) -> None:
    feb, mar = 1_740_787_200 * 10**9 - HOUR_NS, 1_740_787_200 * 10**9  # 2025-02-28T23:00Z, 2025-03-01T00:00Z
    fake = FakePrometheus()
    bucket = "kueue_admission_wait_time_seconds_bucket"
    fake.by_time[(feb + HOUR_NS) / 1e9] = {bucket: [({"cluster_queue": "q", "le": "1"}, 3.0),
                                                    ({"cluster_queue": "q", "le": "+Inf"}, 4.0)]}
    fake.by_time[(mar + HOUR_NS) / 1e9] = {
        bucket: [({"cluster_queue": "q", "le": "1"}, 5.0), ({"cluster_queue": "q", "le": "+Inf"}, 8.0)],
        "nominal_quota": [({"cluster_queue": "q"}, 2.0)], "resource_reservation": [({"cluster_queue": "q"}, 3.0)]}
    with Store(tmp_path / "q.duckdb") as store:
        qu.import_queue_hours(store, fake, qu.Queues(), [feb, mar])
        (q,) = qu.queue_report(store, "2025-03", qu.Queues())
    # March: 2 more under 1 s, 4 more in all -> p50 at rank 2 is the 1 s bound; quota 2, admitted 3: 1 borrowed
    assert (q["admissions"], q["wait_p50_s"], q["quota_gpu_hours"], q["borrowed_gpu_hours"]) == (4.0, 1.0, 2.0, 1.0)


def test_api_queues_with_tenant_isolation(tmp_path: Path) -> None:
    from gpuledger.api.app import create_app
    from gpuledger.api.tokens import create_token
    from tests.support.live_server import serving

    mar = 1_740_787_200 * 10**9
    fake = FakePrometheus()
    fake.by_time[(mar + HOUR_NS) / 1e9] = {"nominal_quota": [({"cluster_queue": "cq-ml"}, 2.0),
                                                             ({"cluster_queue": "cq-cv"}, 1.0)],
                                           "local_queue_resource_reservation": [
                                               ({"namespace": "ml-a", "name": "main"}, 1.0),
                                               ({"namespace": "ml-b", "name": "main"}, 1.0)]}
    with Store(tmp_path / "q.duckdb") as store:
        write_ledger(store, [row("ml", K.BUSY, 3600, seq=1, start_ns=mar)])
        qu.import_queue_hours(store, fake, QUEUES, [mar])
        admin, tenant = create_token(store, "admin")[1], create_token(store, "tenant", "ml")[1]
    with serving(create_app(str(tmp_path / "q.duckdb"), queues=QUEUES)) as client:
        every = client.get("/v1/queues", params={"month": "2025-03"}, headers={"Authorization": f"Bearer {admin}"})
        assert [(q["cluster_queue"], q["quota_gpu_hours"]) for q in every.json()["queues"]] == [
            ("cq-cv", 1.0), ("cq-ml", 2.0)]
        assert [q["local_queue"] for q in every.json()["local_queues"]] == ["ml-a/main", "ml-b/main"]
        mine = client.get("/v1/queues", params={"month": "2025-03"}, headers={"Authorization": f"Bearer {tenant}"})
        assert [q["tenant"] for q in mine.json()["queues"]] == ["ml"]
        assert [q["local_queue"] for q in mine.json()["local_queues"]] == ["ml-a/main"]  # ml-b's is ml-b's
