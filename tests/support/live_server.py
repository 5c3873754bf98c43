"""Serving an ASGI app for real in tests: uvicorn on a free loopback port."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI

from tests.support.system import wait_until


@contextmanager
def serving(app: FastAPI) -> Iterator[httpx.Client]:
    """Run ``app`` under uvicorn on a free 127.0.0.1 port in a thread; yield a client for it."""
    # uvicorn is handed the bound socket itself (not support.system.free_port's number), so no
    # other process can take the port between choosing and listening.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # proto: asyncio sets TCP_NODELAY
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 10, "uvicorn to start", interval_s=0.02)
    assert server.started, "uvicorn exited before it started"
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
