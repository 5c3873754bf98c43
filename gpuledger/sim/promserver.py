"""A real Prometheus server scraping local exporters, for the accuracy benchmark and the tests.

:func:`prometheus` starts the ``prometheus`` binary (Debian's package;
``scripts/system-deps.sh`` installs it) with a fresh TSDB in ``workdir``,
scraping ``targets`` (``host:port``) every second with ``honor_labels`` (the
exporter's ``namespace``/``pod`` labels win, as Kubernetes relabeling gives
them), waits until ``ready_query`` returns a sample, and stops it on exit.
:class:`TextExporter` serves what those exporters serve: Prometheus's text
format, rendered on each scrape.
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gpuledger.errors import GpuledgerError

__all__ = ["PrometheusStartError", "TextExporter", "prometheus"]


class PrometheusStartError(GpuledgerError):
    hint = "see the Prometheus log named in the message"


class TextExporter:
    """``render()`` (Prometheus's text format 0.0.4) served on ``http://127.0.0.1:PORT/metrics`` from a
    thread, rendered again on each scrape; ``close()`` (or leaving the ``with``) stops it."""

    def __init__(self, render: Callable[[], str]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self.target = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> TextExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _has_sample(url: str, promql: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}),
                                    timeout=2) as resp:  # noqa: S310 (loopback)
            return bool(json.loads(resp.read())["data"]["result"])
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return False


@contextmanager
def prometheus(binary: str, targets: Sequence[str], workdir: Path, *, ready_query: str,
               timeout_s: float = 60.0) -> Iterator[str]:
    """Yield the base URL of a Prometheus that has scraped ``ready_query``'s series at least once."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config, log_path = workdir / "prometheus.yml", workdir / "prometheus.log"
    config.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: exporters\n"
                      "    honor_labels: true\n    static_configs:\n      - targets: ["
                      + ", ".join(f"'{t}'" for t in targets) + "]\n")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while not _has_sample(url, ready_query):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise PrometheusStartError(f"Prometheus never stored a scrape of {ready_query!r} "
                                               f"(log {log_path}):\n{tail}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
