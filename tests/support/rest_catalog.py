"""A real Iceberg REST catalog server for tests: ``lakana-server`` (PyPI), on PostgreSQL, on a free port.

lakana-server (a data-platform control plane whose ``/v1/{prefix}/...`` router
implements the Iceberg REST catalog spec) is the one REST catalog server found
installable here (docs/lake.md#rest-catalog). It is **not** a dependency of the
project: its ``aiobotocore`` pins a ``botocore`` that would replace the one
moto and boto3 use in the test environment. So it lives in a virtualenv of its
own, as the FOCUS validator does (tests/support/focus_validator.py):
:func:`server_env` makes ``.cache/lakana-server-0.20.0/`` once (``pip install
lakana-server==0.20.0``, then a ``.installed`` marker). ``make test`` runs
``python -m tests.support.rest_catalog`` before the suite, so the install is
setup, not test time; it reports what it could not do and exits 0, and the
tests then skip with the reason -- and **fail under** ``CI=true``
(:func:`tests.support.system.missing`). ``GPULEDGER_TEST_LAKANA_SERVER=/path/to/lakana-server``
names another installation instead.

Set-up, as lakana's own docs describe it: ``lakana-server migrate`` on the
PostgreSQL database, then the server with a bootstrap admin whose personal
access token is given (test configuration); an *environment* (the REST spec's
``{prefix}``) with a ``file://`` storage root where the catalog places tables.
pyiceberg reaches it with the token and the prefix, which gpuledger passes
through pyiceberg's own environment configuration
(``PYICEBERG_CATALOG__GPULEDGER__TOKEN``, ``..._PREFIX``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.postgres import Postgres
from tests.support.system import accepts, free_port, missing, prepare_tool, tool_venv

ENV = "GPULEDGER_TEST_LAKANA_SERVER"
SERVER = "0.20.0"
REQUIREMENTS = [f"lakana-server=={SERVER}"]
ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".cache" / f"lakana-server-{SERVER}"
KEY_ID, SECRET = "gpuledgertest01", "t" * 40


def server_env(venv: Path = VENV) -> Path:
    """The lakana-server executable in ``venv``, creating the virtualenv on first use (else :func:`missing`)."""
    return tool_venv(venv, sys.executable, REQUIREMENTS, "lakana-server")


def need_lakana() -> str:
    """The lakana-server executable: ``GPULEDGER_TEST_LAKANA_SERVER`` when set, else the one in ``.cache/``."""
    given = os.environ.get(ENV, "")
    if given:
        if not Path(given).is_file():
            missing(f"{ENV}={given}: no such file (unset it to use {VENV}, which "
                    "`python -m tests.support.rest_catalog` makes)")
        return given
    return str(server_env())


class LakanaRest:
    """lakana-server on ``pg``'s database; ``uri``, ``token`` and ``prefix`` are what a pyiceberg client needs."""

    prefix = "gpuledger-test"

    def __init__(self, exe: str, pg: Postgres, root: Path) -> None:
        self.exe = exe
        self.port = free_port()
        self.root = root
        self.log_path = root / "lakana-server.log"
        self.env = {**os.environ,
                    "LAKANA_DATABASE__URL": pg.uri.replace("postgresql+psycopg://", "postgresql+pg8000://"),
                    "LAKANA_BOOTSTRAP_PAT_KEY_ID": KEY_ID, "LAKANA_BOOTSTRAP_PAT_SECRET": SECRET,
                    "LAKANA_HOST": "127.0.0.1", "LAKANA_PORT": str(self.port)}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return f"lakana_pat_{KEY_ID}_{SECRET}"

    @property
    def storage_root(self) -> str:
        """The current environment's storage root (a ``file://`` URI)."""
        return (self.root / "warehouse" / self.prefix).resolve().as_uri()

    def new_environment(self, name: str) -> str:
        """A fresh environment (the REST spec's prefix: a catalog of its own) named ``name``, made current."""
        self.prefix = name
        self._api("POST", "/api/v1/environments", {"name": name, "storage": {"scheme": "file", "root": self.storage_root}})
        return name

    def start(self, timeout_s: float = 60.0) -> None:
        migrate = subprocess.run([self.exe, "migrate"], env=self.env, capture_output=True, text=True, timeout=120)
        if migrate.returncode != 0:
            raise RuntimeError(f"lakana-server migrate failed: {migrate.stderr[-2000:]}")
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([self.exe], env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not accepts(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"lakana-server did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        self.new_environment(self.prefix)

    def _api(self, method: str, path: str, body: dict[str, object]) -> dict[str, object]:
        req = urllib.request.Request(self.uri + path, method=method, data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                answer: dict[str, object] = json.loads(resp.read())
                return answer
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"lakana-server {method} {path}: {exc.code} {exc.read()[:500]!r}") from exc

    def client_env(self) -> dict[str, str]:
        """pyiceberg's environment configuration of gpuledger's catalog (named ``gpuledger``)."""
        return {"PYICEBERG_CATALOG__GPULEDGER__TOKEN": self.token, "PYICEBERG_CATALOG__GPULEDGER__PREFIX": self.prefix}

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


def main() -> int:
    """Prepare the virtualenv ahead of the suite (``make test``)."""
    return prepare_tool("lakana-server", server_env, "tests/store/test_lake_rest.py")


if __name__ == "__main__":
    sys.exit(main())
