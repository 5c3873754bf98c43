"""The lake's side of attribution by shard: a shard's raw rows read from Iceberg, its rollups booked into it.

Attribution itself (:mod:`gpuledger.analytics.shard_lake`) knows nothing of
Iceberg; this module is what it asks of the lake:

- **which (hour, node) pairs have new messages** (:meth:`LakeShards.touched`):
  from Iceberg's snapshot lineage, not from a scan of the month. Each
  attribution run records on ``ledger_hourly`` (table properties, see
  :class:`LakeRun`) the ``messages`` snapshot it attributed up to and the
  tenancy rules' version. The next run walks ``messages``' snapshots from its
  current one back to the recorded one and reads only the data files those
  snapshots *added* (their ``node`` and ``interval_start_ns`` columns): the
  messages committed since. A run with nothing new reads no data file and
  commits nothing. Ingest only appends to ``messages``, and commits it last,
  so a new message key is a message complete in every table.
- **a shard's raw rows** (:meth:`LakeShards.raw`): Iceberg scans of
  ``messages``, ``devices``, ``processes`` and ``allocations`` filtered by the
  day partition (``interval_start``), the hour's ``interval_start_ns`` range
  and the group's nodes (partition and file-statistics pruning), at the
  ``messages`` snapshot the run planned from; only complete messages' rows
  (their key in ``messages``). Pods: the whole (small) table, latest seen wins.
- **booking** (:meth:`LakeShards.replace`): one Iceberg transaction per batch
  of shards on ``ledger_hourly``: delete the shards' rows (hour and nodes),
  append their new rows, one data file per hour, so a re-run of one hour's
  shard rewrites that hour's file only. A commit lost to a concurrent writer
  is redone from a refreshed table (it replaces, so redoing is idempotent);
  an unreachable lake is retried as the ingest writer retries it.
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import AlwaysFalse, AlwaysTrue, And, BooleanExpression, EqualTo, Or
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import DataFile, ManifestEntryStatus
from pyiceberg.table import FileScanTask, Table
from pyiceberg.transforms import DayTransform

from gpuledger.errors import StoreError
from gpuledger.store.lake.schema import DAY_COLUMN, HOUR_COLUMN
from gpuledger.store.lake.writer import KEY, LakeStore, _between, _in

log = logging.getLogger(__name__)

__all__ = ["SNAPSHOT_PROPERTY", "RULES_PROPERTY", "LakeRun", "LakeShards"]

HOUR_NS = 3600 * 10**9
#: ``ledger_hourly`` table properties: the ``messages`` snapshot the last attribution run attributed up to,
#: and the tenancy rules' version it ran under.
SNAPSHOT_PROPERTY = "gpuledger.attribution.messages-snapshot-id"
RULES_PROPERTY = "gpuledger.attribution.rules-version"
#: The raw tables a shard's attribution reads (field_errors are not read by the kernel).
SHARD_TABLES = ("messages", "devices", "processes", "allocations")
_ROLLUPS = "ledger_hourly"


@dataclass(frozen=True)
class LakeRun:
    """What the last attribution run recorded: the ``messages`` snapshot it read, the tenancy rules' version."""

    messages_snapshot: int | None
    rules_version: str | None


