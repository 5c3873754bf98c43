"""``gpuledger demo``: the whole pipeline on a simulated fleet, no outside services.

simulator -> agent samplers -> transport (in-process, or Kafka with --kafka)
-> ingest -> DuckDB -> attribution -> chargeback CSV -> API. At the end the
ledger is compared with the simulator's ground truth per tenant.
"""

from __future__ import annotations

import argparse
import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from gpuledger import wire
from gpuledger.agent.sampler import Sampler
from gpuledger.analytics.chargeback import chargeback_csv
from gpuledger.analytics.job import run_attribution
from gpuledger.analytics.prices import default_price_book
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.ingest.consumer import Ingestor
from gpuledger.store import Store
from gpuledger.sim.accuracy import compare
from gpuledger.sim.fleetsim import demo_fleet
from gpuledger.transport import MemoryTransport

DEMO_START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
DEMO_TOPIC = "gpuledger.samples.v1"


def run_demo(args: argparse.Namespace, console: Console | None = None) -> int:
    console = console or Console()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    db_path = out / "gpuledger.duckdb"
    for stale in (db_path, Path(f"{db_path}.wal")):
        stale.unlink(missing_ok=True)

    start_us = int(DEMO_START.timestamp() * 1e6)
    fleet = demo_fleet(n_nodes=args.nodes, gpus_per_node=args.gpus_per_node, seed=args.seed,
                       horizon_s=args.hours * 3600, start_us=start_us)
    samplers = [Sampler(node, node, node=node.spec.name, boot_id=f"demo-{args.seed}") for node in fleet.nodes]
    publisher, subscriber = _transport(args)
    store = Store(db_path)
    ingestor = Ingestor(store, subscriber)
    rules = TenancyRules()

    n_ticks = int(round(args.hours * 3600 / args.tick))
    console.print(
        f"[bold]gpuledger demo[/]: {args.nodes} nodes x {args.gpus_per_node} GPUs, "
        f"{args.hours:g} simulated hours at a {args.tick:g} s tick, from {DEMO_START:%Y-%m-%d %H:%M} UTC"
    )
    for sampler in samplers:
        sampler.tick()  # prime sample-buffer timestamps and energy counters
    with _progress(console) as progress:
        task = progress.add_task("simulate + ingest", total=n_ticks)
        for t in range(n_ticks):
            fleet.advance(args.tick)
            for sampler in samplers:
                msg = sampler.tick()
                if msg is not None:
                    publisher.publish(msg.node.encode(), wire.encode(msg))
            if t % 30 == 29 or t == n_ticks - 1:
                publisher.flush()
                _drain(ingestor)
            progress.advance(task)
        stored = store.count("messages")
        attr = progress.add_task("attribute", total=stored)
        run_attribution(store, rules, progress=lambda done, total: progress.update(attr, completed=done, total=total))

    month = DEMO_START.strftime("%Y-%m")
    csv_path = out / f"chargeback-{month}.csv"
    csv_path.write_text(chargeback_csv(store, month, default_price_book()), encoding="utf-8")
    accuracy = compare(fleet, store, rules)
    _report(console, store, accuracy, csv_path, db_path)
    store.close()
    if args.no_serve:
        return 0
    return _serve(args, db_path, console)


def _transport(args: argparse.Namespace) -> tuple[Any, Any]:
    if not args.kafka:
        memory = MemoryTransport(DEMO_TOPIC)
        return memory, memory
    from gpuledger.transport import KafkaPublisher, KafkaSubscriber

    return (
        KafkaPublisher(args.kafka, DEMO_TOPIC),
        KafkaSubscriber(args.kafka, DEMO_TOPIC, f"gpuledger-demo-{args.seed}", max_poll_interval_ms=5000),
    )


def _drain(ingestor: Ingestor) -> None:
    while ingestor.step(timeout_s=0.05).records:
        pass


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description:<18}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


def _report(console: Console, store: Store, accuracy: pl.DataFrame, csv_path: Path, db_path: Path) -> None:
    summary = store.query(
        """SELECT tenant,
                  sum(gpu_seconds) FILTER (WHERE kind = 'busy') / 3600 AS used_h,
                  sum(gpu_seconds) FILTER (WHERE kind = 'allocated_idle') / 3600 AS idle_h,
                  sum(gpu_seconds) FILTER (WHERE kind = 'unmeasured') / 3600 AS unmeasured_h,
                  sum(gpu_seconds) FILTER (WHERE kind = 'unallocated') / 3600 AS unallocated_h
           FROM ledger GROUP BY tenant HAVING sum(gpu_seconds) > 0 ORDER BY tenant"""
    )
    costs, currency, grand = _costs(csv_path)
    acc = {r["tenant"]: r for r in accuracy.iter_rows(named=True)}
    table = Table(title="GPU-hours by tenant: used, allocated-idle, unmeasured, unallocated; "
                  "cost; busy error vs the simulator's ground truth")
    for col in ("tenant", "used", "idle", "unmeas.", "unalloc.", currency, "error"):
        table.add_column(col, justify="left" if col == "tenant" else "right", no_wrap=True)
    for r in summary.iter_rows(named=True):
        table.add_row(r["tenant"], _h(r["used_h"]), _h(r["idle_h"]), _h(r["unmeasured_h"]),
                      _h(r["unallocated_h"]), str(costs.get(r["tenant"], "-")), _err(acc.get(r["tenant"])))
    console.print(table)
    dead = store.count("dead_letters")
    console.print(f"messages stored: {store.count('messages')}, dead letters: {dead}, "
                  f"ledger rows: {store.count('ledger')}")
    console.print(f"database:   {db_path}\nchargeback: {csv_path}  (total {grand} {currency})")


def _costs(csv_path: Path) -> tuple[dict[str, Decimal], str, Decimal]:
    """Per-tenant BilledCost from the chargeback CSV, its currency and grand total."""
    frame = pl.read_csv(csv_path, infer_schema=False)
    totals: dict[str, Decimal] = {}
    for tenant, cost in zip(frame["SubAccountId"], frame["BilledCost"]):
        totals[tenant] = totals.get(tenant, Decimal(0)) + Decimal(cost)
    currency = frame["BillingCurrency"][0] if frame.height else ""
    return totals, currency, sum(totals.values(), Decimal(0))


def _err(row: dict[str, Any] | None) -> str:
    if row is None or (abs(row["true_s"]) < 1.0 and abs(row["ledger_s"]) < 1.0):
        return "-"  # no work to compare (under a GPU-second either way)
    if row["true_s"] == 0:
        return "no truth"
    return f"{row['error_pct']:+.2f}%"


def _h(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _serve(args: argparse.Namespace, db_path: Path, console: Console) -> int:
    import uvicorn

    from gpuledger.api.app import create_app
    from gpuledger.api.tokens import create_token

    with Store(db_path) as store:  # the demo's own admin token (auth stays on, as in production)
        _, token = create_token(store, "admin", name="demo")
    app = create_app(str(db_path), prices=default_price_book())
    base = f"http://{args.host}:{args.port}"
    console.print(
        f"\nServing the API until Ctrl-C. An admin token for this demo (shown once):\n  {token}\n"
        f"  {base}/#token={token}  (the showback page)\n"
        f"  curl -H 'Authorization: Bearer {token}' '{base}/v1/showback?group_by=tenant'\n"
        f"  {base}/docs  (OpenAPI)",
        soft_wrap=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
