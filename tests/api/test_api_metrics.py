"""The API's one /metrics and its one request watcher, over real HTTP (uvicorn) on a real DuckDB file: requests
by route template and status, latency, the response cache's hits, the current month's budget series (also while
a writer holds the file), one access-log line and one audit entry per request naming the token's id, never its
secret, and no /metrics on the API port."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpuledger.analytics.budgets import parse_budgets
from gpuledger.analytics.prices import default_price_book
from gpuledger.api.app import create_app
from gpuledger.api.audit import AuditLog
from gpuledger.api.metrics import REFRESH_S, STALE_AFTER_S, ApiMetrics, BudgetSeries, RequestLog
from gpuledger.api.reader import Database
from gpuledger.api.routes_business import budgets_body
from gpuledger.api.tokens import create_token
from gpuledger.store import Store
from tests.support.api_ledger import LEDGER, write_ledger


@contextmanager
def serving(app: FastAPI) -> Iterator[httpx.Client]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    path = tmp_path_factory.mktemp("api-metrics") / "gpuledger.duckdb"
    with Store(path) as store:
        write_ledger(store, LEDGER)
        token_id, secret = create_token(store, "admin", name="grafana")
    return path, token_id, secret


def test_requests_are_counted_by_route_template_timed_and_logged(db, caplog: pytest.LogCaptureFixture) -> None:
    path, token_id, secret = db
    registry = CollectorRegistry(auto_describe=False)
    app = create_app(str(path), metrics=ApiMetrics(registry))
    auth = {"Authorization": f"Bearer {secret}"}
    with caplog.at_level(logging.INFO, logger="gpuledger.api.access"), serving(app) as api:
        assert api.get("/v1/showback", headers=auth).status_code == 200
        assert api.get("/v1/showback", headers=auth).status_code == 200  # the same answer: from the cache
        assert api.get("/v1/showback").status_code == 401
        assert api.get("/v1/no-such-route", headers=auth).status_code == 404
        assert api.get("/healthz").status_code == 200
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}

    def requests(route: str, status: str) -> float:
        return got.get(("gpuledger_api_requests_total", (("method", "GET"), ("route", route), ("status", status))), 0)

    assert requests("/v1/showback", "200") == 2 and requests("/v1/showback", "401") == 1
    assert requests("unmatched", "404") == 1 and requests("/healthz", "200") == 1
    assert got[("gpuledger_api_request_duration_seconds_count", (("route", "/v1/showback"),))] == 3
    assert got[("gpuledger_api_cache_requests_total", (("result", "hit"),))] >= 1
    assert got[("gpuledger_api_cache_requests_total", (("result", "miss"),))] >= 1
    lines = [r.getMessage() for r in caplog.records if r.name == "gpuledger.api.access"]
    assert len(lines) == 5
    assert lines[0].startswith("GET /v1/showback 200 ") and f"token={token_id}" in lines[0]
    assert "token=-" in lines[2]  # no token: no id
    assert not any(secret in line for line in lines), "the secret must never be logged"


def test_the_access_log_is_written_without_metrics(db, caplog: pytest.LogCaptureFixture) -> None:
    path, token_id, secret = db
    with caplog.at_level(logging.INFO, logger="gpuledger.api.access"), serving(create_app(str(path))) as api:
        api.get("/v1/whoami", headers={"Authorization": f"Bearer {secret}"})
    (line,) = [r.getMessage() for r in caplog.records if r.name == "gpuledger.api.access"]
    assert line.startswith("GET /v1/whoami 200 ") and f"token={token_id}" in line and "client=127.0.0.1" in line


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}


BUDGETS = parse_budgets('currency = "USD"\n[[budget]]\ntenant = "ml"\nmonthly = "1000.00"\n')


def test_one_watcher_writes_the_access_line_the_audit_entry_and_the_series(db, tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    path, token_id, secret = db
    registry = CollectorRegistry(auto_describe=False)
    app = create_app(str(path), metrics=ApiMetrics(registry), audit=AuditLog(tmp_path / "audit"))
    assert [m.cls for m in app.user_middleware].count(RequestLog) == 1  # one watcher for all three
    with caplog.at_level(logging.INFO, logger="gpuledger.api.access"), serving(app) as api:
        assert api.head("/v1/whoami", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        assert api.get("/healthz").status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "gpuledger.api.access"]
    assert [line.split()[:3] for line in lines] == [["HEAD", "/v1/whoami", "200"], ["GET", "/healthz", "200"]]
    (entry,) = [json.loads(x) for f in (tmp_path / "audit").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert (entry["method"], entry["route"], entry["token_id"], entry["status"]) == ("HEAD", "/v1/whoami", token_id, 200)
    got = samples(registry)
    assert got[("gpuledger_api_requests_total", (("method", "HEAD"), ("route", "/v1/whoami"), ("status", "200")))] == 1


def test_the_api_port_has_no_metrics_route(db) -> None:
    """One /metrics per process: the API's is on --metrics-port; on the API port it is an unknown route."""
    path, _, secret = db
    with serving(create_app(str(path), metrics=ApiMetrics(CollectorRegistry()))) as api:
        r = api.get("/metrics", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert "/metrics" not in create_app(str(path)).openapi()["paths"]


def test_the_budget_series_are_in_the_apis_registry(db) -> None:
    path, _, _ = db
    registry = CollectorRegistry(auto_describe=False)
    create_app(str(path), metrics=ApiMetrics(registry), budgets=BUDGETS)
    month = f"{time.gmtime().tm_year:04d}-{time.gmtime().tm_mon:02d}"
    got = samples(registry)
    labels = (("currency", "USD"), ("month", month), ("tenant", "ml"))
    assert got[("gpuledger_tenant_budget", labels)] == 1000.0
    # The ledger holds March 2025 only: this month ml has cost nothing yet (a measured 0, not a missing value).
    assert got[("gpuledger_tenant_cost_month_to_date", labels)] == 0.0


@contextmanager
def writer_holding(path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holding the DuckDB file for writing (as ingest does during a flush)."""
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom gpuledger.store import Store\ns = Store(sys.argv[1])\n"
         "print('ready', flush=True)\nsys.stdin.read()", str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
        yield writer
    finally:
        if writer.stdin is not None:
            writer.stdin.close()
        writer.wait(10)


def test_the_budget_report_is_read_once_a_minute_and_outlives_a_busy_file_for_a_while(tmp_path: Path) -> None:
    path = tmp_path / "held.duckdb"
    with Store(path) as store:
        write_ledger(store, LEDGER)
    now = [time.time()]
    db = Database(str(path), None, ttl_s=0)  # no cache: each scrape reads the file
    series = BudgetSeries(db, lambda s, month: budgets_body(db, s, default_price_book(), BUDGETS, month, "holder"),
                          clock=lambda: now[0])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(series)

    def budget_and_failures() -> tuple[list[float], float]:
        got = samples(registry)
        return ([v for (name, _), v in got.items() if name == "gpuledger_tenant_budget"],
                got.get(("gpuledger_api_budget_read_failures_total", (("reason", "busy"),)), 0))

    assert budget_and_failures() == ([1000.0], 0)
    with writer_holding(path):
        now[0] += REFRESH_S / 2
        assert budget_and_failures() == ([1000.0], 0)  # fresh enough: the file is not read at all
        now[0] += REFRESH_S
        assert budget_and_failures() == ([1000.0], 1)  # the 1.5-minute-old report stands in, the failure counts
        now[0] += STALE_AFTER_S
        assert budget_and_failures() == ([], 2)  # too old: no series rather than a stale figure
    assert budget_and_failures() == ([1000.0], 2)
