"""``gpuledger serve`` (the showback API) and ``gpuledger token`` (its tokens)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from gpuledger.cli.common import (
    add_command,
    add_metrics_port,
    existing_db,
    free_to_serve,
    lake_config,
    lake_metadata,
    metrics_registry,
    price_book,
    setting_flags,
)
from gpuledger.config import Settings
from gpuledger.errors import GpuledgerError

if TYPE_CHECKING:
    import polars as pl

    from gpuledger.store.lake import LakeConfig
    from gpuledger.store.lake.replica import LakeReplica


def register(sub: Any, settings: Settings) -> None:
    s = add_command(
        sub, "serve", serve,
        help="serve the showback API (FastAPI) over the DuckDB file, or the lake as a stateless replica",
        description="Showback API and page: showback, efficiency, fleet, Grafana series, drill-down, chargeback CSV; "
        "OpenAPI at /docs, a showback page at /. Opens the database read-only. Every /v1 route needs a token "
        "(`gpuledger token create`); --no-auth turns that off for local development only.\n\n"
        "With --lake CATALOG_URI --warehouse PATH_OR_S3 it serves the lake instead, as a stateless replica (run "
        "as many as you like): it copies the lake's rollups (and the newest --lake-raw-days of raw tables, for the "
        "fleet view) into a DuckDB file under --cache-dir, re-checks the lake's snapshots every --lake-refresh "
        "seconds and swaps a complete new copy in when they moved; tokens and closed months live in the catalog's "
        "SQL database, so a token created through one replica works on every replica at its next request. "
        "/healthz and the gpuledger_lake_snapshot_age_seconds gauge say how old the served snapshot is "
        "(docs/lake.md).\n\n"
        "  gpuledger serve --lake postgresql+psycopg://gl:pw@pg/gpuledger --warehouse s3://gpuledger-lake/raw \\\n"
        "      --cache-dir /cache --lake-refresh 30",
    )
    setting_flags(s, settings, "--db", "--host", "--port", "--prices", "--memory-limit", "--cloud-rates", "--node-pools",
                  "--budgets", "--idle-policy", "--work-units", "--queues")
    s.add_argument("--close-months", action="store_true",
                   help="close each month's chargeback file once it has ended (+ grace); needs the writer lock")
    setting_flags(s, settings, "--lake", "--warehouse", "--s3-endpoint", "--lake-metadata", "--cache-dir",
                  "--lake-refresh", "--lake-raw-days")
    setting_flags(s, settings, "--close-grace-hours", "--tls-certfile", "--tls-keyfile", "--audit-dir",
                  "--audit-retention-days")
    s.add_argument("--no-auth", action="store_true",
                   help="serve every route without a token, as admin (local development only; never expose it)")
    add_metrics_port(s, "the API's")

    k = add_command(
        sub, "token", token,
        help="create, list or revoke API tokens",
        description="API tokens for `gpuledger serve`. Roles: admin (every tenant), tenant (one tenant, on every "
        "route), finance (exports and showback). The token is printed once; only its SHA-256 is stored. Writes "
        "the database, so run it where no other writer (ingest) holds the file. With --lake CATALOG_URI the tokens "
        "are kept in the lake's metadata database (the catalog's, or --lake-metadata) instead, where every "
        "`serve --lake` replica checks them.\n\n"
        "  gpuledger token create --role tenant --tenant nlp --name nlp-grafana\n"
        "  gpuledger token list\n"
        "  gpuledger token revoke 1a2b3c4d",
    )
    k.add_argument("action", choices=["create", "list", "revoke"], help="what to do")
    k.add_argument("token_id", nargs="?", metavar="ID", help="token id to revoke (from `token list`)")
    k.add_argument("--role", choices=["admin", "tenant", "finance"], help="role of a new token")
    k.add_argument("--tenant", help="tenant of a --role tenant token")
    k.add_argument("--name", help="a label for the new token (e.g. who holds it)")
    setting_flags(k, settings, "--db", "--lake", "--lake-metadata")


def serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from gpuledger.analytics.focus import ExportContext
    from gpuledger.api.app import create_app
    from gpuledger.api.serving import audit_log, tls_options

    lake = lake_config(settings)
    free_to_serve(settings.api_host, settings.api_port)
    replica: LakeReplica | None = None
    if lake is not None:
        if args.close_months:
            raise GpuledgerError("--close-months closes the DuckDB file's months, not the lake's",
                                 hint="close a lake month with `gpuledger export chargeback --lake ... --final` "
                                 "(a CronJob), from one place")
        replica = _lake_replica(settings, lake)
        db = str(replica.path)
    else:
        db = existing_db(settings.db_path)
    book, context = price_book(settings.prices_path), ExportContext.from_settings(settings)
    tls = tls_options(settings)  # a half-set or missing TLS file fails here, before anything runs
    from gpuledger.analytics import economics as econ

    rates = econ.load_cloud_rates(settings.cloud_rates_path) if settings.cloud_rates_path else econ.default_cloud_rates()
    pools = econ.load_node_pools(settings.node_pools_path) if settings.node_pools_path else econ.NodePools()
    from gpuledger.analytics.budgets import load_budgets
    from gpuledger.analytics.work_units import load_work_units

    budgets = load_budgets(settings.budgets_path) if settings.budgets_path else None
    from gpuledger.analytics.queues import load_queues

    units = load_work_units(settings.work_units_path) if settings.work_units_path else None
    queues = load_queues(settings.queues_path) if settings.queues_path else None
    registry = metrics_registry(args.own_metrics_port, settings.metrics_host)
    metrics = None
    if registry is not None:
        from gpuledger.api.metrics import ApiMetrics

        metrics = ApiMetrics(registry)
    lake_args: dict[str, Any] = {}
    if replica is not None:
        from gpuledger.store.lake.meta import SqlMetadata, SqlTokens

        assert isinstance(replica.meta, SqlMetadata)
        lake_args = {"tokens": SqlTokens(replica.meta.engine), "token_version": replica.meta.token_version,
                     "health": replica.health}
        if registry is not None:
            from gpuledger.api.metrics import LakeSnapshotAge

            registry.register(LakeSnapshotAge(replica.age_s))
        replica.start()
    app = create_app(db, prices=book, auth=not args.no_auth, export_context=context, audit=audit_log(settings),
                     cloud_rates=rates, node_pools=pools, budgets=budgets, work_units=units, queues=queues,
                     metrics=metrics, **lake_args)
    if args.close_months:  # the scheduled monthly close (docs/chargeback.md)
        from gpuledger.analytics.export_cmd import MonthCloser

        MonthCloser(db, book, context, settings.close_grace_hours).start()
    scheme = "https" if tls else "http"
    print(f"gpuledger API on {scheme}://{settings.api_host}:{settings.api_port}/  (OpenAPI: /docs)")
    if args.no_auth:
        print("warning: --no-auth: every request is served as admin; for local development only", file=sys.stderr)
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="warning",
                ssl_certfile=tls.get("ssl_certfile"), ssl_keyfile=tls.get("ssl_keyfile"))
    return 0


def _lake_replica(settings: Settings, lake: LakeConfig) -> LakeReplica:
    """The replica's first sync: the lake unreachable now is an error (later, the last copy is served)."""
    from gpuledger.store.lake import LakeStore, LakeUnavailable
    from gpuledger.store.lake.replica import LakeReplica

    try:
        replica = LakeReplica(LakeStore(lake), lake_metadata(settings, lake), settings.lake_cache_dir,
                              refresh_s=settings.lake_refresh_s, raw_days=settings.lake_raw_days)
        replica.sync()
    except LakeUnavailable as exc:
        raise GpuledgerError(f"cannot serve from the lake: {exc}",
                             hint="check --lake (the catalog URI), --warehouse, and that the catalog database and "
                             "the object store answer from here (S3: --s3-endpoint, AWS_ACCESS_KEY_ID, "
                             "AWS_SECRET_ACCESS_KEY); GPULEDGER_LAKE_UNAVAILABLE_S sets how long to retry") from None
    return replica


