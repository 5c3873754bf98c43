"""DuckDB storage: one file of gpuledger's tables, and the only package that imports ``duckdb``.

- :mod:`~gpuledger.store.schema`: every table's DDL (the one place to read the schema);
- :mod:`~gpuledger.store.migrations`: numbered migrations, applied once per file on a writable open;
- :mod:`~gpuledger.store.duck`: :class:`Store`, the connection and the translation of DuckDB's errors
  (``duck`` is the only module that imports ``duckdb``);
- :mod:`~gpuledger.store.arrow`: decoded wire messages to Arrow tables (:func:`batch_to_arrow`);
- :mod:`~gpuledger.store.files`: a compacted copy of the database;
- :mod:`~gpuledger.store.protocol`: :class:`RawWriter`, the seam ingest writes through (the file, the lake);
- :mod:`~gpuledger.store.metadata`: the small-metadata seam (tokens, closed months): the token file
  (:class:`~gpuledger.store.metadata.TokenStore`) and the file's close tables, or the lake's SQL database;
- :mod:`~gpuledger.store.lake`: the lake store, Apache Iceberg tables (optional extra; docs/lake.md).

Who writes and how readers read: docs/storage.md.
"""

from __future__ import annotations

from gpuledger.store.arrow import batch_to_arrow
from gpuledger.store.duck import DeadLetter, Store, configure
from gpuledger.store.migrations import MIGRATIONS, Migration
from gpuledger.store.protocol import RawWriter
from gpuledger.store.schema import INGEST_TABLES, NEW_DEAD_LETTER, PODS_LATEST_WINS, TABLES
from gpuledger.timeutil import HOUR_NS  # re-exported for callers written before gpuledger.timeutil (its home)

__all__ = [
    "configure",
    "HOUR_NS",
    "INGEST_TABLES",
    "MIGRATIONS",
    "NEW_DEAD_LETTER",
    "PODS_LATEST_WINS",
    "TABLES",
    "DeadLetter",
    "Migration",
    "RawWriter",
    "Store",
    "batch_to_arrow",
]
