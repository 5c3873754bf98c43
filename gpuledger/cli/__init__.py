"""``gpuledger`` command line: one subcommand per pipeline stage, plus the demo.

One module per command group, each adding its subcommands with a handler
(``set_defaults(handler=...)``):

    agent.py    agent                              (the node agent; builds the simulated node for --backend sim)
    ingest.py   ingest, merge, compact, retention  (Kafka -> DuckDB or the lake, and storage upkeep)
    lake.py     lake-maintain                      (the lake's compaction and snapshot expiry; retention/compact --lake)
    attribute.py attribute, explain                (the ledger, and the rows behind a tenant's line)
    serve.py    serve, token                       (the API, and its tokens)
    export.py   export                             (the FOCUS file and its reconciliation)
    report.py   report, units                      (economics, budgets, work units; importing work units)
    demo.py     demo                               (the whole pipeline on a simulated fleet)

:func:`main` reads the settings once (environment, then the flags that mirror
them; common.py), and hands the handler a validated, frozen ``Settings``.
Errors the project raises on purpose print ``error: ...`` and ``hint: ...``
and exit 2, with no traceback wall. docs/cli.md lists every command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gpuledger import __version__
from gpuledger.cli import agent, attribute, demo, export, ingest, lake, report, serve
from gpuledger.cli.common import EPILOG, HelpFormatter, flag_values
from gpuledger.config import Settings, load_settings, with_changes
from gpuledger.errors import GpuledgerError

__all__ = ["build_parser", "main", "parse"]

_GROUPS = (agent, ingest, lake, attribute, serve, export, report, demo)  # the order of `gpuledger --help`


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """The whole command line, defaults from ``settings``."""
    p = argparse.ArgumentParser(
        prog="gpuledger",
        description="GPU telemetry, attribution and chargeback: who used which GPU, who held one idle, "
        "and what it cost - per process and tenant, even on time-sliced, MPS and MIG GPUs.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"gpuledger {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in _GROUPS:
        group.register(sub, settings)
    return p


def parse(argv: Sequence[str] | None = None, base: Settings | None = None) -> tuple[argparse.Namespace, Settings]:
    """(parsed flags, the settings they give): ``base`` (default: the environment's) with the flags applied."""
    base = base if base is not None else load_settings()
    parser = build_parser(base)
    args = parser.parse_args(argv)
    return args, with_changes(base, flag_values(parser, args))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args, settings = parse(argv)
        if args.command != "agent":  # the node agent never opens a database (nor loads DuckDB): its memory budget
            from gpuledger.store import configure as configure_store

            configure_store(memory_limit=settings.duckdb_memory_limit)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # kafka-python logs every failed connect, retry and undelivered record (about 60 lines in 20 s while a
        # broker is down); its failures reach us as TransportError, and the agent's spool and ingest log one
        # line per state change instead. -v shows the library's own lines again.
        logging.getLogger("kafka").setLevel(logging.DEBUG if args.verbose else logging.CRITICAL)
        return int(args.handler(args, settings) or 0)
    except GpuledgerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
