"""The lake's small metadata: tokens and closed months in the catalog's SQL database (SQLAlchemy).

The same database as pyiceberg's SQL catalog (SQLite on one machine,
PostgreSQL in production), in tables of its own, created if missing:

- ``gpuledger_api_tokens``: id, SHA-256 of the secret (never the secret),
  role, tenant, name, created/revoked (ns);
- ``gpuledger_chargeback_closes``: one row per closed month, the CSV and
  Parquet bytes as closed, their SHA-256, totals and inputs;
- ``gpuledger_chargeback_billed``: every billed row of every close (the
  close's own rows and its corrections of earlier months).

A token created through one API replica is in this database at once, and the
other replicas check every presented token here (one indexed row read; no
cache), so it is accepted -- or, revoked, refused -- at their next request.
None of it waits for ingest or attribution: they commit to the Iceberg tables,
not to these. A close inserts its ``closes`` row and its billed rows in one
transaction; the month is the primary key, so of two closers racing on a month
one wins and the other gets :class:`~gpuledger.store.metadata.MonthAlreadyClosed`.

A REST catalog has no SQL database here: its metadata then needs a database of
its own (``--lake-metadata``), see docs/lake.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import polars as pl
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from gpuledger.errors import StoreError
from gpuledger.store.lake.catalog import LakeUnavailable, _redacted
from gpuledger.store.metadata import MonthAlreadyClosed, TokenSql, token_frame

__all__ = ["PREFIX", "SqlMetadata", "SqlTokens"]

PREFIX = "gpuledger_"
_TABLES = MetaData()
TOKENS = Table(f"{PREFIX}api_tokens", _TABLES,
               Column("id", String(16), primary_key=True), Column("secret_sha256", String(64), nullable=False),
               Column("role", String(16), nullable=False), Column("tenant", Text), Column("name", Text),
               Column("created_at_ns", BigInteger, nullable=False), Column("revoked_at_ns", BigInteger))
CLOSES = Table(f"{PREFIX}chargeback_closes", _TABLES,
               Column("month", String(7), primary_key=True), Column("closed_at_us", BigInteger, nullable=False),
               *(Column(c, Text, nullable=False) for c in ("charge_period", "currency", "fleet_cost", "regular_total",
                                                            "corrections_total", "billed_total")),
               Column("n_rows", Integer, nullable=False), Column("csv", LargeBinary, nullable=False),
               Column("csv_sha256", String(64), nullable=False), Column("parquet", LargeBinary, nullable=False),
               Column("parquet_sha256", String(64), nullable=False), Column("inputs", Text, nullable=False))
_BILLED_TEXT = ("billing_month", "usage_month", "charge_class", "charge_start", "charge_end", "tenant", "model",
                "profile", "line_kind", "entry_id", "unit", "unit_price")
_BILLED_TAIL = ("sharing", "cost", "quantity", "used_h", "idle_h", "unmeasured_h", "unallocated_h", "energy_kwh",
                "cluster")
BILLED = Table(f"{PREFIX}chargeback_billed", _TABLES,
               Column("row_id", Integer, primary_key=True, autoincrement=True),
               *(Column(c, Text, nullable=c in ("charge_class",)) for c in _BILLED_TEXT),
               Column("is_default", Boolean, nullable=False),
               *(Column(c, Text, nullable=c not in ("cost", "quantity")) for c in _BILLED_TAIL))
#: The DuckDB ``chargeback_billed`` columns, in its order (``store/schema.py``).
BILLED_COLUMNS = (*_BILLED_TEXT, "is_default", *_BILLED_TAIL)
_TOKEN_TABLES = {"api_tokens": TOKENS.name}


class SqlMetadata:
    """Tokens and closes in the SQL database at ``uri`` (SQLAlchemy URL; the catalog's own)."""

    def __init__(self, uri: str) -> None:
        if uri.startswith(("http://", "https://")):
            raise StoreError(f"the lake's metadata needs a SQL database, and {uri} is a REST catalog",
                             hint="pass --lake-metadata postgresql+psycopg://... (or sqlite:///...): where tokens "
                             "and closed months are kept")
        self.uri = uri
        try:
            self.engine: Engine = create_engine(uri, pool_pre_ping=True)
            _TABLES.create_all(self.engine)  # CREATE TABLE IF NOT EXISTS, each
        except SQLAlchemyError as exc:
            raise LakeUnavailable(f"lake metadata database {_redacted(uri)} unreachable: "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc

    @contextmanager
    def tokens(self) -> Iterator[TokenSql]:
        yield SqlTokens(self.engine)

    def closes(self) -> pl.DataFrame:
        with self._connect() as con:
            rows = con.execute(select(CLOSES).order_by(CLOSES.c.month)).mappings().all()
        frame = pl.DataFrame([dict(r) for r in rows], schema={c.name: _polars(c) for c in CLOSES.columns})
        return frame.with_columns(closed_at=pl.from_epoch("closed_at_us", time_unit="us").dt.replace_time_zone("UTC")
                                  ).drop("closed_at_us")

    def billed(self) -> pl.DataFrame:
        with self._connect() as con:
            rows = con.execute(select(*(BILLED.c[c] for c in BILLED_COLUMNS)).order_by(BILLED.c.row_id)).all()
        return pl.DataFrame([tuple(r) for r in rows], orient="row",
                            schema={c: pl.Boolean if c == "is_default" else pl.String for c in BILLED_COLUMNS})

    def record_close(self, close: pl.DataFrame, billed: pl.DataFrame) -> None:
        rows = close.with_columns(closed_at_us=pl.col("closed_at").dt.epoch("us")).drop("closed_at").to_dicts()
        try:
            with self.engine.begin() as con:
                con.execute(CLOSES.insert(), rows)
                if billed.height:
                    con.execute(BILLED.insert(), billed.select(BILLED_COLUMNS).to_dicts())
        except IntegrityError as exc:
            months = ", ".join(r["month"] for r in rows)
            raise MonthAlreadyClosed(f"month {months} is closed already (another close recorded it first)") from exc
        except SQLAlchemyError as exc:
            raise LakeUnavailable(f"recording the close of {[r['month'] for r in rows]} failed: "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc

    def token_version(self) -> tuple[int, ...]:
        """The token table's state (tokens, newest creation, revocations, newest revocation): it changes with
        every create and revoke, so the API's caches (keyed by it) miss at the next request after one."""
        from sqlalchemy import func

        with self._connect() as con:
            row = con.execute(select(func.count(), func.max(TOKENS.c.created_at_ns), func.count(TOKENS.c.revoked_at_ns),
                                     func.max(TOKENS.c.revoked_at_ns))).one()
        return tuple(int(v or 0) for v in row)

    def closed(self) -> set[str]:
        """The closed months."""
        with self._connect() as con:
            return {r[0] for r in con.execute(select(CLOSES.c.month))}

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        try:
            with self.engine.connect() as con:
                yield con
        except SQLAlchemyError as exc:
            raise LakeUnavailable(f"lake metadata database {_redacted(self.uri)}: "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc


def _polars(column: Column[Any]) -> Any:
    kind = column.type
    if isinstance(kind, LargeBinary):
        return pl.Binary
    if isinstance(kind, BigInteger | Integer):
        return pl.Int64
    return pl.String


class SqlTokens:
    """The :class:`~gpuledger.store.metadata.TokenSql` surface over ``gpuledger_api_tokens``.

    ``gpuledger.api.tokens`` writes its token SQL once, with ``?`` parameters
    and the table name ``api_tokens``; here each ``?`` becomes a bound
    parameter and the name the prefixed table's. There is no
    ``revoked_elsewhere`` (no older in-file tokens in the lake).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        statement, bound = _translate(sql, params)
        try:
            with self.engine.begin() as con:
                con.execute(statement, bound)
        except SQLAlchemyError as exc:
            raise LakeUnavailable(f"token table: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        statement, bound = _translate(sql, params)
        try:
            with self.engine.connect() as con:
                result = con.execute(statement, bound)
                return token_frame(list(result.keys()), result.all())
        except SQLAlchemyError as exc:
            raise LakeUnavailable(f"token table: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        frame = self.query(sql, params)
        return None if frame.is_empty() else frame.row(0)[0]

    def has_table(self, name: str) -> bool:
        return name in _TOKEN_TABLES


def _translate(sql: str, params: Sequence[Any] | None) -> tuple[Any, dict[str, Any]]:
    """``?`` parameters to named ones, ``api_tokens`` to the prefixed table."""
    values = list(params or [])
    counter = iter(range(len(values)))
    named = re.sub(r"\?", lambda _: f":p{next(counter)}", sql)
    for plain, prefixed in _TOKEN_TABLES.items():
        named = re.sub(rf"\b{plain}\b", prefixed, named)
    return text(named), {f"p{i}": v for i, v in enumerate(values)}