def token(args: argparse.Namespace, settings: Settings) -> int:
    """Token commands work on the token file beside the database (``<db>.tokens``, gpuledger.api.tokens):
    never on the DuckDB file, so they never wait for ingest's writer lock. Tokens made before the token
    file existed (the database's own ``api_tokens``) are listed and revoked too: read when the database
    is free, and revoked by a record in the token file either way."""
    import polars as pl

    from gpuledger.api import tokens

    if settings.lake_catalog_uri or settings.lake_metadata_uri:
        return _lake_token(args, settings)
    db = existing_db(settings.db_path)
    if args.action == "create":
        if not args.role:
            raise GpuledgerError("token create needs --role", hint="--role admin|tenant|finance [--tenant T]")
        with tokens.TokenStore(tokens.token_path(db)) as side:
            token_id, secret = tokens.create_token(side, args.role, args.tenant, args.name)
        scope = f" for tenant {args.tenant}" if args.tenant else ""
        print(f"created {args.role} token {token_id}{scope}; it is shown only now:", file=sys.stderr)
        print(secret)
        return 0
    if args.action == "list":
        with tokens.TokenStore(tokens.token_path(db)) as side:
            frame = tokens.list_tokens(side)
            revoked = side.query("SELECT id, revoked_at_ns FROM revoked_elsewhere")
        older = _database_tokens(db)
        if older is None:
            print("note: the database is busy (a writer holds it): tokens made before the token file are not "
                  "listed; retry between ingest flushes", file=sys.stderr)
        elif not older.is_empty():
            frame = pl.concat([frame, _revoked_by(older, revoked)])
        for r in frame.iter_rows(named=True):
            state = f"revoked {r['revoked_at']:%Y-%m-%d %H:%M}" if r["revoked_at"] else "active"
            print(f"{r['id']}  {r['role']:<8} {r['tenant'] or '-':<16} {r['name'] or '-':<20} "
                  f"created {r['created_at']:%Y-%m-%d %H:%M}  {state}")
        return 0
    if not args.token_id:
        raise GpuledgerError("token revoke needs the token id", hint="`gpuledger token list` shows the ids")

    def in_database(token_id: str) -> bool | None:
        older = _database_tokens(db)
        if older is None:
            print("note: the database is busy, so this id could not be checked there; the revocation is "
                  "recorded and applies if such a token exists", file=sys.stderr)
            return None
        row = older.filter(pl.col("id") == token_id)
        return bool(row.height) and row["revoked_at"][0] is None

    with tokens.TokenStore(tokens.token_path(db)) as side:
        tokens.revoke_token(side, args.token_id, elsewhere=in_database)
    print(f"revoked {args.token_id[:12]}", file=sys.stderr)
    return 0


