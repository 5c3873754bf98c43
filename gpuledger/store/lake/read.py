"""Reading the lake: Iceberg scans to Arrow, and a DuckDB file materialised from them.

DuckDB 2.x cannot load its iceberg/httpfs extensions here, so the lake is
read through pyiceberg (which plans the scan from the catalog's metadata,
prunes partitions and files, and reads Parquet with pyarrow) into Arrow, and
DuckDB queries the Arrow tables. :func:`materialize` copies the lake's raw
tables into a gpuledger DuckDB file -- the shape ``gpuledger attribute`` and
the API read today -- idempotently (a message the file has is not copied
again), so the existing attribution job runs on the lake's data unchanged.

Only *complete* messages are copied: a message whose key is in the lake's
``messages`` table (the writer commits it last, after the message's rows in
every other table).
"""

from __future__ import annotations

import pyarrow as pa
from pyiceberg.expressions import AlwaysTrue, BooleanExpression

from gpuledger.store.duck import Store
from gpuledger.store.lake.schema import KEYED
from gpuledger.store.lake.writer import LakeStore
from gpuledger.store.schema import NEW_DEAD_LETTER, PODS_LATEST_WINS

__all__ = ["materialize", "scan"]

_KEY = '"agent_id", "boot_id", "seq"'


def scan(lake: LakeStore, table: str, row_filter: BooleanExpression | None = None) -> pa.Table:
    """The rows of lake table ``table`` (optionally filtered, e.g. by ``interval_start_ns``) as one Arrow table."""
    current = lake.table(table).refresh()
    return current.scan(row_filter=row_filter or AlwaysTrue()).to_arrow()


def materialize(lake: LakeStore, store: Store, row_filter: BooleanExpression | None = None) -> int:
    """Copy the lake's complete messages (and their rows, pods, dead letters) that ``store`` lacks; returns
    the messages copied. ``row_filter`` (on ``interval_start_ns``, say) narrows the messages read."""
    messages = scan(lake, "messages", row_filter)
    if messages.num_rows:
        keys = messages.select(["agent_id", "boot_id", "seq"])
        with store.transaction() as tx, tx.registered(_lake_keys=keys):
            tx.execute("CREATE TEMP TABLE _new_keys AS SELECT DISTINCT k.* FROM _lake_keys k "
                       f"ANTI JOIN messages m USING ({_KEY})")
            try:
                for name in KEYED:
                    rows = messages if name == "messages" else scan(lake, name, row_filter)
                    if rows.num_rows == 0:
                        continue
                    cols = ", ".join(f'r."{c}"' for c in rows.column_names if c in _columns(tx, name))
                    with tx.registered(_lake_rows=rows):
                        tx.execute(f"INSERT INTO {name} ({cols.replace('r.', '')}) SELECT {cols} FROM _lake_rows r "
                                   f"SEMI JOIN _new_keys k USING ({_KEY})")
                copied = int(tx.scalar("SELECT count(*) FROM _new_keys"))
            finally:
                tx.execute("DROP TABLE IF EXISTS _new_keys")
    else:
        copied = 0
    pods = scan(lake, "pods")
    if pods.num_rows:
        with store.registered(_lake_pods=pods):
            cluster = "arg_max(cluster, last_seen_ns)" if "cluster" in pods.column_names else "NULL"
            store.execute("INSERT INTO pods SELECT pod_uid, arg_max(namespace, last_seen_ns), "
                          "arg_max(name, last_seen_ns), arg_max(labels, last_seen_ns), "
                          f"max(last_seen_ns), {cluster} FROM _lake_pods GROUP BY pod_uid {PODS_LATEST_WINS}")
    dead = scan(lake, "dead_letters")
    if dead.num_rows:
        with store.registered(_lake_dead=dead):
            # NEW_DEAD_LETTER keeps one per (topic, partition, offset); one without an origin is recognised by
            # what the lake stored of it (reason, bytes, the time it was received), so a second copy adds nothing.
            store.execute('INSERT INTO dead_letters SELECT d.topic, d.partition, d."offset", d.reason, d.payload, '
                          f"d.size_bytes, d.received_at FROM _lake_dead d WHERE {NEW_DEAD_LETTER} AND NOT EXISTS ("
                          "SELECT 1 FROM dead_letters x WHERE x.received_at = d.received_at AND x.reason = d.reason "
                          "AND x.payload IS NOT DISTINCT FROM d.payload)")
    return copied


def _columns(store: Store, table: str) -> set[str]:
    frame = store.query("SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [table])
    return set(frame["column_name"].to_list())
