"""``gpuledger`` command line: one subcommand per pipeline stage, plus the demo.

Errors the project raises on purpose print ``error: ...`` and ``hint: ...``
and exit 2, with no traceback wall.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from gpuledger import __version__
from gpuledger.config import Settings
from gpuledger.errors import GpuledgerError

_EPILOG = "Settings also come from GPULEDGER_* environment variables; see docs/configuration.md."


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpuledger",
        description="GPU telemetry, attribution and chargeback: who used which GPU, who held one idle, "
        "and what it cost - per process and tenant, even on time-sliced, MPS and MIG GPUs.",
        epilog=_EPILOG,
        formatter_class=_formatter,
    )
    p.add_argument("--version", action="version", version=f"gpuledger {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    a = sub.add_parser(
        "agent", formatter_class=_formatter, epilog=_EPILOG,
        help="sample this node's GPUs every tick and publish to Kafka",
        description="Node agent (a DaemonSet with hostPID on every GPU node). Each tick it integrates the "
        "driver's utilization sample buffers, per-process samples, memory and the energy counter, maps host "
        "PIDs to pods, and publishes one wire-schema-v1 message per node to Kafka.\n\n"
        "  gpuledger agent --backend nvml --kafka broker:9092\n"
        "  gpuledger agent --backend sim --ticks 5          # a simulated 8-GPU node, prints each tick",
    )
    a.add_argument("--backend", choices=["nvml", "sim"], default="nvml",
                   help="nvml: the local NVIDIA driver; sim: one simulated node (default: nvml)")
    a.add_argument("--kafka", metavar="BOOTSTRAP", default=settings.kafka_bootstrap,
                   help="publish to these Kafka bootstrap servers; without it, print a summary per tick")
    a.add_argument("--topic", default=settings.kafka_topic, help="Kafka topic (default: %(default)s)")
    a.add_argument("--interval", type=float, default=settings.interval_s, metavar="SECONDS",
                   help="tick length in seconds (default: %(default)s)")
    a.add_argument("--node", default=settings.node_name, help="node name on messages (default: hostname)")
    a.add_argument("--ticks", type=int, default=None, help="stop after this many ticks (default: run until Ctrl-C)")
    a.add_argument("--seed", type=int, default=7, help="simulator seed (with --backend sim)")

    i = sub.add_parser(
        "ingest", formatter_class=_formatter, epilog=_EPILOG,
        help="consume the Kafka topic into DuckDB (idempotent, dead-letters bad input)",
        description="Ingest worker: reads the topic as a consumer group, decodes batches, writes them to "
        "DuckDB in one transaction (idempotent on agent_id, boot_id, seq) and only then commits offsets. "
        "Undecodable messages go to the dead_letters table with the reason.",
    )
    i.add_argument("--kafka", metavar="BOOTSTRAP", default=settings.kafka_bootstrap, required=settings.kafka_bootstrap is None,
                   help="Kafka bootstrap servers")
    i.add_argument("--topic", default=settings.kafka_topic, help="topic (default: %(default)s)")
    i.add_argument("--group", default=settings.kafka_group, help="consumer group (default: %(default)s)")
    i.add_argument("--db", default=settings.db_path, help="DuckDB file (default: %(default)s)")
    i.add_argument("--max-idle", type=float, default=None, metavar="SECONDS",
                   help="exit after this long with no new messages (default: run until Ctrl-C)")

    t = sub.add_parser(
        "attribute", formatter_class=_formatter, epilog=_EPILOG,
        help="run the ledger: every GPU-second and joule to a tenant",
        description="Attribution job. Splits each GPU's capacity per interval into busy (by per-process "
        "evidence), allocated-idle (by allocation share) and unallocated, and books it to tenants. "
        "Incremental by default; --full re-attributes everything (after a tenancy-rule change).",
    )
    t.add_argument("--db", default=settings.db_path, help="DuckDB file (default: %(default)s)")
    t.add_argument("--full", action="store_true", help="re-attribute every stored interval")
    t.add_argument("--tenancy", default=settings.tenancy_path, metavar="TOML", help="tenancy rules file")

    s = sub.add_parser(
        "serve", formatter_class=_formatter, epilog=_EPILOG,
        help="serve the showback API (FastAPI) over the DuckDB file",
        description="Showback API: /healthz, /v1/showback, /v1/chargeback.csv; OpenAPI at /docs. Opens the "
        "database read-only, so it can run beside a writing ingest worker.",
    )
    s.add_argument("--db", default=settings.db_path, help="DuckDB file (default: %(default)s)")
    s.add_argument("--host", default=settings.api_host, help="bind address (default: %(default)s)")
    s.add_argument("--port", type=int, default=settings.api_port, help="port (default: %(default)s)")
    s.add_argument("--prices", default=settings.prices_path, metavar="TOML", help="price book file")

    e = sub.add_parser(
        "export", formatter_class=_formatter, epilog=_EPILOG,
        help="write the monthly chargeback file for finance",
        description="Exports. `export chargeback --month 2026-10` writes one row per tenant x GPU model "
        "(plus the platform's unallocated line) with FOCUS column names; the BilledCost total equals the "
        "fleet's capacity cost to the cent.",
    )
    e.add_argument("what", choices=["chargeback"], help="which export")
    e.add_argument("--month", required=True, metavar="YYYY-MM", help="billing month (UTC)")
    e.add_argument("--db", default=settings.db_path, help="DuckDB file (default: %(default)s)")
    e.add_argument("--out", default=None, metavar="PATH", help="output file (default: stdout)")
    e.add_argument("--prices", default=settings.prices_path, metavar="TOML", help="price book file")

    d = sub.add_parser(
        "demo", formatter_class=_formatter, epilog=_EPILOG,
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
    d.add_argument("--port", type=int, default=settings.api_port, help="API port (default: %(default)s)")
    d.add_argument("--host", default=settings.api_host, help="API bind address (default: %(default)s)")
    d.add_argument("--nodes", type=int, default=4, help="simulated nodes (default: %(default)s)")
    d.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default: %(default)s)")
    d.add_argument("--hours", type=float, default=24.0, help="simulated hours (default: %(default)s)")
    d.add_argument("--tick", type=float, default=60.0, help="agent tick in simulated seconds (default: %(default)s)")
    d.add_argument("--seed", type=int, default=7, help="simulator seed (default: %(default)s)")
    d.add_argument("--kafka", metavar="BOOTSTRAP", default=None,
                   help="go through this Kafka broker instead of the embedded in-process transport")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings()
    args = build_parser(settings).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(_dispatch(args, settings) or 0)
    except GpuledgerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int | None:
    if args.command == "agent":
        from gpuledger.agent.run import run_agent

        return run_agent(args, settings)
    if args.command == "ingest":
        from gpuledger.ingest.consumer import run_ingest

        run_ingest(args.kafka, args.topic, args.group, args.db,
                   client_settings=settings.kafka_client_settings(),
                   max_idle_s=args.max_idle)
        return 0
    if args.command == "attribute":
        return _attribute(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "export":
        return _export(args)
    if args.command == "demo":
        from gpuledger.demo import run_demo

        return run_demo(args)
    raise AssertionError(args.command)


def _attribute(args: argparse.Namespace) -> int:
    from gpuledger.analytics.job import run_attribution
    from gpuledger.analytics.tenancy import TenancyRules
    from gpuledger.store import Store

    rules = TenancyRules.load(args.tenancy) if args.tenancy else TenancyRules()
    with Store(args.db) as store:
        result = run_attribution(store, rules, full=args.full)
    print(f"attributed {result.messages} messages into {result.ledger_rows} ledger rows")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gpuledger.api.app import create_app

    if not Path(args.db).exists():
        raise GpuledgerError(f"no database at {args.db}", hint="run `gpuledger ingest` or `gpuledger demo` first, or pass --db")
    app = create_app(args.db, prices=_prices(args.prices))
    print(f"gpuledger API on http://{args.host}:{args.port}/  (OpenAPI: /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _export(args: argparse.Namespace) -> int:
    from gpuledger.analytics.chargeback import chargeback_csv
    from gpuledger.store import Store

    with Store(args.db, read_only=True) as store:
        text = chargeback_csv(store, args.month, _prices(args.prices))
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _prices(path: str | None):  # type: ignore[no-untyped-def]
    from gpuledger.analytics.prices import default_price_book, load_price_book

    return load_price_book(path) if path else default_price_book()


if __name__ == "__main__":
    sys.exit(main())
