"""Small metadata beside the data: API tokens and closed months, behind one seam with two homes.

What is small and written by people, not by ingest: API tokens (the SHA-256
of each secret, never the secret), closed months (``chargeback_closes``: the
file bytes as closed) and every billed row (``chargeback_billed``: the close's
rows and the corrections billed later). A token create or revoke and a close
must never wait for ingest or attribution, so this metadata is never in the
store ingest writes:

- the embedded DuckDB file: tokens in the token file beside it
  (``<db>.tokens``, SQLite in WAL mode, :class:`TokenStore`, this module is its
  one home), closes in the file's own tables (written by ``export --final``,
  which opens the file like ``attribute``): :class:`FileMetadata`;
- the lake: tables prefixed ``gpuledger_`` in the Iceberg catalog's SQL
  database (SQLite or PostgreSQL; ``gpuledger.store.lake.meta.SqlMetadata``),
  so every API replica sees a token at its next request.

:class:`Metadata` is the seam. Token logic (hashing, roles, checks) stays in
``gpuledger.api.tokens`` and runs on either through the small
:class:`TokenSql` surface (``execute``/``query``/``scalar``/``has_table`` with
``?`` parameters and the table names ``api_tokens``, ``revoked_elsewhere``).
Closes travel as Polars frames with the DuckDB tables' columns
(``store/schema.py``), so ``analytics.closing`` runs unchanged on a DuckDB
file seeded from either home.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, Self

import polars as pl

from gpuledger.errors import GpuledgerError, StoreError

__all__ = ["CLOSE_TABLES", "FileMetadata", "Metadata", "MonthAlreadyClosed", "TokenError", "TokenSql", "TokenStore",
           "token_path"]

#: The close tables, in the order a close writes them.
CLOSE_TABLES = ("chargeback_closes", "chargeback_billed")


class TokenError(GpuledgerError):
    """A token command that cannot be carried out."""

    hint = "see `gpuledger token --help`"


class MonthAlreadyClosed(StoreError):
    """A close of a month another close recorded first (two closers at once): nothing of the second was kept."""

    hint = "export the month again: a closed month returns the file as it was closed"


class TokenSql(Protocol):
    """Where token SQL runs (``?`` parameters; tables ``api_tokens``, ``revoked_elsewhere``)."""

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None: ...

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame: ...

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any: ...

    def has_table(self, name: str) -> bool: ...


class Metadata(Protocol):
    """The small-metadata seam (module doc): tokens and closed months."""

    def tokens(self) -> AbstractContextManager[TokenSql]:
        """Where tokens are created, listed, revoked and checked."""
        ...

    def closes(self) -> pl.DataFrame:
        """Every closed month: the ``chargeback_closes`` columns, file bytes included."""
        ...

    def closed(self) -> set[str]:
        """The closed months (no file bytes read)."""
        ...

    def billed(self) -> pl.DataFrame:
        """Every billed row: the ``chargeback_billed`` columns."""
        ...

    def record_close(self, close: pl.DataFrame, billed: pl.DataFrame) -> None:
        """Store one close (one ``chargeback_closes`` row) and its billed rows at once;
        :class:`MonthAlreadyClosed` (nothing stored) when that month is closed already."""
        ...


def token_path(db_path: str | Path) -> Path:
    """The token file of the database at ``db_path``: ``<db>.tokens``."""
    return Path(f"{db_path}.tokens")


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS api_tokens (id TEXT PRIMARY KEY, secret_sha256 TEXT NOT NULL, role TEXT NOT NULL,
       tenant TEXT, name TEXT, created_at_ns INTEGER NOT NULL, revoked_at_ns INTEGER)""",
    # revocations of tokens kept in the database's own api_tokens (made before the token file existed)
    "CREATE TABLE IF NOT EXISTS revoked_elsewhere (id TEXT PRIMARY KEY, revoked_at_ns INTEGER NOT NULL)",
)
#: Text columns of the token tables (the others are integers).
TOKEN_TEXT = frozenset({"id", "secret_sha256", "role", "tenant", "name"})


