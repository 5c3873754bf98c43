"""The audit log of token use: who called which route, when, and what they got.

One JSON line per request to ``/v1/...`` (every route that needs a token),
written after the answer: ``time`` (UTC, ms), ``token_id``, ``role`` and
``tenant`` of the verified token (null when the request had none, or one
that is malformed, unknown or revoked: then ``token`` says which of
``none``/``invalid``), ``method``, ``route`` (the path, no query string),
``status``, ``client`` (address). Never the secret: the log is built from
the verified :class:`~gpuledger.api.tokens.Principal` (id, role, tenant),
not from the header. Cached answers (:mod:`~gpuledger.api.respcache`) are
logged like computed ones.

Files: ``<dir>/audit-YYYY-MM-DD.jsonl``, one per UTC day, appended to;
files older than ``retention_days`` days are deleted when a day's first
entry is written and when the log opens (0: keep every file). Settings
``api_audit_dir`` and ``api_audit_retention_days`` (docs/configuration.md).

The entries are written by the API's one request middleware,
:class:`~gpuledger.api.metrics.RequestLog`, which also writes the access-log
line and counts the request: one watcher per request, not one per concern.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from starlette.types import Scope

from gpuledger.api.tokens import Principal

__all__ = ["PRINCIPAL_KEY", "AuditLog"]

#: Where :func:`~gpuledger.api.auth.principal` leaves the verified principal in the request's ``scope["state"]``.
PRINCIPAL_KEY = "gpuledger.principal"
_FILE = re.compile(r"audit-(\d{4}-\d{2}-\d{2})\.jsonl")


class AuditLog:
    """Daily JSON-lines files in ``directory``, kept ``retention_days`` days (0: forever)."""

    def __init__(self, directory: str | Path, retention_days: int = 90, *,
                 clock: Callable[[], float] = time.time) -> None:
        if retention_days < 0:
            raise ValueError(f"audit retention must be 0 (forever) or more days, got {retention_days}")
        self.directory, self.retention_days, self.clock = Path(directory), retention_days, clock
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._day: date | None = None
        self.prune()

    def path(self, day: date) -> Path:
        return self.directory / f"audit-{day.isoformat()}.jsonl"

    def record(self, entry: dict[str, Any]) -> None:
        """Append one entry (a ``time`` field is added) to today's file."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        line = json.dumps({"time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"), **entry},
                          ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            if self._day != now.date():
                self._day = now.date()
                self._prune(now.date())
            with self.path(now.date()).open("a", encoding="utf-8") as f:
                f.write(line)

    def request(self, scope: Scope, status: int, who: Principal | None) -> None:
        """Record one answered ``/v1/`` request (the HTTP ``scope``, its status, the verified principal).

        :class:`~gpuledger.api.metrics.RequestLog`, the one middleware that watches every request, calls this.
        """
        has_token = any(k == b"authorization" for k, _ in scope["headers"])
        client = scope.get("client")
        self.record({
            "token_id": who.token_id if who else None, "role": who.role if who else None,
            "tenant": who.tenant if who else None,
            "token": "valid" if who else "invalid" if has_token else "none",
            "method": scope["method"], "route": scope["path"], "status": status,
            "client": client[0] if client else None,
        })

    def prune(self) -> list[Path]:
        """Delete the files older than the retention; returns them."""
        with self._lock:
            return self._prune(datetime.fromtimestamp(self.clock(), UTC).date())

    def _prune(self, today: date) -> list[Path]:
        if self.retention_days == 0:
            return []
        oldest = today - timedelta(days=self.retention_days - 1)  # today counts as one of the days kept
        gone = []
        for path in self.directory.glob("audit-*.jsonl"):
            match = _FILE.fullmatch(path.name)
            if match and date.fromisoformat(match.group(1)) < oldest:
                path.unlink(missing_ok=True)
                gone.append(path)
        return sorted(gone)
