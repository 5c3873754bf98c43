"""A Store and another file: a compacted copy of the database.

Called through :class:`gpuledger.store.Store` (``compact_into``); everything here goes through the Store's methods, so
DuckDB's errors arrive already translated (``StoreLocked`` and the like).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gpuledger.errors import StoreError

if TYPE_CHECKING:
    from gpuledger.store.duck import Store

__all__ = ["compact_into"]


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
