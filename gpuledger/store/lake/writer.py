"""Appending ingest's batches to the lake: idempotent, conflict-safe, one Iceberg commit per table per flush.

Iceberg commits one table at a time (pyiceberg's SQL catalog has no
multi-table transaction), so a flush is one commit per table, in this order:
the record tables (devices, processes, allocations, field_errors), pods, and
``messages`` last. Each commit is atomic for its table, and every table is
idempotent on its own: before appending, the writer reads which message keys
``(agent_id, boot_id, seq)`` that table already holds among the batch's
(one scan of the key columns, pruned to the batch's agents and day
partitions and by the data files' min/max statistics) and appends only the
rows of the others. So:

- a batch redelivered after a crash (stored, offsets not committed) adds
  nothing: every table already has those keys;
- a worker killed between two tables' commits leaves some tables with the
  batch and some without; the redelivered batch fills only the missing ones;
- two workers storing the same batch at once (a rebalance) race on each
  table's commit: Iceberg's optimistic concurrency (the SQL catalog swaps the
  metadata pointer only if it is still the one the writer started from)
  refuses the second; the writer then refreshes the table, checks the keys
  again -- the first writer's rows are now there -- and appends what is left
  (usually nothing). :class:`pyiceberg.exceptions.CommitFailedException` is
  retried that way up to ``conflict_retries`` times with jittered backoff
  (pyiceberg's own retry, which re-applies the same rows, is switched off).

``messages`` is committed last: a message whose key is in ``messages`` has
all its rows in every table (readers that want only complete messages join
on it; :func:`gpuledger.store.lake.read.materialize` does). Pods are kept as
history (one row per pod and ``last_seen_ns``; readers take the latest);
dead letters are idempotent on (topic, partition, offset) when all are known.

The catalog or the object store not answering is retried with doubling
pauses for ``LakeConfig.unavailable_s`` seconds, then raised as ``LakeUnavailable``:
the Ingestor then stops without committing offsets (docs/lake.md).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.expressions import And, BooleanExpression, GreaterThanOrEqual, In, LessThanOrEqual
from pyiceberg.table import Table

from gpuledger import wire
from gpuledger.errors import StoreError
from gpuledger.store.arrow import batch_to_arrow
from gpuledger.store.duck import DeadLetter
from gpuledger.store.lake.catalog import LakeConfig, LakeUnavailable, open_catalog, transient
from gpuledger.store.lake.schema import DAY_COLUMN, KEYED, LAKE_TABLES, lake_schema, partition_spec

log = logging.getLogger(__name__)

__all__ = ["TABLE_PROPERTIES", "LakeStore"]

T = TypeVar("T")
KEY = ("agent_id", "boot_id", "seq")
#: Set on every lake table. pyiceberg (>= 0.12) retries a conflicting append by re-applying the same rows on
#: top of the other writer's commit -- a duplicate when both stored one batch; the writer retries itself, after
#: re-reading the keys (:meth:`LakeStore._commit`).
TABLE_PROPERTIES = {"commit.retry.num-retries": "0"}
_KEY_SCHEMA = pa.schema([("agent_id", pa.string()), ("boot_id", pa.string()), ("seq", pa.uint64())])
_RECORD_ORDER = tuple(t for t in KEYED if t != "messages")


class LakeStore:
    """The lake as the Ingestor's store: ``write_arrow``, ``write_messages``, ``write_dead_letters``.

    Also its opener (``with lake() as store``: nothing is held between
    flushes). ``sleep`` and ``clock`` are injectable for tests of the retries.
    """

    def __init__(self, config: LakeConfig, *, conflict_retries: int = 20,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.unavailable_s = config.unavailable_s
        self.conflict_retries = conflict_retries
        self.sleep = sleep
        self.clock = clock
        self.conflicts = 0  # commits refused by a concurrent writer, then retried
        self.commit_seconds: list[float] = []  # wall time of each table commit (append + catalog swap)
        self.catalog: Catalog = self._retrying("opening the lake catalog", lambda: open_catalog(config))
        self._tables: dict[str, Table] = {}
        for name in LAKE_TABLES:
            self._tables[name] = self.ensure(name)

    # --- the Ingestor's opener protocol ----------------------------------------

    def __call__(self) -> AbstractContextManager[LakeStore]:
        return self._open()

    @contextmanager
    def _open(self) -> Iterator[LakeStore]:
        yield self

    def close(self) -> None:
        """Nothing is held between flushes (the SQL catalog's connection pool closes with the process)."""

    # --- tables ----------------------------------------------------------------

    def table(self, name: str) -> Table:
        """An open lake table: a raw table, or a product table (:data:`ROLLUP_TABLES`) created on first use."""
        if name not in self._tables:
            self._tables[name] = self.ensure(name)
        return self._tables[name]

    def ensure(self, name: str) -> Table:
        """``name`` loaded, created or evolved to the current schema, retried while the lake does not answer."""
        return self._retrying(f"opening lake table {name}", partial(self._ensure, name))

    def _refreshed(self, name: str) -> Table:
        """The table at its current snapshot (another worker may have committed since)."""
        self._tables[name] = self._tables[name].refresh()
        return self._tables[name]

    def _ensure(self, name: str) -> Table:
        """Load ``name``, creating it, or adding the columns the current schema has and it lacks.

        Workers starting together race here: a creation or schema change another
        worker committed first is taken as done (the table is loaded again).
        """
        ident = (self.config.namespace, name)
        want = lake_schema(name)
        for _ in range(self.conflict_retries):
            try:
                table = self.catalog.load_table(ident)
            except NoSuchTableError:
                try:
                    return self.catalog.create_table(ident, schema=want, partition_spec=partition_spec(name, want),
                                                     properties=TABLE_PROPERTIES)
                except TableAlreadyExistsError:  # another worker created it meanwhile
                    continue
            try:
                if any(table.properties.get(k) != v for k, v in TABLE_PROPERTIES.items()):
                    with table.transaction() as tx:
                        tx.set_properties(TABLE_PROPERTIES)
                    table = table.refresh()
                return evolve(table, name)
            except CommitFailedException:  # another worker changed it first: look again
                self.conflicts += 1
                self.sleep(0.05 * (0.5 + random.random()))
        raise StoreError(f"lake table {name}: could not bring it up to date ({self.conflict_retries} tries lost to "
                         "concurrent changes)", hint="start the workers again")

    # --- writing -----------------------------------------------------------------

    def write_messages(self, messages: Sequence[wire.Message], sources: Sequence[str | None] | None = None) -> int:
        """Store decoded messages (see :meth:`write_arrow`); returns how many were new."""
        if not messages:
            return 0
        return self.write_arrow(batch_to_arrow(messages, sources or [None] * len(messages)))

    def write_arrow(self, tables: Mapping[str, pa.Table]) -> int:
        """Append one decoded batch (``_m``: each row's message ordinal); returns the messages new to ``messages``."""
        msgs = tables["messages"]
        if msgs.num_rows == 0:
            return 0
        first = _first_of_each_key(msgs)  # a key repeated inside the batch: its first message only
        scope = _scope(msgs.filter(pc.is_in(msgs["_m"], value_set=first)))
        stored_before = self._retrying("reading keys of lake table messages",
                                       lambda: self._existing(self._refreshed("messages"), scope))
        todo = _without(first, msgs, stored_before)  # messages not committed yet (their rows may be, in part)
        if len(todo) == 0:
            return 0
        now = pa.scalar(time.time_ns() // 1000, pa.int64()).cast(pa.timestamp("us", "UTC"))
        for name in _RECORD_ORDER:
            rows = tables.get(name)
            if rows is not None:
                self._append_keyed(name, rows, todo, scope, now)
        pods = tables.get("pods")
        if pods is not None and pods.num_rows:
            self._append_new("pods", pods, ("pod_uid", "last_seen_ns"), now)
        # last: the commit record. Its count is what this writer stored (a concurrent writer's share excluded).
        return self._append_keyed("messages", msgs, todo, scope, now)

    def write_dead_letters(self, letters: Iterable[DeadLetter]) -> int:
        """Store undecodable records; returns how many were new (idempotent on topic, partition, offset)."""
        letters = list(letters)
        if not letters:
            return 0
        table = pa.table({
            "topic": pa.array([d.topic for d in letters], pa.string()),
            "partition": pa.array([d.partition for d in letters], pa.int32()),
            "offset": pa.array([d.offset for d in letters], pa.int64()),
            "reason": pa.array([d.reason for d in letters], pa.string()),
            "payload": pa.array([d.payload for d in letters], pa.binary()),
            "size_bytes": pa.array([len(d.payload) for d in letters], pa.int64()),
        })
        now = pa.scalar(time.time_ns() // 1000, pa.int64()).cast(pa.timestamp("us", "UTC"))
        return self._append_new("dead_letters", table, ("topic", "partition", "offset"), now)

    def write_rows(self, name: str, rows: pa.Table, key: tuple[str, ...]) -> int:
        """Append the rows of ``rows`` whose ``key`` table ``name`` lacks (a copy run twice adds nothing);
        returns the rows appended. Rows with a NULL in the key are always new."""
        now = pa.scalar(time.time_ns() // 1000, pa.int64()).cast(pa.timestamp("us", "UTC"))
        return self._append_new(name, rows, key, now)

    def snapshot_id(self, name: str) -> int | None:
        """The id of table ``name``'s current snapshot (None: nothing committed yet), read from the catalog."""
        def current() -> int | None:
            snapshot = self._refreshed(name).current_snapshot()
            return None if snapshot is None else int(snapshot.snapshot_id)

        self.table(name)
        return self._retrying(f"reading the snapshot of lake table {name}", current)

    def _append_keyed(self, name: str, rows: pa.Table, todo: pa.Array, scope: BooleanExpression, now: pa.Scalar) -> int:
        """Append the rows of messages ``todo`` whose key the table lacks; returns the rows appended."""
        candidates = rows.filter(pc.is_in(rows["_m"], value_set=todo))
        if candidates.num_rows == 0:
            return 0

        def attempt(table: Table) -> pa.Table:
            have = self._existing(table, scope)
            keep = _rows_without(candidates, have)
            return _conform(keep.drop_columns(["_m"]), table, now)

        return self._commit(name, attempt)

    def _append_new(self, name: str, rows: pa.Table, key: tuple[str, ...], now: pa.Scalar) -> int:
        """Append the rows whose ``key`` the table lacks (rows with a NULL in the key are always new)."""
        known = rows[key[0]].is_valid()
        for k in key[1:]:
            known = pc.and_(known, rows[k].is_valid())
        probe = _dedupe(rows.filter(known), key)  # rows with a whole key: idempotent on it
        unkeyed = rows.filter(pc.invert(known))  # a NULL in the key: always new (as in the DuckDB store)

        def attempt(table: Table) -> pa.Table:
            new = probe
            if probe.num_rows:
                have = self._scan(table, _in(key[0], set(probe[key[0]].to_pylist())), key)
                if have.num_rows:
                    have = have.select(list(key)).cast(probe.select(list(key)).schema)
                    new = probe.join(have, keys=list(key), join_type="left anti").select(probe.column_names)
            return _conform(pa.concat_tables([unkeyed, new]), table, now)

        return self._commit(name, attempt)

    def _commit(self, name: str, attempt: Callable[[Table], pa.Table]) -> int:
        """Append what ``attempt(table)`` returns; on a concurrent commit refresh and ask again. Returns rows appended.

        Each try re-reads the table and its keys: after a conflict, and after a
        transient failure too (a commit whose answer was lost may have landed;
        re-reading the keys then appends nothing twice). pyiceberg's own retry,
        which would re-apply the same rows on top of the other writer's, is off
        (``commit.retry.num-retries`` = 0 on every table, :data:`TABLE_PROPERTIES`).
        """
        def once() -> int | None:  # None: lost to a concurrent writer
            table = self._refreshed(name)
            rows = attempt(table)
            if rows.num_rows == 0:
                return 0
            t0 = time.monotonic()
            try:
                table.append(rows)
            except CommitFailedException as exc:
                log.debug("lake table %s: concurrent commit (%s); re-reading keys and retrying", name, exc)
                return None
            self.commit_seconds.append(time.monotonic() - t0)
            return int(rows.num_rows)

        backoff = 0.05
        for _ in range(self.conflict_retries + 1):
            appended = self._retrying(f"appending to lake table {name}", once)
            if appended is not None:
                return appended
            self.conflicts += 1
            self.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 2.0)
        raise StoreError(f"lake table {name}: {self.conflict_retries + 1} commits in a row lost to concurrent writers",
                         hint="too many workers commit to one table at once: raise --commit-interval so each "
                              "commits less often")

    def replacing(self, name: str, what: str, once: Callable[[Table], None], hint: str, *,
                  load: Callable[[], Table] | None = None) -> None:
        """``once(table)`` on a freshly read table ``name`` (``load()``, default: refreshed from the catalog); a
        commit lost to a concurrent writer is redone from the refreshed table with jittered backoff, an
        unreachable lake retried as :meth:`_retrying` does.

        For writers that *replace* what they commit (a delete and an append in one
        transaction: attribution's shards, the importers' hours), so redoing cannot
        double anything. ``hint`` says what to do when every try lost.
        """
        backoff = 0.05
        for _ in range(self.conflict_retries + 1):
            def attempt() -> bool:
                try:
                    once(load() if load is not None else self.table(name).refresh())
                except CommitFailedException as exc:
                    log.debug("%s: concurrent commit (%s); redoing", what, exc)
                    return False
                return True

            if self._retrying(what, attempt):
                return
            self.conflicts += 1
            self.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 2.0)
        raise StoreError(f"{what}: {self.conflict_retries + 1} commits in a row lost to concurrent writers", hint=hint)

    def _existing(self, table: Table, scope: BooleanExpression) -> pa.Table:
        return self._scan(table, scope, KEY)

    def _scan(self, table: Table, expr: BooleanExpression, columns: Sequence[str]) -> pa.Table:
        return table.scan(row_filter=expr, selected_fields=tuple(columns)).to_arrow()

    def _retrying(self, what: str, action: Callable[[], T]) -> T:
        """``action()``, retried with doubling pauses while the catalog or object store does not answer
        (for ``unavailable_s`` seconds from the first failure)."""
        deadline: float | None = None
        pause = 0.25
        while True:
            try:
                return action()
            except LakeUnavailable as exc:
                error: BaseException = exc
            except Exception as exc:
                if not transient(exc):
                    raise
                error = exc
            if deadline is None:
                deadline = self.clock() + self.unavailable_s
            if self.clock() + pause > deadline:
                why = error if isinstance(error, LakeUnavailable) else _first_line(error)
                raise LakeUnavailable(f"{what}: the lake's catalog or object store did not answer for "
                                      f"{self.unavailable_s:g} s ({why})") from error
            log.warning("%s failed (%s); retrying in %.2f s", what, _first_line(error), pause)
            self.sleep(pause)
            pause = min(pause * 2, 10.0)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def evolve(table: Table, name: str) -> Table:
    """Add to ``table`` the columns the current schema of ``name`` has and it lacks (optional: old rows read NULL)."""
    have = {f.name for f in table.schema().fields}
    missing = [f for f in lake_schema(name).fields if f.name not in have]
    if not missing:
        return table
    with table.update_schema() as update:
        for field in missing:
            update.add_column(field.name, field.field_type, doc=f"added by gpuledger ({name})")
    log.info("lake table %s: added columns %s", name, ", ".join(f.name for f in missing))
    return table.refresh()


def _first_of_each_key(msgs: pa.Table) -> pa.Array:
    """The ``_m`` of the first message of each key in the batch."""
    grouped = msgs.select([*KEY, "_m"]).group_by(list(KEY), use_threads=False).aggregate([("_m", "min")])
    return grouped["_m_min"].combine_chunks()


def _scope(msgs: pa.Table) -> BooleanExpression:
    """A filter that holds for every row of these messages: their agents, within their interval starts.

    Iceberg prunes with it: partitions (days) outside [min, max] of interval
    starts, and data files whose agent_id / interval_start_ns statistics miss it.
    """
    lo = pc.min(msgs["interval_start_ns"]).as_py()
    hi = pc.max(msgs["interval_start_ns"]).as_py()
    agents = set(msgs["agent_id"].to_pylist())
    days = _between(DAY_COLUMN, lo // 1000, hi // 1000)  # prunes partitions (day(interval_start))
    return And(_in("agent_id", agents), And(days, _between("interval_start_ns", lo, hi)))


# pyiceberg's predicates are pydantic models with positional constructors the pydantic mypy plugin does not see.
def _in(column: str, values: set[Any]) -> BooleanExpression:
    return In(column, values)  # type: ignore[call-arg,misc,unused-ignore]


def _between(column: str, lo: int, hi: int) -> BooleanExpression:
    return And(GreaterThanOrEqual(column, lo), LessThanOrEqual(column, hi))  # type: ignore[call-arg,misc,unused-ignore]


def _without(first: pa.Array, msgs: pa.Table, stored: pa.Table) -> pa.Array:
    """The ``_m`` in ``first`` whose key is not in ``stored``."""
    candidates = msgs.filter(pc.is_in(msgs["_m"], value_set=first)).select([*KEY, "_m"])
    if stored.num_rows == 0:
        return candidates["_m"].combine_chunks()
    fresh = candidates.join(_keys(stored), keys=list(KEY), join_type="left anti")
    return fresh["_m"].combine_chunks()


def _rows_without(rows: pa.Table, stored: pa.Table) -> pa.Table:
    """``rows`` whose message key is not in ``stored``."""
    if stored.num_rows == 0:
        return rows
    # joined on the key columns and _m only (Acero joins no NULL-typed columns, e.g. an all-NULL batch column)
    ordinals = rows.select([*KEY, "_m"]).join(_keys(stored), keys=list(KEY), join_type="left anti")["_m"]
    return rows.filter(pc.is_in(rows["_m"], value_set=ordinals.combine_chunks()))


def _keys(stored: pa.Table) -> pa.Table:
    """Distinct keys, typed as the batch types them (seq: uint64 in the batch, long in Iceberg)."""
    keys = stored.select(list(KEY)).group_by(list(KEY), use_threads=False).aggregate([])
    return keys.select(list(KEY)).cast(_KEY_SCHEMA)


def _dedupe(rows: pa.Table, key: tuple[str, ...]) -> pa.Table:
    """One row per key (the first)."""
    if rows.num_rows <= 1:
        return rows
    idx = pa.array(np.arange(rows.num_rows, dtype=np.int64))
    first = rows.select(list(key)).append_column("_i", idx).group_by(list(key), use_threads=False).aggregate([("_i", "min")])
    return rows.take(first["_i_min"])


def _conform(rows: pa.Table, table: Table, now: pa.Scalar) -> pa.Table:
    """``rows`` in the table's column order and types; a column DuckDB fills by default (``ingested_at``,
    ``received_at``) is filled with ``now``; any other column the batch lacks is NULL (a newer schema's column
    written by an older batch) -- a required one is an error."""
    target = table.schema().as_arrow()
    columns = []
    for field in target:
        if field.name in rows.column_names:
            columns.append(rows[field.name].cast(field.type))
        elif field.name == DAY_COLUMN:
            columns.append(pc.divide(rows["interval_start_ns"].cast(pa.int64()), 1000).cast(field.type))
        elif field.name in ("ingested_at", "received_at"):
            columns.append(pa.array(np.full(rows.num_rows, now.value), pa.int64()).cast(field.type))
        elif field.nullable:
            columns.append(pa.nulls(rows.num_rows, field.type))
        else:
            raise StoreError(f"lake table {table.name()}: the batch has no column {field.name}, which the table requires",
                             hint="the table was written by a newer gpuledger: upgrade this worker")
    return pa.Table.from_arrays(columns, schema=target)