class TokenStore:
    """The token file (SQLite, WAL): the :class:`TokenSql` surface over ``<db>.tokens``.

    Writers wait up to ``busy_timeout_s`` for each other (two ``token`` commands
    at once); readers never wait for a writer (WAL). It never touches DuckDB.
    """

    def __init__(self, path: str | Path, *, create: bool = True, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise TokenError(f"no token file at {self.path}", hint="`gpuledger token create` makes it")
        try:
            self._con = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                        check_same_thread=False)
            self._con.execute("PRAGMA journal_mode=WAL")
            if create:
                for ddl in _SCHEMA:
                    self._con.execute(ddl)
        except sqlite3.Error as exc:
            raise TokenError(f"cannot open the token file {self.path}: {exc}",
                             hint="check the path and its permissions (it sits beside the database)") from exc

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        try:
            self._con.execute(sql, list(params or []))
        except sqlite3.Error as exc:
            raise TokenError(f"token file {self.path}: {exc}", hint="retry; another `token` command may hold it") from exc

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        try:
            cur = self._con.execute(sql, list(params or []))
        except sqlite3.Error as exc:
            raise TokenError(f"token file {self.path}: {exc}", hint="retry shortly") from exc
        names = [d[0] for d in cur.description]
        return token_frame(names, cur.fetchall())

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        frame = self.query(sql, params)
        return None if frame.is_empty() else frame.row(0)[0]

    def has_table(self, name: str) -> bool:
        return bool(self._con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
                                      [name]).fetchone()[0])

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def token_frame(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> pl.DataFrame:
    """Rows of a token query as a frame: the text columns as strings, the others (times, flags) as integers."""
    return pl.DataFrame({n: [None if r[i] is None else int(r[i]) if n not in TOKEN_TEXT else r[i] for r in rows]
                         for i, n in enumerate(names)},
                        schema={n: pl.String if n in TOKEN_TEXT else pl.Int64 for n in names})


class FileMetadata:
    """The embedded file's metadata: tokens in ``<db>.tokens``, closes in the DuckDB file (module doc)."""

    def __init__(self, db_path: str | Path) -> None:
        self.db_path = Path(db_path)

    def tokens(self) -> AbstractContextManager[TokenSql]:
        return TokenStore(token_path(self.db_path))

    def closes(self) -> pl.DataFrame:
        return self._read("chargeback_closes")

    def billed(self) -> pl.DataFrame:
        return self._read("chargeback_billed")

    def closed(self) -> set[str]:
        from gpuledger.store.duck import Store

        with Store(self.db_path, read_only=True) as store:
            if not store.has_table("chargeback_closes"):
                return set()
            return set(store.query("SELECT month FROM chargeback_closes")["month"].to_list())

    def record_close(self, close: pl.DataFrame, billed: pl.DataFrame) -> None:
        from gpuledger.store.duck import Store

        with Store(self.db_path) as store, store.transaction() as tx:
            months = close["month"].to_list()
            if tx.scalar("SELECT count(*) FROM chargeback_closes WHERE month IN (SELECT unnest(?::VARCHAR[]))",
                         [months]):
                raise MonthAlreadyClosed(f"month {', '.join(months)} is closed already")
            tx.append("chargeback_closes", close)
            tx.append("chargeback_billed", billed)

    def database_tokens(self) -> pl.DataFrame:
        """Tokens kept in the database's own ``api_tokens`` (made before the token file existed)."""
        return self._read("api_tokens")

    def _read(self, table: str) -> pl.DataFrame:
        from gpuledger.store.duck import Store

        with Store(self.db_path, read_only=True) as store:
            if not store.has_table(table):
                return pl.DataFrame()
            return store.query(f"SELECT * FROM {table}")
