"""How an ingest worker holds its DuckDB file: only while it writes.

DuckDB lets one process open a file for writing, and then no other process
can open it at all, not even read-only. A worker that kept its file open
would lock the API and every job out for as long as it runs. So the
``gpuledger ingest`` service opens its file per *flush* -- one poll window
of records (``linger_s``, default 1 s, or ``batch_max`` records) -- writes
the batch in one transaction, closes the file (DuckDB checkpoints on close),
and only then commits the Kafka offsets. Between flushes the file is free:
``gpuledger serve`` and ``gpuledger attribute`` open it, read or write, and
close it again.

When a reader holds the file at the moment a flush starts, the worker waits
and retries (``lock_wait_s``, default 30 s, doubling pauses from 10 ms);
readers hold it for one request. Records wait in the worker's memory meanwhile,
uncommitted: a crash then loses nothing.

``hold=True`` keeps the file open for the worker's life (the fastest mode, for
a worker whose file nobody reads while it runs, e.g. one of N workers whose
files a merge job reads later).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from gpuledger.errors import StoreLocked
from gpuledger.store import Store

log = logging.getLogger(__name__)

__all__ = ["FileOpener"]


class FileOpener:
    """Opens ``path`` for one flush (``with opener() as store``); see the module doc."""

    def __init__(self, path: str | Path, *, hold: bool = False, lock_wait_s: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.path = Path(path)
        self.hold = hold
        self.lock_wait_s = lock_wait_s
        self.sleep = sleep
        self.waits = 0  # flushes that had to wait for a reader
        self._held: Store | None = None
        with self._open() as store:  # create the schema now; fail fast on a bad path
            store.count("messages")

    def __call__(self) -> AbstractContextManager[Store]:
        return self._open()

    @contextmanager
    def _open(self) -> Iterator[Store]:
        if self._held is not None:
            yield self._held
            return
        store = self._connect()
        try:
            yield store
        finally:
            if self.hold:
                self._held = store
            else:
                store.close()

    def _connect(self) -> Store:
        deadline = time.monotonic() + self.lock_wait_s
        pause = 0.01
        waited = False
        while True:
            try:
                store = Store(self.path)
                self.waits += waited
                return store
            except StoreLocked:
                if time.monotonic() + pause > deadline:
                    raise
                if not waited:
                    log.debug("%s is held by another process; waiting", self.path)
                waited = True
                self.sleep(pause)
                pause = min(pause * 2, 0.5)

    def close(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None
