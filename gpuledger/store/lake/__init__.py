"""The lake store: gpuledger's raw tables as Apache Iceberg tables (pyiceberg), for many ingest workers.

The embedded DuckDB file (:mod:`gpuledger.store.duck`) stays the default;
the lake is the path beyond one machine (docs/lake.md). This package is the
only one that imports ``pyiceberg`` and ``sqlalchemy`` (an optional extra:
``pip install gpuledger[lake]``).

- :mod:`~gpuledger.store.lake.schema`: Iceberg schemas and day partitions, derived from ``store/schema.py``;
- :mod:`~gpuledger.store.lake.catalog`: the catalog (SQLite/PostgreSQL/REST) and warehouse (directory/S3);
- :mod:`~gpuledger.store.lake.writer`: :class:`LakeStore`, ingest's idempotent, conflict-safe appends;
- :mod:`~gpuledger.store.lake.read`: scans to Arrow, and a DuckDB file materialised from the lake;
- :mod:`~gpuledger.store.lake.meta`: tokens and closed months in the catalog's SQL database (``SqlMetadata``);
- :mod:`~gpuledger.store.lake.replica`: an API replica's local copy of the lake (``LakeReplica``), and a month's
  bill read into a temporary DuckDB file (``month_store``);
- :mod:`~gpuledger.store.lake.migrate`: ``gpuledger migrate --to lake`` (``migrate_to_lake``).
"""

from __future__ import annotations

from gpuledger.store.lake.catalog import LakeConfig, LakeUnavailable, open_catalog
from gpuledger.store.lake.read import materialize, scan
from gpuledger.store.lake.schema import LAKE_TABLES, ROLLUP_TABLES, lake_schema, partition_spec
from gpuledger.store.lake.writer import LakeStore, evolve

__all__ = ["LAKE_TABLES", "ROLLUP_TABLES", "LakeConfig", "LakeStore", "LakeUnavailable", "evolve", "lake_schema", "materialize",
           "open_catalog", "partition_spec", "scan"]
