"""API tokens: created by the CLI (a write), checked by the API (a read).

A token looks like ``glt_<id>_<secret>``: ``id`` is 8 hex digits, public and
shown by ``gpuledger token list``; ``secret`` is 32 random bytes
(``secrets.token_urlsafe``). Only the SHA-256 of the secret (hex) is kept, in
an ``api_tokens`` table; the whole token is printed once, at creation, and
cannot be shown again. Revoking sets ``revoked_at_ns``; a revoked token is
refused from the next request on. Tokens never reach a log: the API logs no
headers, and errors name only the token id.

Where tokens live: in a small file of their own beside the database,
``<db>.tokens`` (:func:`token_path`, SQLite in WAL mode: this module is its
one home), not in the DuckDB file. DuckDB lets one process write a file, and
ingest is that process; a token store of its own means that creating or
revoking a token -- revoking a leaked one above all -- never waits for or
races ingest's writer lock, and the API checks a token without opening the
database. Tokens made before this (rows of the database's ``api_tokens``,
DDL in :mod:`gpuledger.store.schema`) still work: :func:`verify_token` looks
there when the token file does not know the id, and revoking one of them
records the revocation in the token file (table ``revoked_elsewhere``), which
wins. An API served from an open ``Store`` (the demo, tests) keeps its tokens
in that store, as before.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from gpuledger.store import Store
from gpuledger.store.metadata import TokenError, TokenSql, TokenStore, token_path

#: Where token SQL runs: the token file, a database's own api_tokens (an open Store: demo, tests), or the
#: lake's catalog database (``gpuledger.store.lake.meta``): anything with the small :class:`TokenSql` surface.
Tokens = TokenSql

__all__ = [
    "ROLES",
    "TOKEN_PREFIX",
    "Principal",
    "TokenError",
    "TokenSql",
    "TokenStore",
    "Tokens",
    "create_token",
    "list_tokens",
    "revoke_token",
    "token_path",
    "verify_token",
]

ROLES = ("admin", "tenant", "finance")
TOKEN_PREFIX = "glt_"
_TOKEN = re.compile(r"^glt_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")

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


def create_token(store: Tokens, role: str, tenant: str | None = None, name: str | None = None,
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


def list_tokens(store: Tokens) -> pl.DataFrame:
    """Every token: id, role, tenant, name, created/revoked times (never the secret or its hash)."""
    frame = store.query("SELECT id, role, tenant, name, created_at_ns, revoked_at_ns FROM api_tokens "
                        "ORDER BY created_at_ns")
    if isinstance(store, TokenStore) and store.has_table("revoked_elsewhere"):
        elsewhere = store.query("SELECT id, revoked_at_ns AS r FROM revoked_elsewhere")
        frame = frame.join(elsewhere, on="id", how="left").with_columns(
            revoked_at_ns=pl.coalesce("revoked_at_ns", "r")).drop("r")
    return frame.with_columns(
        created_at=pl.from_epoch(pl.col("created_at_ns") // 1000, time_unit="us"),
        revoked_at=pl.from_epoch(pl.col("revoked_at_ns") // 1000, time_unit="us"),
    ).select("id", "role", "tenant", "name", "created_at", "revoked_at")


def _token_id(token_id: str) -> str:
    match = _TOKEN.match(token_id)
    return match.group(1) if match else token_id


def revoke_token(store: Tokens, token_id: str, *, now_ns: int | None = None,
                 elsewhere: Callable[[str], bool | None] | None = None) -> None:
    """Revoke by id (the ``glt_<id>_`` part, or the whole token).

    On the token file, an id it does not hold may be a token of the database's
    own table: ``elsewhere(id)`` says whether that one exists and is active
    (None: could not look, e.g. the database is busy); the revocation is then
    recorded in ``revoked_elsewhere`` without touching the database.
    """
    token_id = _token_id(token_id)
    found = store.scalar("SELECT revoked_at_ns IS NULL FROM api_tokens WHERE id = ?", [token_id])
    if found is None and isinstance(store, TokenStore) and elsewhere is not None:
        if store.scalar("SELECT count(*) FROM revoked_elsewhere WHERE id = ?", [token_id]):
            raise TokenError(f"token {token_id} is already revoked", hint="nothing to do")
        active = elsewhere(token_id)
        if active is False:
            raise TokenError(f"no token with id {token_id!r}", hint="`gpuledger token list` shows the ids")
        store.execute("INSERT INTO revoked_elsewhere VALUES (?, ?)", [token_id, now_ns or time.time_ns()])
        return
    if found is None:
        raise TokenError(f"no token with id {token_id!r}", hint="`gpuledger token list` shows the ids")
    if not found:
        raise TokenError(f"token {token_id} is already revoked", hint="nothing to do")
    store.execute("UPDATE api_tokens SET revoked_at_ns = ? WHERE id = ?", [now_ns or time.time_ns(), token_id])


def verify_token(store: Tokens | Callable[[], Store] | None, token: str, *,
                 tokens: Path | None = None) -> tuple[Principal | None, str]:
    """The principal of a presented token, or None and why (without echoing the secret).

    ``tokens``: the token file, asked first (never waits for a database writer);
    ``store`` (a store, or a function opening one only when needed): the
    database's own ``api_tokens``, asked when the token file does not know the id.
    """
    match = _TOKEN.match(token)
    if match is None:
        return None, "the token is malformed (expected glt_<8 hex>_<43 characters>)"
    token_id, secret = match.groups()
    if tokens is not None and tokens.exists():
        with TokenStore(tokens, create=False) as side:
            if side.has_table("revoked_elsewhere") and side.scalar(
                    "SELECT count(*) FROM revoked_elsewhere WHERE id = ?", [token_id]):
                return None, f"token {token_id} was revoked"
            if side.has_table("api_tokens") and side.scalar("SELECT count(*) FROM api_tokens WHERE id = ?",
                                                            [token_id]):
                return _check(side, token_id, secret)
    db = store() if callable(store) else store
    if db is None:
        return None, "no token is known yet"
    if not db.has_table("api_tokens"):
        return None, "this database has no tokens yet"
    if not db.scalar("SELECT count(*) FROM api_tokens"):
        return None, "this database has no tokens yet"
    return _check(db, token_id, secret)


def _check(store: Tokens, token_id: str, secret: str) -> tuple[Principal | None, str]:
    row = store.query("SELECT secret_sha256, role, tenant, revoked_at_ns FROM api_tokens WHERE id = ?", [token_id])
    if row.is_empty() or not hmac.compare_digest(row["secret_sha256"][0], _digest(secret)):
        return None, f"token {token_id} is not known"
    if row["revoked_at_ns"][0] is not None:
        return None, f"token {token_id} was revoked"
    return Principal(token_id, row["role"][0], row["tenant"][0]), ""
