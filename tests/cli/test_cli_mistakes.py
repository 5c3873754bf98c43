"""Mistakes that must not read as success: a mistyped database path, a taken port (issue 15).

Each runs the real command line in a subprocess and checks the exit code, the
message and its hint, and that nothing was created.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def gpuledger(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuledger.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("command", [
    ["attribute"],
    ["explain", "--tenant", "ml"],
    ["token", "list"],
    ["token", "create", "--role", "admin"],
    ["token", "revoke", "1a2b3c4d"],
    ["retention"],
    ["serve"],
    ["export", "chargeback", "--month", "2026-10"],
])
def test_a_mistyped_database_path_fails_and_creates_nothing(tmp_path: Path, command: list[str]) -> None:
    db = tmp_path / "typo.duckdb"
    out = gpuledger(*command, "--db", str(db))
    assert out.returncode == 2, out
    assert f"no database at {db}" in out.stderr and "hint:" in out.stderr
    assert not db.exists() and list(tmp_path.iterdir()) == []


def test_demo_on_a_taken_port_fails_before_running_the_pipeline(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        out = gpuledger("demo", "--port", str(port), "--out", str(tmp_path / "out"))
        took = time.monotonic() - t0
    assert out.returncode == 2, out
    assert f"cannot serve on 127.0.0.1:{port}" in out.stderr and "--port" in out.stderr
    assert "token" not in out.stdout.lower()  # nothing printed as if serving
    assert not (tmp_path / "out").exists()  # the pipeline did not run
    assert took < 20  # interpreter start-up only (the pipeline takes ~20 s)


@pytest.mark.parametrize("flag", ["--max-poll-interval-ms", "--session-timeout-ms"])
def test_ingest_group_timing_must_be_positive(tmp_path: Path, flag: str) -> None:
    """The two consumer-group limits are separate flags (issue 15); a non-positive one is refused before
    any broker is contacted."""
    out = gpuledger("ingest", "--kafka", "127.0.0.1:1", "--db", str(tmp_path / "x.duckdb"), flag, "0", timeout=30)
    assert out.returncode != 0
    assert f"error: {flag} must be a positive number of milliseconds" in out.stderr
    assert "hint:" in out.stderr
    assert not (tmp_path / "x.duckdb").exists()


def test_ingest_into_the_lake_without_a_warehouse_says_what_to_pass(tmp_path: Path) -> None:
    proc = gpuledger("ingest", "--kafka", "127.0.0.1:1", "--lake", f"sqlite:///{tmp_path}/catalog.db")
    assert proc.returncode != 0
    assert "error: the lake needs both a catalog and a warehouse" in proc.stderr
    assert "hint: pass --lake CATALOG_URI and --warehouse PATH_OR_S3" in proc.stderr
    assert not (tmp_path / "catalog.db").exists()  # refused before touching anything


@pytest.mark.slow
def test_ingest_into_an_unreachable_lake_catalog_retries_then_fails_with_a_hint(tmp_path: Path) -> None:
    pytest.importorskip("pyiceberg", reason="the lake extra is not installed (pip install -e '.[test]')")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "gpuledger.cli", "ingest", "--kafka", "127.0.0.1:1", "--lake",
         f"postgresql+psycopg://gpuledger:secret@127.0.0.1:{port}/gpuledger", "--warehouse", str(tmp_path / "wh")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "GPULEDGER_LAKE_UNAVAILABLE_S": "1"})
    assert proc.returncode != 0
    assert "error: opening the lake catalog: the lake's catalog or object store did not answer for 1 s" in proc.stderr
    assert "retrying in 0.25 s" in proc.stderr and "retrying in 0.50 s" in proc.stderr  # backoff, then give up
    assert "hint: check --lake (the catalog URI) and --warehouse" in proc.stderr
    assert "secret" not in proc.stderr  # the catalog's password is never printed
    assert "Traceback" not in proc.stderr
