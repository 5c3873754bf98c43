"""Whole-response cache for repeated GETs (dashboards refreshing, many viewers of one page).

An ASGI middleware in front of the app: a ``GET /v1/...`` whose answer was a
200 is replayed byte for byte when the same path, query string and
``Authorization`` header come again while the database file's version is
unchanged (see :mod:`~gpuledger.api.reader`). The key holds a SHA-256 of the
header, never the token. Creating or revoking a token writes the file, so a
revoked token's cached answers are unreachable from the next request on.
Nothing else is cached: errors, the page, bodies over ``max_body`` bytes,
and an app serving an open Store (no version).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpuledger.api.audit import PRINCIPAL_KEY
from gpuledger.api.reader import Database

__all__ = ["ResponseCache"]

Key = tuple[Any, ...]


#: Where the cache says, in ``scope["state"]``, whether it answered ("hit") or the app computed ("miss").
CACHE_KEY = "gpuledger.cache"


class ResponseCache:
    def __init__(self, app: ASGIApp, db: Database, *, entries: int = 1024, max_body: int = 1 << 20) -> None:
        self.app, self.db, self.entries, self.max_body = app, db, entries, max_body
        self._store: OrderedDict[Key, tuple[float, list[Message], Any]] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        version = self.db.version()
        if version is None:
            await self.app(scope, receive, send)
            return
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        key = (version, scope["path"], scope["query_string"], hashlib.sha256(auth).digest())
        hit = self._store.get(key)
        fresh = hit is not None and time.monotonic() - hit[0] <= self.db.ttl_s
        scope.setdefault("state", {})[CACHE_KEY] = "hit" if fresh else "miss"  # for the API's metrics
        if hit is not None and fresh:
            self._store.move_to_end(key)
            if hit[2] is not None:  # who asked, for the audit log, as when the answer was computed
                scope.setdefault("state", {})[PRINCIPAL_KEY] = hit[2]
            for message in hit[1]:
                await send(dict(message))
            return
        sent: list[Message] = []
        size = 0

        async def record(message: Message) -> None:
            nonlocal size
            sent.append(dict(message))
            if message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, record)
        start = sent[0] if sent else {}
        if start.get("status") == 200 and size <= self.max_body and self.db.version() == version:
            self._store[key] = (time.monotonic(), sent, scope.get("state", {}).get(PRINCIPAL_KEY))
            while len(self._store) > self.entries:
                self._store.popitem(last=False)
