"""A real PostgreSQL server for tests: Debian's server binaries, a throwaway cluster on a free port.

``initdb`` + ``pg_ctl`` in a fresh temporary directory, trust authentication,
fsync off (the data is thrown away). PostgreSQL refuses to run as root, so
under root (CI, this workplace) the cluster belongs to the ``postgres`` user
that Debian's package creates and the binaries run through ``runuser``.
The binaries are looked up on PATH, then under ``/usr/lib/postgresql/*/bin``
(Debian puts them there, not on PATH); missing ones skip the test, or fail it
under ``CI=true`` (:func:`tests.support.system.missing`).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.system import accepts, free_port, missing

HINT = "apt-get install postgresql (scripts/system-deps.sh installs it as root)"


def pg_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):  # newest major first
        if Path(bindir, "initdb").is_file() and Path(bindir, "pg_ctl").is_file():
            return Path(bindir)
    return None


def need_postgres() -> Path:
    bindir = pg_bindir()
    if bindir is None:
        missing(f"no PostgreSQL server binaries (initdb, pg_ctl) on PATH or under /usr/lib/postgresql ({HINT})")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing(f"running as root and no postgres user to own the test cluster ({HINT})")
        if shutil.which("runuser") is None:
            missing("running as root and no runuser to start PostgreSQL as the postgres user (util-linux)")
    return bindir


class Postgres:
    """One throwaway cluster; ``uri`` is a SQLAlchemy URL for psycopg 3."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="gpuledger-pg-"))  # not under pytest's 0700 root-owned tmp
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._user: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "gpuledger", "--no-sync", "-E", "UTF8")

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg://gpuledger@127.0.0.1:{self.port}/postgres"

    def database(self, name: str) -> str:
        """Create database ``name`` on this server (one catalog per test or benchmark run); its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(self.uri.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.uri.rsplit("/", 1)[0] + f"/{name}"

    def running(self) -> bool:
        return accepts(self.port)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop at once (``-m immediate``: connections are cut, as when the database host goes away)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str, check: bool = True) -> None:
        proc = subprocess.run([*self._user, str(self.bindir / tool), *args], capture_output=True, text=True,
                              timeout=120)
        if check and proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr[-2000:]}\n{log}")


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    """A started throwaway cluster (``need_postgres``: skip, or fail under CI=true, without the binaries), removed after."""
    pg = Postgres(need_postgres())
    pg.start()
    try:
        yield pg
    finally:
        pg.remove()
