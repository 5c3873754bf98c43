"""serve's TLS and the audit log of token use (issue 15), over real HTTPS with a certificate made here."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from gpuledger.api.app import create_app
from gpuledger.api.audit import AuditLog
from gpuledger.api.serving import audit_log, tls_options
from gpuledger.api.tokens import create_token
from gpuledger.config import Settings
from gpuledger.errors import ConfigError
from gpuledger.store import Store
from tests.support.api_ledger import LEDGER, write_ledger


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command line."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificate")
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return crt, key


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("audit") / "gpuledger.duckdb"
    with Store(path) as store:
        write_ledger(store, LEDGER)
        tokens = {"admin": create_token(store, "admin")[1], "ml": create_token(store, "tenant", "ml")[1]}
    return path, tokens


@contextmanager
def serving_https(app: FastAPI, **tls: Any) -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **tls))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_serve_speaks_tls_with_the_configured_certificate(cert: tuple[Path, Path], db: tuple[Path, dict[str, str]]) -> None:
    crt, key = cert
    options = tls_options(Settings(api_tls_certfile=str(crt), api_tls_keyfile=str(key)))
    assert options == {"ssl_certfile": str(crt), "ssl_keyfile": str(key)}
    with serving_https(create_app(str(db[0])), **options) as port:
        trusted = ssl.create_default_context(cafile=str(crt))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trusted, timeout=10) as client:
            assert client.get("/healthz").json()["status"] == "ok"
            who = client.get("/v1/whoami", headers={"Authorization": f"Bearer {db[1]['admin']}"})
            assert who.status_code == 200 and who.json()["role"] == "admin"
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate refuses it
            httpx.get(f"https://127.0.0.1:{port}/healthz", timeout=10)
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_tls_settings_are_checked_before_serving(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    assert tls_options(Settings()) == {}  # default: plain HTTP behind an ingress, as before
    with pytest.raises(ConfigError, match="both"):
        tls_options(Settings(api_tls_certfile=str(cert[0])))
    with pytest.raises(ConfigError, match="no file"):
        tls_options(Settings(api_tls_certfile=str(tmp_path / "absent.pem"), api_tls_keyfile=str(cert[1])))


def _entries(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for p in sorted(directory.glob("audit-*.jsonl")) for line in p.read_text().splitlines()]


def test_the_audit_log_records_token_use_never_the_secret(tmp_path: Path, db: tuple[Path, dict[str, str]]) -> None:
    path, tokens = db
    log_dir = tmp_path / "audit"
    app = create_app(str(path), audit=audit_log(Settings(api_audit_dir=str(log_dir))))
    from tests.support.live_server import serving

    with serving(app) as client:
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        assert client.get("/v1/showback", params={"tenant": "ml"}, headers=admin).status_code == 200
        assert client.get("/v1/showback", params={"tenant": "ml"}, headers=admin).status_code == 200  # cached
        assert client.get("/v1/showback", params={"tenant": "cv"},
                          headers={"Authorization": f"Bearer {tokens['ml']}"}).status_code == 403
        assert client.get("/v1/showback", headers={"Authorization": "Bearer glt_0000_nope"}).status_code == 401
        assert client.get("/v1/fleet").status_code == 401
        assert client.head("/v1/whoami", headers=admin).status_code == 200
        assert client.get("/healthz").status_code == 200  # no token use: not logged
    entries = _entries(log_dir)
    admin_id, ml_id = tokens["admin"].split("_")[1], tokens["ml"].split("_")[1]
    got = [(e["token_id"], e["role"], e["method"], e["route"], e["status"], e["token"]) for e in entries]
    assert got == [
        (admin_id, "admin", "GET", "/v1/showback", 200, "valid"),
        (admin_id, "admin", "GET", "/v1/showback", 200, "valid"),
        (ml_id, "tenant", "GET", "/v1/showback", 403, "valid"),
        (None, None, "GET", "/v1/showback", 401, "invalid"),
        (None, None, "GET", "/v1/fleet", 401, "none"),
        (admin_id, "admin", "HEAD", "/v1/whoami", 200, "valid"),
    ]
    assert entries[2]["tenant"] == "ml" and all(e["client"] == "127.0.0.1" for e in entries)
    assert all(datetime.fromisoformat(e["time"]).tzinfo is not None for e in entries)
    text = "".join(p.read_text() for p in log_dir.iterdir())
    for token in tokens.values():
        assert token.split("_", 2)[2] not in text  # never the secret
    assert "nope" not in text and "Bearer" not in text


def test_the_audit_log_keeps_the_configured_number_of_days(tmp_path: Path) -> None:
    day = 86_400.0
    now = [datetime(2026, 10, 20, 12, tzinfo=UTC).timestamp()]
    log = AuditLog(tmp_path, retention_days=3, clock=lambda: now[0])
    for _ in range(6):
        log.record({"token_id": "0000abcd", "status": 200})
        now[0] += day
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # 10-25 was written; 10-23..10-25 are 3 days
        "audit-2026-10-23.jsonl", "audit-2026-10-24.jsonl", "audit-2026-10-25.jsonl"]
    AuditLog(tmp_path, retention_days=1, clock=lambda: now[0])  # opening prunes too (now is 10-26)
    assert list(tmp_path.iterdir()) == []
    forever = AuditLog(tmp_path / "all", retention_days=0, clock=lambda: now[0])
    forever.record({"status": 200})
    now[0] += 1000 * day
    forever.record({"status": 200})
    assert len(list((tmp_path / "all").iterdir())) == 2
    with pytest.raises(ValueError, match="retention"):
        AuditLog(tmp_path, retention_days=-1)
