"""Token commands while ingest holds the database's writer lock (issue 15).

Revoking a leaked token must not wait for, or race, ingest. Tokens live in a
file of their own beside the database (``<db>.tokens``, gpuledger.api.tokens);
here another process holds the DuckDB file for writing -- exactly what
``gpuledger ingest --hold-db`` does, and what every flush does for a moment --
while ``gpuledger token create / list / revoke`` run, and the API checks the
tokens without opening the database.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuledger.api.app import create_app
from gpuledger.api.tokens import create_token
from gpuledger.errors import StoreLocked
from gpuledger.store import Store
from tests.support.live_server import serving

pytestmark = pytest.mark.slow

HOLD = ("import sys, time\nfrom gpuledger.store import Store\nstore = Store(sys.argv[1])\n"
        "print('held', flush=True)\ntime.sleep(300)\n")


def gpuledger(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "gpuledger.cli", *args], capture_output=True, text=True, timeout=60)
    return out, time.monotonic() - t0


@pytest.fixture
def db_with_an_older_token(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """A database holding a token made the old way (in its own api_tokens), then held by a writer."""
    db = tmp_path / "g.duckdb"
    with Store(db) as store:
        older_id, older = create_token(store, "admin", name="made-before-the-token-file")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLocked):
            Store(db, read_only=True)  # the writer lock is really taken
        yield db, older_id, older
    finally:
        holder.kill()
        holder.wait(10)


def test_tokens_are_created_listed_revoked_and_checked_while_a_writer_holds_the_database(
    db_with_an_older_token: tuple[Path, str, str],
) -> None:
    db, older_id, older = db_with_an_older_token
    made, took = gpuledger("token", "create", "--role", "admin", "--name", "leaked", "--db", str(db))
    assert made.returncode == 0, made.stderr
    assert took < 15  # no wait for the writer (the old command failed: the lock is held for minutes)
    leaked = made.stdout.strip()
    leaked_id = leaked.split("_")[1]
    kept, _ = gpuledger("token", "create", "--role", "tenant", "--tenant", "nlp", "--db", str(db))
    assert kept.returncode == 0, kept.stderr

    listed, _ = gpuledger("token", "list", "--db", str(db))
    assert listed.returncode == 0 and leaked_id in listed.stdout
    assert "database is busy" in listed.stderr  # the older token cannot be read now, and it says so

    revoked, took = gpuledger("token", "revoke", leaked_id, "--db", str(db))
    assert revoked.returncode == 0, revoked.stderr
    assert took < 15
    older_revoked, _ = gpuledger("token", "revoke", older_id, "--db", str(db))  # made the old way
    assert older_revoked.returncode == 0, older_revoked.stderr
    again, _ = gpuledger("token", "revoke", leaked_id, "--db", str(db))
    assert again.returncode != 0 and "already revoked" in again.stderr

    # The API answers from the token file, still without the database (the writer holds it).
    with serving(create_app(str(db))) as client:
        def who(token: str) -> tuple[int, str]:
            r = client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
            return r.status_code, r.text

        status, body = who(kept.stdout.strip())
        assert status == 200 and '"nlp"' in body
        assert who(leaked)[0] == 401 and f"token {leaked_id} was revoked" in who(leaked)[1]
        assert who(older)[0] == 401 and f"token {older_id} was revoked" in who(older)[1]
        # a check is cached, but under the token file's version too: a revocation applies at once
        kept_id = kept.stdout.strip().split("_")[1]
        assert gpuledger("token", "revoke", kept_id, "--db", str(db))[0].returncode == 0
        assert who(kept.stdout.strip())[0] == 401
