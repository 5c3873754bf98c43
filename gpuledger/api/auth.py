"""Who may call what: bearer tokens, roles, and the tenant scope of every data route.

``Authorization: Bearer glt_<id>_<secret>`` (see :mod:`~gpuledger.api.tokens`).

- no token, or an unknown / revoked / malformed one: **401** with
  ``WWW-Authenticate: Bearer`` (codes ``unauthenticated``, ``invalid_token``);
- a valid token whose role a route does not allow: **403** ``forbidden``;
- a tenant token asking for another tenant (``tenant=other``): **403**
  ``forbidden_tenant``. Without ``tenant=`` a tenant token's queries are
  limited to its own tenant on every data route (:func:`data_filters`).

With ``auth=False`` (``gpuledger serve --no-auth``, for local development
only) every request is an admin. Token checks are cached with the data (per
database version, see :mod:`~gpuledger.api.reader`), so creating or revoking
a token, which writes the file, takes effect on the next request.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gpuledger.api import errors as E
from gpuledger.api.audit import PRINCIPAL_KEY
from gpuledger.api.errors import ApiError
from gpuledger.api.params import FILTERS, Filters, filter_values
from gpuledger.api.reader import Database, Session
from gpuledger.api.tokens import Principal, verify_token
from gpuledger.errors import StoreError

__all__ = [
    "DATA_ROLES",
    "EXPORT_ROLES",
    "NO_AUTH",
    "SHOWBACK_ROLES",
    "bearer",
    "data_filters",
    "principal",
    "require",
    "session",
]

#: Who may read each family of routes.
DATA_ROLES = ("admin", "tenant")
SHOWBACK_ROLES = ("admin", "tenant", "finance")
EXPORT_ROLES = ("admin", "finance")
NO_AUTH = Principal("no-auth", "admin")

bearer = HTTPBearer(auto_error=False, description="An API token from `gpuledger token create`.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
Given = str | list[str] | None  # a filter parameter as received: once, repeated, or absent


async def session(request: Request) -> AsyncIterator[Session]:
    """The request's database session: opened lazily in the handler's thread, closed
    when the handler returns, before the response is sent (scope="function" at every
    use), because a read-only open holds the file lock that the ingest writer needs."""
    s = Session(request.app.state.db)
    try:
        yield s
    finally:
        s.close()


async def principal(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                    s: Session = Depends(session, scope="function")) -> Principal:
    if not request.app.state.auth:
        request.scope.setdefault("state", {})[PRINCIPAL_KEY] = NO_AUTH
        return NO_AUTH
    if credentials is None or not credentials.credentials:
        raise ApiError(E.UNAUTHENTICATED, "this route needs an API token",
                       "send `Authorization: Bearer <token>`; create one with `gpuledger token create`",
                       _CHALLENGE)
    token = credentials.credentials.strip()
    db: Database = request.app.state.db
    key = ("token", hashlib.sha256(token.encode("utf-8", "replace")).hexdigest())
    hit = db.peek(key)  # the common case, answered on the event loop; a miss reads the database in a thread
    # the token file first (no database open, no wait for ingest's writer lock), then the database's own table
    # (serving the lake: the metadata database's token table, ``db.token_sql``)
    source = db.token_sql if db.token_sql is not None else (lambda: s.store)
    try:
        found, why = hit if hit is not None else await run_in_threadpool(
            db.cached, key, lambda: verify_token(source, token, tokens=db.tokens))
    except StoreError as exc:
        raise ApiError(E.DATABASE_UNAVAILABLE, f"tokens cannot be checked: {exc}", exc.hint) from None
    if found is None:
        raise ApiError(E.INVALID_TOKEN, why, "create a new token with `gpuledger token create`", _CHALLENGE)
    request.scope.setdefault("state", {})[PRINCIPAL_KEY] = found  # for the audit log: id, role, tenant
    return found


def require(*roles: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets only ``roles`` through (403 otherwise)."""

    async def check(who: Principal = Depends(principal)) -> Principal:  # no IO: stays on the event loop
        if who.role not in roles:
            raise ApiError(E.FORBIDDEN, f"role {who.role} may not use this route",
                           f"it needs a token with role {' or '.join(roles)}")
        return who

    return check


def data_filters(
    who: Principal,
    tenant: Given = None, namespace: Given = None, node: Given = None, model: Given = None,
    sharing: Given = None, pod: Given = None, workload: Given = None, gpu: Given = None, cluster: Given = None,
) -> Filters:
    """The exact-match filters of a request, with a tenant token held to its tenant.

    Each parameter may be repeated or comma-separated (:func:`~gpuledger.api.params.filter_values`).
    """
    given = {"tenant": tenant, "namespace": namespace, "node": node, "model": model, "sharing": sharing,
             "pod": pod, "workload": workload, "gpu": gpu, "cluster": cluster}
    values = {k: filter_values(given[k]) for k in FILTERS}
    if who.scoped:
        assert who.tenant is not None
        asked = values["tenant"]
        if asked and set(asked) != {who.tenant} and _whole(tenant) != who.tenant:
            raise ApiError(E.FORBIDDEN_TENANT, f"this token may only read tenant {who.tenant!r}",
                           "drop the tenant parameter or use a token of that tenant")
        values["tenant"] = (who.tenant,)
    return Filters({k: v for k, v in values.items() if v})


def _whole(given: Given) -> str | None:
    """A single value as given, unsplit: a tenant token's own name with a comma (``Acme, Inc.``) is unambiguous."""
    if isinstance(given, list):
        given = given[0] if len(given) == 1 else None
    return None if given is None else given.strip()
