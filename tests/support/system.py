"""Outside things a test needs: system tools, loopback ports, waiting with a deadline.

The rule for a missing system tool (prometheus, chromium, openssl, kubectl,
the tansu broker...) lives here once: a test that needs one *skips with the
reason* on a developer's machine, and *fails* under ``CI=true``, where
``scripts/system-deps.sh`` installs what it can and a skip would hide a test
that never ran.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True under ``CI=true`` (any case), as CI services set it."""
    return os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> NoReturn:
    """A required outside thing is absent: skip with ``reason``, or fail under CI=true."""
    if in_ci():
        pytest.fail(f"{reason}; CI=true: CI must run this test", pytrace=False)
    pytest.skip(reason)


def need_binary(name: str, *alternatives: str, hint: str) -> str:
    """Path of executable ``name`` (or the first of ``alternatives``) on PATH, else :func:`missing`.

    ``hint`` says how to get it, e.g. ``"scripts/system-deps.sh installs it as root"``.
    """
    for candidate in (name, *alternatives):
        path = shutil.which(candidate)
        if path is not None:
            return path
    missing(f"no {name} binary on PATH ({hint})")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it; another process could take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(port: int, timeout_s: float = 0.2) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, *, interval_s: float = 0.1) -> None:
    """Poll ``condition`` every ``interval_s`` seconds until it holds; fail after ``timeout_s`` seconds.

    ``what`` names the awaited state for the failure message ("the first half stored").
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(interval_s)


def tool_venv(venv: Path, python: str | Path, requirements: list[str], exe: str) -> Path:
    """``venv/bin/exe`` of a test tool kept in a virtualenv of its own (under ``.cache/``), made on first use.

    A ``.installed`` marker says the install finished; a virtualenv that cannot be made or installed
    into is :func:`missing` (skip, or fail under CI=true) with pip's last words.
    """
    ready = venv / ".installed"
    if not ready.exists():
        shutil.rmtree(venv, ignore_errors=True)
        made = subprocess.run([str(python), "-m", "venv", str(venv)], capture_output=True, text=True)
        if made.returncode != 0:
            missing(f"could not create a virtualenv at {venv}: {made.stderr.strip()[-400:]}")
        pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *requirements],
                             capture_output=True, text=True, timeout=900)
        if pip.returncode != 0 or not (venv / "bin" / exe).is_file():
            missing(f"could not install {' '.join(requirements)} into {venv}: {pip.stderr.strip()[-400:]}")
        ready.write_text(" ".join(requirements) + "\n")
    return venv / "bin" / exe


def prepare_tool(name: str, make: Callable[[], object], test_file: str) -> int:
    """``make test``'s step before the suite (``python -m tests.support.X``): make a tool's virtualenv now,
    so its install is setup rather than test time; say why not when it cannot be made (the test then does)."""
    try:
        made = make()
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        print(f"{name}: not prepared ({exc}); {test_file} will say so")
        return 0
    print(f"{name}: {made}")
    return 0
