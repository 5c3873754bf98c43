"""``gpuledger demo``: the whole pipeline on a simulated fleet, no outside services.

simulator -> agent samplers -> transport (in-process, or Kafka with --kafka)
-> ingest -> DuckDB -> attribution -> chargeback CSV -> API. At the end the
ledger is compared with the simulator's ground truth per tenant. This is
wiring, so it may import the simulator (``gpuledger.sim``); production
modules never do. The pipeline's modules are imported when the demo runs, not
when the command line is built, so every other command starts as fast as before.
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuledger.cli.common import add_command, free_to_serve, setting_flags
from gpuledger.config import Settings

if TYPE_CHECKING:
    import polars as pl
    from rich.console import Console
    from rich.progress import Progress

    from gpuledger.analytics.tenancy import TenancyRules
    from gpuledger.ingest.consumer import Ingestor
    from gpuledger.store import Store

DEMO_START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


def demo_rules() -> TenancyRules:
    """The demo's tenancy rules: each demo namespace is one tenant, named by its ``team`` label.

    About one demo pod in seven lacks the ``team`` label (gpuledger/sim/fleets.py), and the
    default rules fall back to the namespace for those: ``team-nlp`` would stand beside ``nlp``
    as a second tenant. The namespace overrides say what an operator would write for this fleet.
    """
    from gpuledger.analytics.tenancy import TenancyRules
    from gpuledger.sim.fleets import TENANTS

    return TenancyRules(version="demo-1", overrides={ns: team for ns, team, _, _ in TENANTS})
DEMO_TOPIC = "gpuledger.samples.v1"


def register(sub: Any, settings: Settings) -> None:
    d = add_command(
        sub, "demo", run,
        help="simulate a small fleet for a day through the whole pipeline",
        description="Simulates a mixed fleet (exclusive, time-sliced, fractional and MIG GPUs; pod workloads "
        "shaped by real Alibaba GPU traces), replays one day through agent -> transport -> ingest -> DuckDB -> "
        "attribution, writes the month's chargeback CSV, checks attribution against the simulator's ground "
        "truth, then serves the API until Ctrl-C.\n\n"
        "  gpuledger demo                         # then open the printed URLs\n"
        "  gpuledger demo --no-serve --out DIR    # write DIR/gpuledger.duckdb and DIR/chargeback-*.csv, exit",
    )
    d.add_argument("--out", default="demo-out", help="output directory (default: %(default)s)")
    d.add_argument("--no-serve", action="store_true", help="exit after writing the outputs")
    setting_flags(d, settings, "--port", "--host")
    d.add_argument("--nodes", type=int, default=4, help="simulated nodes (default: %(default)s)")
    d.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default: %(default)s)")
    d.add_argument("--hours", type=float, default=24.0, help="simulated hours (default: %(default)s)")
    d.add_argument("--tick", type=float, default=60.0, help="agent tick in simulated seconds (default: %(default)s)")
    d.add_argument("--seed", type=int, default=7, help="simulator seed (default: %(default)s)")
    d.add_argument("--kafka", metavar="BOOTSTRAP", default=None,
                   help="go through this Kafka broker instead of the embedded in-process transport")


@dataclass(frozen=True)
class DemoOptions:
    """One demo run (where the API listens comes from the settings: api_host, api_port)."""

    out: str = "demo-out"
    nodes: int = 4
    gpus_per_node: int = 8
    hours: float = 24.0
    tick: float = 60.0  # simulated seconds per agent tick
    seed: int = 7
    kafka: str | None = None  # None: the embedded in-process transport
    serve: bool = True  # serve the API until Ctrl-C after writing the outputs


def run(args: argparse.Namespace, settings: Settings) -> int:
    options = DemoOptions(args.out, args.nodes, args.gpus_per_node, args.hours, args.tick, args.seed, args.kafka,
                          serve=not args.no_serve)
    return run_demo(options, settings)


def run_demo(options: DemoOptions, settings: Settings, console: Console | None = None) -> int:
    if options.serve:  # before the pipeline runs, not after it has printed a token and URLs
        free_to_serve(settings.api_host, settings.api_port)
    from rich.console import Console

    from gpuledger import wire
    from gpuledger.agent.sampler import Sampler
    from gpuledger.analytics.chargeback import chargeback_csv
    from gpuledger.analytics.job import run_attribution
    from gpuledger.analytics.prices import default_price_book
    from gpuledger.ingest.consumer import Ingestor
    from gpuledger.sim.accuracy import compare
    from gpuledger.sim.fleetsim import demo_fleet
    from gpuledger.store import Store

    console = console or Console()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    db_path = out / "gpuledger.duckdb"
    for stale in (db_path, Path(f"{db_path}.wal")):
        stale.unlink(missing_ok=True)

    start_us = int(DEMO_START.timestamp() * 1e6)
    fleet = demo_fleet(n_nodes=options.nodes, gpus_per_node=options.gpus_per_node, seed=options.seed,
                       horizon_s=options.hours * 3600, start_us=start_us)
    samplers = [Sampler(node, node, node=node.spec.name, boot_id=f"demo-{options.seed}", cluster=fleet.spec.cluster)
                for node in fleet.nodes]  # one cluster: the demo's fleet names none (the default cluster)
    publisher, subscriber = _transport(options)
    store = Store(db_path)
    ingestor = Ingestor(store, subscriber)
    rules = demo_rules()

    n_ticks = int(round(options.hours * 3600 / options.tick))
    console.print(
        f"[bold]gpuledger demo[/]: {options.nodes} nodes x {options.gpus_per_node} GPUs, "
        f"{options.hours:g} simulated hours at a {options.tick:g} s tick, from {DEMO_START:%Y-%m-%d %H:%M} UTC"
    )
    console.print("tenancy rules demo-1: each namespace is its team's tenant ("
                  + ", ".join(f"{ns} -> {team}" for ns, team in rules.overrides.items() if ns != team)
                  + "), so the pods that lack a team label do not fall back to their namespace", soft_wrap=True)
    for sampler in samplers:
        sampler.tick()  # prime sample-buffer timestamps and energy counters
    with _progress(console) as progress:
        task = progress.add_task("simulate + ingest", total=n_ticks)
        for t in range(n_ticks):
            fleet.advance(options.tick)
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
    if not options.serve:
        return 0
    return _serve(settings, db_path, console)


def _transport(options: DemoOptions) -> tuple[Any, Any]:
    from gpuledger.transport import MemoryTransport

    if not options.kafka:
        memory = MemoryTransport(DEMO_TOPIC)
        return memory, memory
    from gpuledger.transport import KafkaPublisher, KafkaSubscriber

    return (
        KafkaPublisher(options.kafka, DEMO_TOPIC),
        KafkaSubscriber(options.kafka, DEMO_TOPIC, f"gpuledger-demo-{options.seed}", max_poll_interval_ms=5000),
    )


def _drain(ingestor: Ingestor) -> None:
    while ingestor.step(timeout_s=0.05).records:
        pass


def _progress(console: Console) -> Progress:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description:<18}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


def _report(console: Console, store: Store, accuracy: pl.DataFrame, csv_path: Path, db_path: Path) -> None:
    from rich.table import Table

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
    import polars as pl

    frame = pl.read_csv(csv_path, infer_schema=False)
    totals: dict[str, Decimal] = {}
    for tenant, cost in zip(frame["SubAccountId"], frame["BilledCost"], strict=True):
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


def _serve(settings: Settings, db_path: Path, console: Console) -> int:
    import uvicorn

    from gpuledger.analytics.focus import ExportContext
    from gpuledger.analytics.prices import default_price_book
    from gpuledger.api.app import create_app
    from gpuledger.api.tokens import create_token
    from gpuledger.store import Store

    with Store(db_path) as store:  # the demo's own admin token (auth stays on, as in production)
        _, token = create_token(store, "admin", name="demo")
    app = create_app(str(db_path), prices=default_price_book(), export_context=ExportContext.from_settings(settings))
    base = f"http://{settings.api_host}:{settings.api_port}"
    console.print(
        f"\nServing the API until Ctrl-C. An admin token for this demo (shown once):\n  {token}\n"
        f"  {base}/#token={token}  (the showback page; this URL carries the admin token: share it like a password)\n"
        f"  curl -H 'Authorization: Bearer {token}' '{base}/v1/showback?group_by=tenant'\n"
        f"  {base}/docs  (OpenAPI)",
        soft_wrap=True,
    )
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="warning")
    return 0
