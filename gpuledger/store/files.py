"""A Store and other files: a compacted copy, absorbing a worker's file, views over Parquet segments.

Called through :class:`gpuledger.store.Store` (``compact_into``, ``absorb``,
``open_segments``); everything here goes through the Store's methods, so
DuckDB's errors arrive already translated (``StoreLocked`` and the like).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gpuledger import wire
from gpuledger.errors import StoreError
from gpuledger.store.schema import NEW_DEAD_LETTER, PODS_LATEST_WINS

if TYPE_CHECKING:
    from gpuledger.store.duck import Store

__all__ = ["absorb", "compact_into", "segment_views"]


def compact_into(store: Store, dest: Path, storage_version: str = "latest") -> int:
    """Copy the whole database into a new file, freshly laid out; returns its size in bytes.

    Ingest appends in many small transactions, which leaves partly filled
    row groups and free blocks behind; a copy rewrites every table in full
    row groups with the newest storage format's compression
    (``storage_version``: files in 'latest' need a DuckDB at least as new
    to read them). Maintenance for a closed month or before archiving:
    write the copy, stop writers, swap the files. The copy keeps
    ``schema_migrations``: it has the same schema.
    """
    if dest.exists():
        raise StoreError(f"{dest} exists", hint="compact into a new path, then swap the files")
    try:
        store.execute(f"ATTACH ? AS _compact (STORAGE_VERSION '{storage_version}')", [str(dest)])
        try:
            store.execute(f"COPY FROM DATABASE {store.database_name()} TO _compact")
        finally:
            store.execute("DETACH _compact")
    except StoreError as exc:
        raise type(exc)(f"compacting into {dest} failed: {exc}", hint=exc.hint) from exc
    return dest.stat().st_size


def absorb(store: Store, path: Path) -> int:
    """Copy in what another gpuledger file holds and this one lacks; returns new messages.

    The merge step of N ingest workers (one DuckDB file each): idempotent
    on (agent_id, boot_id, seq) like ingest itself, so a message both a
    dead worker and its successor stored (stored, not yet committed, then
    redelivered) is kept once, and absorbing the same file twice changes
    nothing. Dead letters merge on (topic, partition, offset); pods by
    latest seen. The other file is attached read-only: its worker must not
    hold it at that moment (workers release their file between flushes).
    """
    try:
        store.execute("ATTACH ? AS _w (READ_ONLY)", [str(path)])
    except StoreError as exc:
        raise type(exc)(f"cannot attach {path}: {exc}",
                        hint="is a worker holding it (--hold-db)? it is free between flushes") from exc
    try:
        with store.transaction() as tx:
            tx.execute("CREATE TEMP TABLE _new AS SELECT agent_id, boot_id, seq FROM _w.messages "
                       "ANTI JOIN messages USING (agent_id, boot_id, seq)")
            added = int(tx.scalar("SELECT count(*) FROM _new"))
            tx.execute("INSERT INTO messages BY NAME SELECT * FROM _w.messages "
                       "SEMI JOIN _new USING (agent_id, boot_id, seq)")
            for name in wire.RECORD_TABLES:
                tx.execute(f"INSERT INTO {name} BY NAME SELECT * FROM _w.{name} "
                           "SEMI JOIN _new USING (agent_id, boot_id, seq)")
            tx.execute(f"INSERT INTO pods BY NAME SELECT * FROM _w.pods {PODS_LATEST_WINS}")
            tx.execute(f"INSERT INTO dead_letters BY NAME SELECT * FROM _w.dead_letters d WHERE {NEW_DEAD_LETTER}")
            tx.execute("DROP TABLE _new")
    except StoreError as exc:
        raise type(exc)(f"merging {path} failed: {exc}", hint=exc.hint) from exc
    finally:
        store.execute("DETACH _w")
    return added


def segment_views(store: Store, root: Path) -> None:
    """Turn an in-memory store's raw tables into views over Parquet segments under ``root``
    (``ingest.segments`` layout), queried in place.

    Per message key the rows of one segment only are visible (the lowest
    segment id), so a batch two workers both wrote counts once; ``pods``
    shows each pod as last seen; ``dead_letters`` each record once. The
    ``day`` partition directories prune scans filtered on time. Tables
    without segments stay empty; ``ledger`` and ``attributed`` are
    ordinary (in-memory) tables.
    """

    def files(name: str) -> str | None:
        return f"{root}/{name}/*/*.parquet" if any((root / name).glob("*/*.parquet")) else None

    def src(name: str) -> str:
        return f"read_parquet('{files(name)}', hive_partitioning = true, union_by_name = true)"

    try:
        if files("messages"):
            store.execute(f"CREATE VIEW _seg_messages AS SELECT * FROM {src('messages')}")
            store.execute("CREATE VIEW _chosen AS SELECT agent_id, boot_id, seq, min(seg) AS seg "
                          "FROM _seg_messages GROUP BY ALL")
            cols = _columns(store, "messages", "_seg_messages")  # older segments lack newer columns
            store.execute("DROP TABLE messages")
            store.execute(f"CREATE VIEW messages AS SELECT {cols} FROM _seg_messages m "
                          "SEMI JOIN _chosen USING (agent_id, boot_id, seq, seg)")
            for name in wire.RECORD_TABLES:
                if files(name):
                    cols = _columns(store, name, src(name))
                    store.execute(f"DROP TABLE {name}")
                    store.execute(f"CREATE VIEW {name} AS SELECT {cols} FROM {src(name)} t "
                                  "SEMI JOIN _chosen USING (agent_id, boot_id, seq, seg)")
        if files("pods"):
            found = set(store.query(f"DESCRIBE SELECT * FROM {src('pods')}")["column_name"])
            cluster = "arg_max(cluster, last_seen_ns)" if "cluster" in found else "NULL::VARCHAR"  # older segments
            store.execute("DROP TABLE pods")
            store.execute("CREATE VIEW pods AS SELECT pod_uid, arg_max(namespace, last_seen_ns) AS namespace, "
                          "arg_max(name, last_seen_ns) AS name, arg_max(labels, last_seen_ns)::JSON AS labels, "
                          f"max(last_seen_ns) AS last_seen_ns, {cluster} AS cluster FROM {src('pods')} "
                          "GROUP BY pod_uid")
        if files("dead_letters"):
            store.execute("DROP TABLE dead_letters")
            store.execute('CREATE VIEW dead_letters AS SELECT topic, partition, "offset", reason, payload, size_bytes, '
                          "to_timestamp(interval_start_ns / 1e9) AS received_at "
                          f"FROM {src('dead_letters')} QUALIFY row_number() OVER "
                          '(PARTITION BY topic, partition, "offset" ORDER BY seg) = 1')
    except StoreError as exc:
        raise type(exc)(f"cannot read segments under {root}: {exc}",
                        hint="is it a gpuledger segment directory (ingest --segments)?") from exc


def _columns(store: Store, table: str, source: str) -> str:
    """A SELECT list giving ``source``'s rows the table's columns in order (NULL for columns it lacks)."""
    cols = store.query("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? "
                       "ORDER BY column_index", [table]).rows()
    found = set(store.query(f"DESCRIBE SELECT * FROM {source}")["column_name"])
    return ", ".join(f'"{c}"' if c in found else f'NULL::{t} AS "{c}"' for c, t in cols)
