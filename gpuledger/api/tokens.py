"""API tokens: created by the CLI (a write), checked by the API (a read).

A token looks like ``glt_<id>_<secret>``: ``id`` is 8 hex digits, public and
shown by ``gpuledger token list``; ``secret`` is 32 random bytes
(``secrets.token_urlsafe``). The database keeps only the SHA-256 of the secret
(hex) in ``api_tokens`` (DDL in :mod:`gpuledger.store.schema`); the whole token
is printed once, at creation, and cannot be shown again. Revoking sets ``revoked_at_ns``; a revoked token is
refused from the next request on. Tokens never reach a log: the API logs no
headers, and errors name only the token id.

Roles (see docs/api.md):

- ``admin``: every route, every tenant;
- ``tenant``: data routes, only rows of its own tenant (``tenant`` column);
- ``finance``: exports (chargeback CSV) and showback across tenants.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import polars as pl

from gpuledger.errors import GpuledgerError
from gpuledger.store import Store

__all__ = [
    "ROLES",
    "TOKEN_PREFIX",
    "Principal",
    "TokenError",
    "create_token",
    "list_tokens",
    "revoke_token",
    "verify_token",
]

ROLES = ("admin", "tenant", "finance")
TOKEN_PREFIX = "glt_"
_TOKEN = re.compile(r"^glt_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")

class TokenError(GpuledgerError):
    """A token command that cannot be carried out."""

    hint = "see `gpuledger token --help`"


@dataclass(frozen=True)
class Principal:
    """Who a request is: its token id, role and (tenant role only) tenant."""

    token_id: str
    role: str
    tenant: str | None = None

    @property
    def scoped(self) -> bool:
        """True when every data query must be limited to :attr:`tenant`."""
        return self.role == "tenant"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def create_token(store: Store, role: str, tenant: str | None = None, name: str | None = None,
                 *, now_ns: int | None = None) -> tuple[str, str]:
    """Create a token; returns ``(id, whole token)``. The whole token is not stored anywhere."""
    if role not in ROLES:
        raise TokenError(f"unknown role {role!r}", hint=f"--role is one of {', '.join(ROLES)}")
    if role == "tenant" and not tenant:
        raise TokenError("a tenant token needs --tenant", hint="e.g. --role tenant --tenant nlp")
    if role != "tenant" and tenant:
        raise TokenError(f"--tenant only applies to --role tenant, not {role}",
                         hint="admin and finance tokens see every tenant")
    token_id = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    store.execute("INSERT INTO api_tokens VALUES (?, ?, ?, ?, ?, ?, NULL)",
                  [token_id, _digest(secret), role, tenant, name, now_ns or time.time_ns()])
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secret}"


def list_tokens(store: Store) -> pl.DataFrame:
    """Every token: id, role, tenant, name, created/revoked times (never the secret or its hash)."""
    return store.query("SELECT id, role, tenant, name, make_timestamp(created_at_ns // 1000) AS created_at, "
                       "make_timestamp(revoked_at_ns // 1000) AS revoked_at FROM api_tokens ORDER BY created_at_ns")


def revoke_token(store: Store, token_id: str, *, now_ns: int | None = None) -> None:
    """Revoke by id (the ``glt_<id>_`` part, or the whole token)."""
    match = _TOKEN.match(token_id)
    token_id = match.group(1) if match else token_id
    found = store.scalar("SELECT revoked_at_ns IS NULL FROM api_tokens WHERE id = ?", [token_id])
    if found is None:
        raise TokenError(f"no token with id {token_id!r}", hint="`gpuledger token list` shows the ids")
    if not found:
        raise TokenError(f"token {token_id} is already revoked", hint="nothing to do")
    store.execute("UPDATE api_tokens SET revoked_at_ns = ? WHERE id = ?", [now_ns or time.time_ns(), token_id])


def verify_token(store: Store, token: str) -> tuple[Principal | None, str]:
    """The principal of a presented token, or None and why (without echoing the secret)."""
    match = _TOKEN.match(token)
    if match is None:
        return None, "the token is malformed (expected glt_<8 hex>_<43 characters>)"
    token_id, secret = match.groups()
    if not store.has_table("api_tokens"):
        return None, "this database has no tokens yet"
    row = store.query("SELECT secret_sha256, role, tenant, revoked_at_ns FROM api_tokens WHERE id = ?", [token_id])
    if row.is_empty() and not store.scalar("SELECT count(*) FROM api_tokens"):
        return None, "this database has no tokens yet"
    if row.is_empty() or not hmac.compare_digest(row["secret_sha256"][0], _digest(secret)):
        return None, f"token {token_id} is not known"
    if row["revoked_at_ns"][0] is not None:
        return None, f"token {token_id} was revoked"
    return Principal(token_id, row["role"][0], row["tenant"][0]), ""
