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
import time
from collections.abc import Callable
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
