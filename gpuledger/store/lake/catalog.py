"""Where the lake is: the Iceberg catalog and the warehouse, and what their failures mean.

The catalog is pyiceberg's SQL catalog -- a SQLite file on one machine
(``sqlite:////data/lake/catalog.db``) or PostgreSQL in production
(``postgresql+psycopg://user:pass@host:5432/db``) -- or a REST catalog
(``http(s)://...``). The warehouse is a local directory or an S3 URI
(``s3://bucket/prefix``); for S3-compatible storage other than AWS give
its endpoint (``s3_endpoint``, e.g. MinIO's ``http://minio:9000``);
credentials come from the usual AWS environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``). A REST
catalog's own settings (``token``, ``prefix``, ``credential``...) come from
pyiceberg's variables for the catalog named ``gpuledger``
(``PYICEBERG_CATALOG__GPULEDGER__TOKEN``, ``PYICEBERG_CATALOG__GPULEDGER__PREFIX``).

:func:`transient` tells which exceptions mean "the catalog or the object
store did not answer" (retried with backoff by the writer, then a
``LakeUnavailable`` with a hint); everything else is a bug or a refusal and
propagates at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import CommitFailedException, NamespaceAlreadyExistsError
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from gpuledger.errors import StoreError

__all__ = ["LakeConfig", "LakeUnavailable", "open_catalog", "transient"]


class LakeUnavailable(StoreError):
    """The catalog database or the object store cannot be reached (after retrying)."""

    hint = ("check --lake (the catalog URI) and --warehouse, that the database and the object store answer from "
            "here, and the S3 endpoint and credentials (GPULEDGER_LAKE_S3_ENDPOINT, AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY); nothing was committed to Kafka, so the records come again once it is back")


@dataclass(frozen=True)
class LakeConfig:
    """One lake: ``catalog_uri`` (SQL or REST), ``warehouse`` (a directory or ``s3://bucket/prefix``)."""

    catalog_uri: str
    warehouse: str
    namespace: str = "gpuledger"
    s3_endpoint: str | None = None
    catalog_name: str = "gpuledger"
    #: how long a writer retries (doubling pauses) a catalog or object store that does not answer
    unavailable_s: float = 60.0

    def properties(self) -> dict[str, str]:
        """pyiceberg catalog properties."""
        warehouse = self.warehouse
        if "://" not in warehouse:  # a local directory: an absolute file URI
            Path(warehouse).mkdir(parents=True, exist_ok=True)
            warehouse = Path(warehouse).resolve().as_uri()
        props = {"uri": self.catalog_uri, "warehouse": warehouse}
        if self.catalog_uri.startswith(("http://", "https://")):
            props["type"] = "rest"
        else:
            props["type"] = "sql"
            props["init_catalog_tables"] = "true"
            props["pool_pre_ping"] = "true"  # a restarted PostgreSQL costs one retry, not the worker
        if self.s3_endpoint:
            props["s3.endpoint"] = self.s3_endpoint
            props["s3.force-virtual-addressing"] = "false"  # path-style: MinIO, moto, Ceph
        # Anything else pyiceberg's catalog takes (a REST catalog's token, prefix, credential, scope...), named as
        # pyiceberg names it in the environment: PYICEBERG_CATALOG__GPULEDGER__TOKEN -> token,
        # ..._S3__REGION -> s3.region. Read here, at open, not once when pyiceberg is imported.
        head = f"PYICEBERG_CATALOG__{self.catalog_name.upper()}__"
        for env, value in sorted(os.environ.items()):
            if env.startswith(head) and value:
                props.setdefault(env[len(head):].lower().replace("__", ".").replace("_", "-"), value)
        for env, key in (("AWS_ACCESS_KEY_ID", "s3.access-key-id"), ("AWS_SECRET_ACCESS_KEY", "s3.secret-access-key"),
                         ("AWS_REGION", "s3.region"), ("AWS_DEFAULT_REGION", "s3.region")):
            if os.environ.get(env) and key not in props:
                props[key] = os.environ[env]
        return props


def open_catalog(config: LakeConfig) -> Catalog:
    """The catalog, with gpuledger's namespace created if missing; ``LakeUnavailable`` if it does not answer."""
    try:
        catalog = load_catalog(config.catalog_name, **config.properties())
        try:
            catalog.create_namespace(config.namespace)
        except NamespaceAlreadyExistsError:
            pass
        return catalog
    except Exception as exc:
        if transient(exc):
            raise LakeUnavailable(f"lake catalog {_redacted(config.catalog_uri)} unreachable: {_first_line(exc)}") from exc
        raise


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` means the catalog database or object store did not answer (worth retrying)."""
    if isinstance(exc, CommitFailedException):
        return False  # a conflict: handled by the writer (refresh, re-check, retry), not a failure to reach
    if isinstance(exc, DBAPIError | SQLAlchemyError):
        return True
    if isinstance(exc, OSError | ConnectionError | TimeoutError):
        return True  # pyarrow's S3 and local file errors are OSError
    name = type(exc).__name__
    return name in ("ServerError", "ServiceUnavailableError", "ConnectError", "ConnectTimeout")  # REST catalog


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _redacted(uri: str) -> str:
    """A catalog URI without its password (``user:secret@host`` -> ``user:***@host``)."""
    head, sep, tail = uri.partition("://")
    if not sep or "@" not in tail:
        return uri
    creds, at, rest = tail.partition("@")
    user = creds.split(":", 1)[0]
    return f"{head}://{user}:***@{rest}" if ":" in creds else uri