def _lake_token(args: argparse.Namespace, settings: Settings) -> int:
    """``token`` on the lake's metadata database (no older in-file tokens there)."""
    from gpuledger.api import tokens
    from gpuledger.store.lake.meta import SqlMetadata

    meta = SqlMetadata(settings.lake_metadata_uri or str(settings.lake_catalog_uri))
    try:
        with meta.tokens() as sql:
            if args.action == "create":
                if not args.role:
                    raise GpuledgerError("token create needs --role", hint="--role admin|tenant|finance [--tenant T]")
                token_id, secret = tokens.create_token(sql, args.role, args.tenant, args.name)
                scope = f" for tenant {args.tenant}" if args.tenant else ""
                print(f"created {args.role} token {token_id}{scope} in the lake's metadata; it is shown only now:",
                      file=sys.stderr)
                print(secret)
            elif args.action == "list":
                for r in tokens.list_tokens(sql).iter_rows(named=True):
                    state = f"revoked {r['revoked_at']:%Y-%m-%d %H:%M}" if r["revoked_at"] else "active"
                    print(f"{r['id']}  {r['role']:<8} {r['tenant'] or '-':<16} {r['name'] or '-':<20} "
                          f"created {r['created_at']:%Y-%m-%d %H:%M}  {state}")
            else:
                if not args.token_id:
                    raise GpuledgerError("token revoke needs the token id", hint="`gpuledger token list` shows the ids")
                tokens.revoke_token(sql, args.token_id)
                print(f"revoked {args.token_id[:12]}", file=sys.stderr)
    finally:
        meta.close()
    return 0


def _database_tokens(db: str) -> pl.DataFrame | None:
    """Tokens in the database's own table (made before the token file), or None when a writer holds it."""
    import polars as pl

    from gpuledger.api import tokens
    from gpuledger.errors import StoreLocked
    from gpuledger.store import Store

    try:
        with Store(db, read_only=True) as store:
            if not store.has_table("api_tokens"):
                return pl.DataFrame()
            return tokens.list_tokens(store)
    except StoreLocked:
        return None


def _revoked_by(older: pl.DataFrame, revoked: pl.DataFrame) -> pl.DataFrame:
    """The database's tokens with the revocations recorded in the token file applied."""
    import polars as pl

    stamp = revoked.select("id", r=pl.from_epoch(pl.col("revoked_at_ns") // 1000, time_unit="us"))
    return older.join(stamp, on="id", how="left").with_columns(
        revoked_at=pl.coalesce("revoked_at", "r")).drop("r")
