"""Reading the database for the API: read-only opens per request, and a result cache.

DuckDB lets one process write a file. Given a path, the API opens it
read-only when a request first needs it and closes it when the request ends,
holding no lock between requests. While a writer (``gpuledger ingest``) holds
the file, DuckDB refuses other processes: the API answers 503
``database_busy`` with ``Retry-After``. The demo and tests may pass an open
``Store`` instead (``create_app(store=...)``); then nothing is cached.

Cache: results (and token checks) are cached under the file's *version*, the
``(size, mtime_ns, ctime_ns)`` of the database file and its ``.wal``, and of
the token file beside it (``<db>.tokens`` and its ``-wal``: a token created
or revoked there takes effect on the next request). Any
commit by a writer changes the WAL or the file, so the next request misses
the cache and reads the new data; entries also expire after ``ttl_s``
seconds as a bound on a change the file system clock could not show. Callers
asking for the same key at once wait for one computation (single flight),
so 50 clients opening a dashboard at once cost one query.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import polars as pl

from gpuledger.api import errors as E
from gpuledger.api.errors import ApiError
from gpuledger.api.tokens import token_path
from gpuledger.errors import StoreError, StoreLocked, StoreMissingTable
from gpuledger.store import Store
from gpuledger.store.metadata import TokenSql

#: How long a request waits for a writer to release the file before 503 database_busy (s).
BUSY_WAIT_S = 1.5

__all__ = ["Database", "Session"]

T = TypeVar("T")
Version = tuple[int, ...]


class Database:
    """The API's data source: a DuckDB path (read-only per request) or an open Store."""

    def __init__(self, db_path: str | Path | None, store: Store | None, *, cache_entries: int = 512,
                 ttl_s: float = 60.0, tokens: TokenSql | None = None,
                 token_version: Callable[[], Hashable] | None = None) -> None:
        if (db_path is None) == (store is None):
            raise ValueError("create_app needs exactly one of db_path or store")
        self.path = Path(db_path) if db_path is not None else None
        #: The token file beside the database (api.tokens); None when serving an open Store.
        self.tokens = token_path(self.path) if self.path is not None else None
        #: Where tokens are checked instead (the lake's metadata database), and the version of its token table:
        #: part of :meth:`version`, so a token created or revoked by another replica takes effect at the next request.
        self.token_sql = tokens
        self.token_version = token_version
        self.store = store
        self.ttl_s = ttl_s
        self._max = cache_entries
        self._cache: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._flights: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def version(self) -> Version | None:
        """The file's version (see module doc), or None when not cacheable (open Store)."""
        if self.path is None:
            return None
        out: list[int] = []
        tokens = token_path(self.path)
        for p in (self.path, Path(f"{self.path}.wal"), tokens, Path(f"{tokens}-wal")):
            try:
                st = os.stat(p)
                out.extend((st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
            except FileNotFoundError:
                out.extend((-1, -1, -1, -1))
        if self.token_version is not None:
            try:
                out.append(hash(self.token_version()))
            except StoreError:  # the metadata database does not answer: nothing cached; the token check says why
                out.append(time.monotonic_ns())
        return tuple(out)

    def cached(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()`` once per (version, key) within ``ttl_s``; concurrent callers share one run."""
        version = self.version()
        if version is None:
            return compute()
        full = (version, key)
        hit = self._get(full)
        if hit is not None:
            return hit[0]  # type: ignore[no-any-return]
        with self._lock:
            flight = self._flights.setdefault(full, threading.Lock())
        with flight:
            hit = self._get(full)
            if hit is not None:
                return hit[0]  # type: ignore[no-any-return]
            try:
                value = compute()
            except BaseException:  # an error is not cached: the next caller tries again
                with self._lock:
                    self._flights.pop(full, None)
                raise
            with self._lock:
                self._cache[full] = (time.monotonic(), value)
                self._cache.move_to_end(full)
                while len(self._cache) > self._max:
                    self._cache.popitem(last=False)
                self._flights.pop(full, None)
            return value

    def peek(self, key: Hashable) -> Any | None:
        """The cached value of ``key`` at the current version, or None (never computes)."""
        version = self.version()
        hit = None if version is None else self._get((version, key))
        return None if hit is None else hit[0]

    def _get(self, full: Hashable) -> tuple[Any] | None:
        with self._lock:
            entry = self._cache.get(full)
            if entry is None:
                return None
            if time.monotonic() - entry[0] > self.ttl_s:
                del self._cache[full]
                return None
            self._cache.move_to_end(full)
            return (entry[1],)

    @contextmanager
    def open(self) -> Iterator[Store]:
        """A store for one request (read-only open of the file, or the shared Store)."""
        if self.store is not None:
            yield self.store
            return
        assert self.path is not None
        if not self.path.exists():
            raise ApiError(E.NO_DATABASE, f"database {self.path} does not exist yet",
                           "start `gpuledger ingest` (or the demo) to create it, or check the --db path")
        store = None
        deadline = time.monotonic() + BUSY_WAIT_S
        while store is None:
            try:
                store = Store(self.path, read_only=True)
            except StoreError as exc:
                # Ingest holds the file only while it writes a batch (under a second):
                # wait that out rather than answering 503 at once.
                if isinstance(exc, StoreLocked) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                self._refuse(exc)
        try:
            yield store
        finally:
            store.close()

    def _refuse(self, exc: StoreError) -> NoReturn:
        if isinstance(exc, StoreLocked):
            raise ApiError(E.DATABASE_BUSY, f"database {self.path} is held by a writer",
                           "a writer process (gpuledger ingest) holds the file; retry shortly, or serve "
                           "the API from the writer process (see docs/operations.md)",
                           {"Retry-After": "5"}) from None
        raise ApiError(E.DATABASE_UNAVAILABLE, str(exc), exc.hint) from None


class Session:
    """One request's access to the database: opened on first use, closed at the end."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._store: Store | None = None
        self._exit: Any = None

    @property
    def store(self) -> Store:
        if self._store is None:
            ctx = self.db.open()
            self._store = ctx.__enter__()
            self._exit = ctx
        return self._store

    def close(self) -> None:
        if self._exit is not None:
            self._exit.__exit__(None, None, None)
            self._exit = self._store = None

    def query(self, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
        """``Store.query`` that turns a missing ledger table into 503 ``no_ledger``."""
        try:
            return self.store.query(sql, params)
        except StoreMissingTable as exc:
            raise ApiError(E.NO_LEDGER, f"the database is missing a table: {exc}",
                           "run attribution (`gpuledger attribute`) or let ingest run it") from None
