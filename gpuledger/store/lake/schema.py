"""Iceberg schemas and partition specs of the raw tables, derived from :mod:`gpuledger.store.schema`.

Nothing here lists a column: the DDL in ``store/schema.py`` is run in an
in-memory DuckDB (through :class:`gpuledger.store.Store`, migrations and
all) and its catalog (``duckdb_columns()``) is translated column by column.
A column added to ``schema.py`` (say ``cluster``) therefore appears in the
lake schema too; :func:`evolve` adds it to an existing Iceberg table as an
optional column (Iceberg's schema evolution, no rewrite of old files: old
rows read it as NULL).

Types: Iceberg has no unsigned integers. ``UBIGINT`` (``seq``) becomes
``long`` (a sequence number past 2^63 would not fit: the agent counts from 0
per boot); ``UINTEGER`` becomes ``long``, ``USMALLINT``/``UTINYINT``/
``SMALLINT`` become ``int``; ``JSON`` is a ``string``; ``TIMESTAMP WITH TIME
ZONE`` is ``timestamptz`` (microseconds). ``NOT NULL`` columns are required
fields.

Partitioning: the raw record tables and ``messages`` by UTC day of the
interval start. Iceberg's day transform needs a timestamp (``truncate``'s
width is a 32-bit int, far below a day of nanoseconds), so these tables carry
one column the DuckDB file does not: ``interval_start`` (timestamptz,
microseconds), equal to ``interval_start_ns`` / 1000, written by the lake
writer and partitioned by ``day(interval_start)`` -- also the column Spark,
Trino or Snowflake users filter on. ``dead_letters`` is partitioned by
``day(received_at)``; ``pods`` is small and unpartitioned.

The product tables (:data:`ROLLUP_TABLES`: the hourly ledger rollups the
bill and the API read, work units, Kueue's hourly series) carry one lake-only
column too, ``hour`` (timestamptz, microseconds, = ``hour_start_ns`` / 1000),
partitioned by ``month(hour)``: a month's close reads one partition.
"""

from __future__ import annotations

from functools import cache

from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform, MonthTransform
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DoubleType,
    IcebergType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

from gpuledger.store.schema import INGEST_TABLES

__all__ = ["DAY_COLUMN", "HOUR_COLUMN", "KEYED", "LAKE_TABLES", "ROLLUP_TABLES", "iceberg_type", "lake_schema",
           "partition_spec"]

#: The tables the lake holds: what ingest writes (messages, the wire's record tables, pods, dead letters).
LAKE_TABLES: tuple[str, ...] = INGEST_TABLES
#: Tables whose rows belong to one message, identified by (agent_id, boot_id, seq).
KEYED: tuple[str, ...] = tuple(t for t in INGEST_TABLES if t not in ("pods", "dead_letters"))

#: The products attribution and the importers write, keyed by ``hour_start_ns``: partitioned by month.
ROLLUP_TABLES: tuple[str, ...] = ("ledger_hourly", "work_units", "queue_hourly")
#: The lake-only column of the product tables: the hour start as a timestamp, their partition source.
HOUR_COLUMN = "hour"

#: The lake-only column of the keyed tables: the interval start as a timestamp, their partition source.
DAY_COLUMN = "interval_start"

_TYPES: dict[str, IcebergType] = {
    "VARCHAR": StringType(), "JSON": StringType(),
    "BIGINT": LongType(), "UBIGINT": LongType(), "UINTEGER": LongType(),
    "INTEGER": IntegerType(), "SMALLINT": IntegerType(), "USMALLINT": IntegerType(),
    "TINYINT": IntegerType(), "UTINYINT": IntegerType(),
    "DOUBLE": DoubleType(), "BOOLEAN": BooleanType(), "BLOB": BinaryType(),
    "TIMESTAMP WITH TIME ZONE": TimestamptzType(),
}


def iceberg_type(duckdb_type: str) -> IcebergType:
    """The Iceberg type a DuckDB column type is stored as; ValueError for one this module does not map."""
    try:
        return _TYPES[duckdb_type]
    except KeyError:
        raise ValueError(f"no Iceberg type for DuckDB type {duckdb_type} (add it to gpuledger/store/lake/schema.py)") from None


@cache
def _columns() -> dict[str, list[tuple[str, str, bool]]]:
    """table -> [(column, DuckDB type, nullable)] of the current DDL, in order."""
    from gpuledger.store.duck import Store

    with Store(":memory:") as store:
        frame = store.query(
            "SELECT table_name, column_name, data_type, is_nullable FROM duckdb_columns() "
            "WHERE table_name IN (SELECT unnest($1::VARCHAR[])) ORDER BY table_name, column_index",
            [[*LAKE_TABLES, *ROLLUP_TABLES]])
    out: dict[str, list[tuple[str, str, bool]]] = {t: [] for t in (*LAKE_TABLES, *ROLLUP_TABLES)}
    for table, column, kind, nullable in frame.iter_rows():
        out[table].append((column, kind, bool(nullable)))
    return out


def lake_schema(table: str) -> Schema:
    """The Iceberg schema of ``table`` (of :data:`LAKE_TABLES` or :data:`ROLLUP_TABLES`), field ids 1..n in DDL order."""
    fields = [NestedField(i, name, iceberg_type(kind), required=not nullable)
              for i, (name, kind, nullable) in enumerate(_columns()[table], 1)]
    if table in KEYED:
        fields.append(NestedField(len(fields) + 1, DAY_COLUMN, TimestamptzType(), required=True,
                                  doc="interval_start_ns as a timestamp (microseconds): the day partition's source"))
    if table in ROLLUP_TABLES:
        fields.append(NestedField(len(fields) + 1, HOUR_COLUMN, TimestamptzType(), required=True,
                                  doc="hour_start_ns as a timestamp (microseconds): the month partition's source"))
    return Schema(*fields)


def partition_spec(table: str, schema: Schema) -> PartitionSpec:
    """Day (raw) or month (products) partitions, see the module doc; ``schema`` gives the source field ids."""
    if table in KEYED:
        source = schema.find_field(DAY_COLUMN).field_id
        return PartitionSpec(PartitionField(source, 1000, DayTransform(), "day"))
    if table in ROLLUP_TABLES:
        source = schema.find_field(HOUR_COLUMN).field_id
        return PartitionSpec(PartitionField(source, 1000, MonthTransform(), "month"))
    if table == "dead_letters":
        source = schema.find_field("received_at").field_id
        return PartitionSpec(PartitionField(source, 1000, DayTransform(), "day"))
    return UNPARTITIONED_PARTITION_SPEC
