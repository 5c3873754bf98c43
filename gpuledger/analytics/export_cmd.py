"""The IO edges of exporting: ``gpuledger export ...`` and the scheduled close of ``serve --close-months``.

``gpuledger export chargeback --month 2026-10 [--format csv|parquet] [--out PATH] [--final]``
writes the month's FOCUS file (stdout, a file, or ``PATH/gpuledger-chargeback-2026-10.csv``
when PATH is a directory). ``--final`` closes the month (it opens the database
for writing, like ``gpuledger attribute``). ``gpuledger export reconciliation
--month 2026-10`` prints the report (``--format json`` for JSON) and exits 1
when it does not add up. ``--month previous`` is the month before now (UTC),
for schedulers.

:class:`MonthCloser` runs inside ``gpuledger serve --close-months``: once an
hour it closes every month with data that ended at least
``close_grace_hours`` ago, in order, opening the file for writing only for
the close (it retries later while another writer holds it).

A close is refused while the month's capacity is far below the fleet's
(:func:`capacity_shortfall`): the GPUs seen in the month or the month before
should have booked every hour of the month since they were first seen; a
month with less than ``CLOSE_MIN_CAPACITY`` of that (ingest or attribution
down for part of the month) would be billed short and closed for good. The
CLI closes it anyway with ``--force`` (a fleet that really shrank); the
scheduled close logs the refusal and tries again every hour.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from gpuledger.analytics import chargeback as cb
from gpuledger.analytics import closing
from gpuledger.analytics.focus import ExportContext
from gpuledger.analytics.prices import PriceBook
from gpuledger.analytics.reconcile import reconcile
from gpuledger.errors import GpuledgerError, StoreError
from gpuledger.store import Store
from gpuledger.timeutil import month_bounds, to_ns

if TYPE_CHECKING:
    from gpuledger.store.lake import LakeStore
    from gpuledger.store.metadata import Metadata

__all__ = ["CLOSE_MIN_CAPACITY", "ExportRequest", "MonthCloser", "capacity_shortfall", "file_name", "run_export",
           "run_lake_export"]

#: A close needs at least this share of the fleet's expected capacity (GPU-hours) in the month.
CLOSE_MIN_CAPACITY = 0.5

log = logging.getLogger(__name__)


def file_name(what: str, month: str, fmt: str) -> str:
    return f"gpuledger-{what}-{month}.{fmt}"


@dataclass(frozen=True)
class ExportRequest:
    """One ``gpuledger export`` run (who bills whom and per which period is the :class:`ExportContext`)."""

    what: Literal["chargeback", "reconciliation"]
    month: str  # YYYY-MM (UTC) or "previous"
    db_path: str
    out: str | None = None  # a file, a directory (ends in / or exists), or None: stdout
    format: Literal["csv", "parquet", "txt", "json"] | None = None  # None: csv, or txt for reconciliation
    final: bool = False  # close the month (writes the database)
    force: bool = False  # close even when the month's capacity is far below the fleet's


def run_export(request: ExportRequest, book: PriceBook, context: ExportContext, now: datetime | None = None) -> int:
    """The ``export`` subcommand; returns the exit code (1: reconciliation failed)."""
    try:
        month = closing.resolve_month(request.month, now)
    except ValueError as exc:
        raise GpuledgerError(str(exc), hint="--month 2026-10, or --month previous") from None
    if not Path(request.db_path).exists():
        raise GpuledgerError(f"no database at {request.db_path}", hint="pass --db, or run `gpuledger demo` first")
    ended = month_bounds(month)[1] <= (now or datetime.now(UTC))
    if ended or not request.final:  # closing a month that has not ended is refused below, with its own reason
        with Store(request.db_path, read_only=True) as store:
            _require_data(store, month)
            if request.final and ended and not request.force and month not in closing.closed_months(store):
                short = capacity_shortfall(store, month)
                if short is not None:
                    raise GpuledgerError(short, hint=f"check that `gpuledger ingest` and `gpuledger attribute` ran all "
                                         f"month (late data is still booked to {month} until it is closed); if the "
                                         "fleet really shrank, close it anyway with --final --force")
    if request.what == "reconciliation":
        with Store(request.db_path, read_only=True) as store:
            report = reconcile(store, month, book, context, now=now)
        fmt = "json" if request.format == "json" else "txt"
        text = json.dumps(report.to_dict(), indent=2) + "\n" if fmt == "json" else report.text() + "\n"
        _emit(text.encode("utf-8"), request.out, file_name("reconciliation", month, fmt))
        if not report.ok:
            print(f"error: reconciliation of {month} failed: {'; '.join(report.problems)}", file=sys.stderr)
            return 1
        return 0
    fmt = request.format or "csv"
    if fmt == "txt" or fmt == "json":
        raise GpuledgerError(f"chargeback has no format {fmt!r}", hint="--format csv or --format parquet")
    with Store(request.db_path, read_only=not request.final) as store:
        result = closing.export(store, month, book, fmt=fmt, final=request.final, context=context, now=now)
    where = _emit(result.content, request.out, file_name("chargeback", month, fmt))
    state = "closed" if result.closed else "open (preview; --final closes it)"
    policy = (context.as_closed(result.record.charge_period, result.record.inputs).idle_policy
              if result.record is not None else context.idle_policy)
    if where:
        print(f"wrote {where}: {month} {state}, sha256 {result.sha256}, idle policy {policy}", file=sys.stderr)
    else:
        print(f"{month} {state}, idle policy {policy}", file=sys.stderr)
    return 0


def run_lake_export(request: ExportRequest, lake: LakeStore, meta: Metadata, book: PriceBook, context: ExportContext,
                    now: datetime | None = None, *, work_dir: str | Path | None = None) -> int:
    """``gpuledger export --lake``: :func:`run_export` on a temporary DuckDB file holding what the month's bill
    reads from the lake -- the rollups of the month, of the month before (the close's capacity check) and of
    every closed month before it (their corrections), one month partition each, read as Arrow batches -- and
    the metadata store's closed months. The file's ``--memory-limit`` bounds the work, as for ``export --db``.
    A ``--final`` close is then recorded in the metadata store (the month is its key: of two closers, the second
    gets an error and nothing of it is kept). ``request.db_path`` is ignored."""
    from gpuledger.store.lake.replica import month_store
    from gpuledger.store.metadata import MonthAlreadyClosed

    try:
        month = closing.resolve_month(request.month, now)
    except ValueError as exc:
        raise GpuledgerError(str(exc), hint="--month 2026-10, or --month previous") from None
    closed = meta.closed()
    months = {month, _previous(month), *(m for m in closed if m < month)}
    with tempfile.TemporaryDirectory(prefix="gpuledger-export-", dir=work_dir) as tmp:
        path = Path(tmp) / "bill.duckdb"
        month_store(lake, meta, path, [tuple(to_ns(t) for t in month_bounds(m)) for m in months]).close()  # type: ignore[misc]
        code = run_export(replace(request, db_path=str(path)), book, context, now)
        if request.what == "chargeback" and request.final and month not in closed:
            with Store(path, read_only=True) as store:
                close = store.query("SELECT * FROM chargeback_closes WHERE month = ?", [month])
                billed = store.query("SELECT * FROM chargeback_billed WHERE billing_month = ?", [month])
            try:
                meta.record_close(close, billed)
            except MonthAlreadyClosed as exc:
                raise GpuledgerError(f"{exc}: this run's file was not recorded", hint=f"export {month} again for "
                                     "the file as it was closed") from None
    return code


def _require_data(store: Store, month: str) -> None:
    """A month that is not closed and has no attributed usage is a failure, not an empty bill.

    A scheduled close or reconciliation must not go green (a header-only file,
    ``RECONCILIATION PASSED``) while ingest or attribution is dead.
    """
    if month in closing.closed_months(store):
        return
    start, end = (to_ns(t) for t in month_bounds(month))
    for table, column in (("ledger", "interval_start_ns"), ("ledger_hourly", "hour_start_ns")):
        if store.has_table(table) and store.scalar(
                f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {column} >= ? AND {column} < ? LIMIT 1)",
                [start, end]):
            return
    raise GpuledgerError(f"no data for {month}: no attributed usage in that month; is ingest running?",
                         hint="check that `gpuledger ingest` and `gpuledger attribute` run "
                         "(`gpuledger attribute` books what ingest stored), or pick a month with data")


def capacity_shortfall(store: Store, month: str, min_share: float = CLOSE_MIN_CAPACITY) -> str | None:
    """Why ``month``'s capacity is far below the fleet's, or None when it is not.

    The fleet: the physical GPUs (node, index) with booked hours in the month
    or the month before. Each should have booked the month's hours since it
    was first seen (any time before the month's end): a GPU added mid-month is
    expected only from then on. Capacity: the month's GPU-seconds, every kind
    (they sum to capacity). Read from the hourly rollups, as the bill is.
    """
    start, end = (to_ns(t) for t in month_bounds(month))
    before = to_ns(month_bounds(_previous(month))[0])
    # The bill's own rows (hourly rollups, pending hours from the ledger): never a scan of the interval ledger.
    hours = cb.hour_rows_sql(store)
    row = store.query(f"""
        WITH seen AS (SELECT node, gpu_index, min(hour_start_ns) AS first_ns, max(hour_start_ns) AS last_ns
                      FROM ({hours.replace("$lo", "$first").replace("$hi", "$hi")}) GROUP BY ALL),
             fleet AS (SELECT greatest(first_ns, $lo) AS from_ns FROM seen WHERE last_ns >= $before)
        SELECT (SELECT count(*) FROM fleet) AS gpus,
               (SELECT coalesce(sum(($hi - from_ns) / 1e9), 0) FROM fleet) AS expected_s,
               (SELECT coalesce(sum(gpu_seconds), 0) FROM ({hours}) ) AS booked_s""",
                      {"first": -(2**62), "lo": start, "hi": end, "before": before})
    gpus, expected_s, booked_s = row.row(0)
    if not expected_s or booked_s >= min_share * expected_s:
        return None
    return (f"capacity far below the fleet: {month} has {booked_s / 3600:,.1f} GPU-hours of capacity, "
            f"{booked_s / expected_s:.0%} of the {expected_s / 3600:,.1f} GPU-hours that the {gpus} GPUs seen in "
            f"{month} or the month before should have booked (below {min_share:.0%}): is ingest or "
            "attribution behind?")


def _previous(month: str) -> str:
    year, mon = int(month[:4]), int(month[5:7])
    return f"{year - 1}-12" if mon == 1 else f"{year:04d}-{mon - 1:02d}"


def _emit(content: bytes, out: str | None, default_name: str) -> Path | None:
    if not out:
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
        return None
    path = Path(out)
    if path.is_dir() or out.endswith("/"):
        path.mkdir(parents=True, exist_ok=True)
        path = path / default_name
    path.write_bytes(content)
    return path


class MonthCloser:
    """Closes completed months in the background (``serve --close-months``)."""

    def __init__(self, db_path: str | Path, book: PriceBook, context: ExportContext, grace_hours: float,
                 every_s: float = 3600.0, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 min_capacity: float = CLOSE_MIN_CAPACITY) -> None:
        self.db_path, self.book, self.context, self.grace_hours = Path(db_path), book, context, grace_hours
        self.min_capacity = min_capacity  # a month below this share of the fleet's capacity is not closed
        self.every_s, self.clock = every_s, clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> list[str]:
        """Close what is due; returns the months closed (none while another writer holds the file)."""
        now = self.clock()
        try:
            with Store(self.db_path, read_only=True) as store:
                due = closing.months_to_close(store, now, self.grace_hours)
                for i, month in enumerate(due):  # months close in order: stop at the first that is short
                    short = capacity_shortfall(store, month, self.min_capacity) if self.min_capacity > 0 else None
                    if short is not None:
                        log.error("month close of %s refused: %s (close it with `gpuledger export chargeback "
                                  "--month %s --final --force` if the fleet really shrank)", month, short, month)
                        due = due[:i]
                        break
            if not due:
                return []
            done = []
            with Store(self.db_path) as store:
                for month in due:
                    result = closing.export(store, month, self.book, final=True, context=self.context, now=now)
                    log.info("closed %s: sha256 %s", month, result.sha256)
                    done.append(month)
            return done
        except StoreError as exc:
            log.warning("month close postponed: %s (%s)", exc, exc.hint)
            return []

    def start(self) -> MonthCloser:
        self._thread = threading.Thread(target=self._loop, name="gpuledger-month-closer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # keep serving, loudly: a close that fails is logged with its cause every hour
                log.exception("month close failed")
            self._stop.wait(self.every_s)
