"""The API's own metrics and access log, over real HTTP (uvicorn) on a real DuckDB file: requests by route
template and status, latency, the response cache's hits, and one access-log line per request naming the
token's id, never its secret."""

from __future__ import annotations

import logging
import socket
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

from gpuledger.api.app import create_app
from gpuledger.api.metrics import ApiMetrics
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