class LakeShards:
    """Reads shards' raw rows from the lake and books their rollups into ``ledger_hourly``."""

    def __init__(self, lake: LakeStore) -> None:
        self.lake = lake
        self._fresh_for: int | None = None  # the messages snapshot the record tables were last read again for

    # --- what changed -------------------------------------------------------------

    def messages_snapshot(self) -> int | None:
        """The current snapshot of ``messages`` (None: nothing was ever written)."""
        snap = self.lake._retrying("reading lake table messages", lambda: self.lake._refreshed("messages")
                                   ).current_snapshot()
        return None if snap is None else snap.snapshot_id

    def last_run(self) -> LakeRun:
        props = self._rollups().properties
        snap = props.get(SNAPSHOT_PROPERTY)
        return LakeRun(int(snap) if snap else None, props.get(RULES_PROPERTY))

    def record_run(self, run: LakeRun) -> None:
        """Record ``run`` on ``ledger_hourly`` (a metadata commit, no snapshot), retried like a booking."""
        props = {SNAPSHOT_PROPERTY: "" if run.messages_snapshot is None else str(run.messages_snapshot),
                 RULES_PROPERTY: run.rules_version or ""}

        def once(table: Table) -> None:
            with table.transaction() as tx:
                tx.set_properties(props)

        self._committing("recording the attribution run on lake table ledger_hourly", once)

    def touched(self, since: int | None, upto: int | None) -> pa.Table:
        """(hour_start_ns, node) of the messages added after snapshot ``since`` up to ``upto`` (``since`` None:
        every message at ``upto``). A ``since`` no longer in ``upto``'s lineage (snapshots expired, table
        replaced) falls back to every message, with a warning."""
        if upto is None:
            return _hour_nodes(pa.table({"node": pa.array([], pa.string()),
                                         "interval_start_ns": pa.array([], pa.int64())}))
        table = self.lake._tables["messages"]
        if since == upto:
            return _hour_nodes(self._columns(table, []))
        added = None if since is None else self._added_since(table, since, upto)
        if added is None:
            if since is not None:
                log.warning("lake: snapshot %d of messages is not an ancestor of %d (expired or replaced): "
                            "every shard is dirty", since, upto)
            rows = self.lake._retrying("scanning lake table messages", lambda: table.scan(
                snapshot_id=upto, selected_fields=("node", "interval_start_ns")).to_arrow())
            return _hour_nodes(rows)
        return _hour_nodes(self._columns(table, added))

    def days_added(self, since: int, upto: int | None) -> set[dt.date] | None:
        """The UTC days (``messages``' day partitions) of the data files that the snapshots after ``since`` up to
        ``upto`` added: the days holding a message the run that recorded ``since`` did not attribute. Read from the
        manifests (each file's partition value), no data file. None when ``since`` is not in ``upto``'s lineage
        (snapshots expired, table replaced): then nothing is known to be attributed."""
        if upto is None or since == upto:
            return set()
        table = self.lake._tables["messages"]
        added = self._added_since(table, since, upto)
        if added is None:
            return None
        days: set[dt.date] = set()
        unpartitioned: list[DataFile] = []
        for f in added:
            day = _day_of(table, f)
            if day is None:
                unpartitioned.append(f)
            else:
                days.add(day)
        if unpartitioned:  # written under a spec without the day transform: the days from the rows themselves
            starts = self._columns(table, unpartitioned)["interval_start_ns"].cast(pa.int64()).to_pylist()
            days |= {dt.datetime.fromtimestamp(s // 10**9, dt.UTC).date() for s in starts}
        return days

    def nodes_in(self, hours: Sequence[int], snapshot: int | None) -> pa.Table:
        """(hour_start_ns, node) of every node with messages in these hours, at ``snapshot`` of ``messages``."""
        if not hours or snapshot is None:
            return _hour_nodes(pa.table({"node": pa.array([], pa.string()),
                                         "interval_start_ns": pa.array([], pa.int64())}))
        table = self.lake._tables["messages"]
        wanted = sorted(set(hours))
        runs: list[list[int]] = []  # consecutive hours as one range: a first run's month is one filter
        for h in wanted:
            if runs and runs[-1][1] + HOUR_NS == h:
                runs[-1][1] = h
            else:
                runs.append([h, h])
        if len(runs) > 64:  # scattered late hours: one range over them all, the other hours dropped below
            runs = [[wanted[0], wanted[-1]]]
        expr = _any(_hours_filter(lo, hi) for lo, hi in runs)
        rows = self.lake._retrying("scanning lake table messages", lambda: table.scan(
            row_filter=expr, snapshot_id=snapshot, selected_fields=("node", "interval_start_ns")).to_arrow())
        pairs = _hour_nodes(rows)
        return pairs.filter(pc.is_in(pairs["hour_start_ns"], value_set=pa.array(wanted, pa.int64())))

    # --- a shard's rows -------------------------------------------------------------

    def raw(self, hour_start_ns: int, nodes: Sequence[str], snapshot: int) -> dict[str, pa.Table]:
        """The complete messages of (hour, nodes) at ``snapshot`` of ``messages`` and their rows in the record
        tables, each in the DuckDB file's columns (the lake-only ``interval_start`` dropped)."""
        expr = And(_hour_filter(hour_start_ns), _in("node", set(nodes)))
        if self._fresh_for != snapshot:
            # Tables opened before this run (a worker's, or this process's from an earlier run) may predate the
            # records of messages in ``snapshot``: read them again, messages first (if it lacks the snapshot), then
            # the records -- committed before their messages, so now they hold every row of the snapshot's messages.
            names = SHARD_TABLES if self.lake._tables["messages"].metadata.snapshot_by_id(snapshot) is None \
                else SHARD_TABLES[1:]
            for name in names:
                self.lake._retrying(f"reading lake table {name}", partial(self.lake._refreshed, name))
            self._fresh_for = snapshot
        out: dict[str, pa.Table] = {}
        for name in SHARD_TABLES:
            table = self.lake._tables[name]
            snap = snapshot if name == "messages" else None  # records are committed before their message
            rows = self.lake._retrying(f"scanning lake table {name}", partial(_scan, table, expr, snap))
            out[name] = rows.drop_columns([DAY_COLUMN])
        keys = out["messages"].select(list(KEY))
        for name in SHARD_TABLES[1:]:  # rows of messages not yet committed (a flush in progress) are not read
            rows = out[name]
            if rows.num_rows:
                kept = rows.select(list(KEY)).append_column("_i", pa.array(range(rows.num_rows), pa.int64())).join(
                    keys, keys=list(KEY), join_type="inner")["_i"]
                out[name] = rows.take(pc.sort_indices(kept))
        return out

    def pods(self) -> pa.Table:
        """Every pod's latest row (``last_seen_ns``), as the DuckDB file keeps it."""
        rows = self.lake._retrying("scanning lake table pods", lambda: self.lake._refreshed("pods").scan().to_arrow())
        if rows.num_rows == 0:
            return rows
        order = pc.sort_indices(rows, sort_keys=[("pod_uid", "ascending"), ("last_seen_ns", "descending")])
        rows = rows.take(order)
        uids = rows["pod_uid"].to_pylist()
        first = [i for i, u in enumerate(uids) if i == 0 or u != uids[i - 1]]
        return rows.take(pa.array(first, pa.int64()))

    # --- booking --------------------------------------------------------------------

    def replace(self, shards: Sequence[tuple[int, Sequence[str], pa.Table]]) -> None:
        """Replace the ``ledger_hourly`` rows of each (hour, nodes) by its rows, all in one Iceberg commit.

        The rows carry the DuckDB table's columns; ``hour`` is added here. One data
        file per hour, so a later re-run of one hour rewrites only that hour's file.
        """
        if not shards:
            return
        drop = _any(And(_hour_filter_rollups(h), _in("node", set(nodes))) for h, nodes, _ in shards)
        by_hour: dict[int, list[pa.Table]] = {}
        for h, _, rows in shards:
            if rows.num_rows:
                by_hour.setdefault(h, []).append(rows)

        def once(table: Table) -> None:
            target = table.schema().as_arrow()
            with warnings.catch_warnings():  # a first booking deletes nothing: pyiceberg warns, nothing is wrong
                warnings.filterwarnings("ignore", "Delete operation did not match any records")
                with table.transaction() as tx:
                    tx.delete(drop)
                    for h in sorted(by_hour):
                        tx.append(conform_hour(pa.concat_tables(by_hour[h], promote_options="permissive"), target, h,
                                               _ROLLUPS))

        self._committing("booking shards into lake table ledger_hourly", once)

    def _rollups(self) -> Table:
        return self.lake._retrying("opening lake table ledger_hourly",
                                   lambda: self.lake.table(_ROLLUPS).refresh())

    def _committing(self, what: str, once: Callable[[Table], None]) -> None:
        """``once(table)`` on a freshly read ``ledger_hourly``, redone on a concurrent commit (:meth:`LakeStore.replacing`)."""
        self.lake.replacing(_ROLLUPS, what, once, hint="another job is writing ledger_hourly at the same time (a "
                            "second attribution run, a copy of a DuckDB file's rollups): run one at a time",
                            load=self._rollups)

    # --- helpers --------------------------------------------------------------------

    def _added_since(self, table: Table, since: int, upto: int) -> list[DataFile] | None:
        """The data files the snapshots after ``since`` up to ``upto`` added; None when ``since`` is not an ancestor."""
        meta = table.metadata
        snaps = []
        snap = meta.snapshot_by_id(upto)
        while snap is not None and snap.snapshot_id != since:
            snaps.append(snap)
            snap = None if snap.parent_snapshot_id is None else meta.snapshot_by_id(snap.parent_snapshot_id)
        if snap is None:
            return None
        files: list[DataFile] = []
        for s in snaps:
            if s.summary is not None and s.summary.operation.value == "replace":
                continue  # a rewrite (compaction) moves rows, it adds no message
            for manifest in self.lake._retrying("reading manifests of lake table messages",
                                                partial(s.manifests, table.io)):
                if manifest.added_snapshot_id != s.snapshot_id:
                    continue
                entries = self.lake._retrying("reading a manifest of lake table messages",
                                              partial(manifest.fetch_manifest_entry, table.io, discard_deleted=True))
                files += [e.data_file for e in entries if e.status == ManifestEntryStatus.ADDED]
        return files

    def _columns(self, table: Table, files: Sequence[DataFile]) -> pa.Table:
        """``node`` and ``interval_start_ns`` of these data files only."""
        schema = table.schema().select("node", "interval_start_ns")
        if not files:
            return schema.as_arrow().empty_table()
        scan = ArrowScan(table_metadata=table.metadata, io=table.io, projected_schema=schema, row_filter=AlwaysTrue())
        return self.lake._retrying("reading new data files of lake table messages",
                                   lambda: scan.to_table(tasks=[FileScanTask(f) for f in files]))


def _day_of(table: Table, f: DataFile) -> dt.date | None:
    """The UTC day partition of a ``messages`` data file, or None when its spec has no ``day(interval_start)``."""
    spec = table.specs().get(f.spec_id)
    source = table.schema().find_field(DAY_COLUMN).field_id
    for i, field in enumerate(spec.fields if spec is not None else ()):
        if field.source_id == source and isinstance(field.transform, DayTransform):
            value = f.partition[i]
            if value is None:
                return None
            return value if isinstance(value, dt.date) else dt.date(1970, 1, 1) + dt.timedelta(days=int(value))
    return None


def _scan(table: Table, expr: BooleanExpression, snapshot: int | None) -> pa.Table:
    return table.scan(row_filter=expr, snapshot_id=snapshot).to_arrow()


def _any(exprs: Iterable[BooleanExpression]) -> BooleanExpression:
    """The disjunction of ``exprs`` (false when there are none), as a balanced tree: pyiceberg's visitors recurse,
    and a chain of hundreds of ORs would reach Python's recursion limit."""
    items = list(exprs)
    if not items:
        return AlwaysFalse()
    while len(items) > 1:
        items = [Or(items[i], items[i + 1]) if i + 1 < len(items) else items[i] for i in range(0, len(items), 2)]
    return items[0]


def _hour_filter(hour_start_ns: int) -> BooleanExpression:
    """The raw rows of one hour: its day partition (``interval_start``) and ``interval_start_ns`` range."""
    return _hours_filter(hour_start_ns, hour_start_ns)


def _hours_filter(first: int, last: int) -> BooleanExpression:
    """The raw rows of the hours ``first`` to ``last`` (hour starts, ns): day partitions and interval range."""
    end = last + HOUR_NS - 1
    return And(_between(DAY_COLUMN, first // 1000, end // 1000), _between("interval_start_ns", first, end))


def _hour_filter_rollups(hour_start_ns: int) -> BooleanExpression:
    """The rollup rows of one hour: its month partition (``hour``) and ``hour_start_ns``."""
    return And(EqualTo(HOUR_COLUMN, hour_start_ns // 1000),  # type: ignore[call-arg,misc,unused-ignore]
               EqualTo("hour_start_ns", hour_start_ns))  # type: ignore[call-arg,misc,unused-ignore]


def _hour_nodes(rows: pa.Table) -> pa.Table:
    """Distinct (hour_start_ns, node), sorted."""
    start = rows["interval_start_ns"].cast(pa.int64())
    hour = pc.multiply(pc.divide(start, HOUR_NS), HOUR_NS)  # interval starts are >= 0: truncation is floor
    pairs = pa.table({"hour_start_ns": hour, "node": rows["node"].cast(pa.string())})
    pairs = pairs.group_by(["hour_start_ns", "node"], use_threads=False).aggregate([])
    return pairs.sort_by([("hour_start_ns", "ascending"), ("node", "ascending")])


def conform_hour(rows: pa.Table, target: pa.Schema, hour_start_ns: int, name: str) -> pa.Table:
    """``rows`` of one hour (the DuckDB table's columns) in the Iceberg table ``name``'s order and types, with
    ``hour`` added."""
    columns = []
    for field in target:
        if field.name == HOUR_COLUMN:
            columns.append(pa.array([hour_start_ns // 1000] * rows.num_rows, pa.int64()).cast(field.type))
        elif field.name in rows.column_names:
            col = rows[field.name]
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            columns.append(col.cast(field.type))
        elif field.nullable:
            columns.append(pa.nulls(rows.num_rows, field.type))
        else:
            raise StoreError(f"lake table {name}: the rows have no column {field.name}, which it requires",
                             hint="the table was written by a newer gpuledger: upgrade this one")
    return pa.Table.from_arrays(columns, schema=target)
