"""``gpuledger export``: the month's FOCUS chargeback file, or its reconciliation report."""

from __future__ import annotations

import argparse
from typing import Any

from gpuledger.cli.common import add_command, lake_config, lake_metadata, price_book, setting_flags
from gpuledger.config import Settings


def register(sub: Any, settings: Settings) -> None:
    e = add_command(
        sub, "export", export,
        help="write the monthly chargeback file for finance",
        description="Exports. `export chargeback --month 2026-10` writes one row per tenant x GPU model "
        "(plus the platform's unallocated line) with FOCUS 1.4 columns (each row a split cost allocation of a GPU "
        "pool; --focus-version 1.2 for the 1.2 columns); the BilledCost total equals the "
        "fleet's capacity cost to the cent. --final closes the month (later exports return the same bytes; "
        "later changes become Correction rows in the next open month). `export reconciliation` checks a "
        "month and exits 1 when it does not add up. See docs/chargeback.md.\n\n"
        "  gpuledger export chargeback --month previous --final --out exports/\n"
        "  gpuledger export reconciliation --month 2026-10\n\n"
        "With --lake CATALOG_URI --warehouse PATH_OR_S3 it reads the month's rollups from the lake (one month "
        "partition, and those of the closed months it corrects) into a temporary DuckDB file bounded by "
        "--memory-limit, and a --final close is recorded in the lake's metadata database (docs/lake.md):\n\n"
        "  gpuledger export chargeback --month previous --final --lake postgresql+psycopg://gl@pg/gl \\\n"
        "      --warehouse s3://gpuledger-lake/raw --out exports/",
    )
    e.add_argument("what", choices=["chargeback", "reconciliation"],
                   help="the FOCUS file, or its reconciliation report")
    e.add_argument("--month", required=True, metavar="YYYY-MM", help="billing month (UTC), or `previous`")
    setting_flags(e, settings, "--db", "--memory-limit")
    e.add_argument("--out", default=None, metavar="PATH", help="output file or directory (default: stdout)")
    setting_flags(e, settings, "--prices")
    e.add_argument("--format", choices=["csv", "parquet", "txt", "json"], default=None,
                   help="chargeback: csv (default) or parquet; reconciliation: txt (default) or json")
    e.add_argument("--final", action="store_true", help="close the month: later exports return this exact file, "
                   "later changes become corrections (writes the database; see docs/chargeback.md)")
    e.add_argument("--force", action="store_true",
                   help="with --final: close even when the month's capacity is far below the fleet's (under half "
                   "the GPU-hours its GPUs should have booked: usually ingest or attribution was down)")
    setting_flags(e, settings, "--charge-period", "--focus-version", "--idle-policy")
    setting_flags(e, settings, "--lake", "--warehouse", "--s3-endpoint", "--lake-metadata")


def export(args: argparse.Namespace, settings: Settings) -> int:
    from gpuledger.analytics.export_cmd import ExportRequest, run_export
    from gpuledger.analytics.focus import ExportContext

    request = ExportRequest(args.what, args.month, settings.db_path, out=args.out, format=args.format,
                            final=args.final, force=args.force)
    lake = lake_config(settings)
    if lake is not None:
        from gpuledger.analytics.export_cmd import run_lake_export
        from gpuledger.store.lake import LakeStore

        return run_lake_export(request, LakeStore(lake), lake_metadata(settings, lake),
                               price_book(settings.prices_path), ExportContext.from_settings(settings))
    return run_export(request, price_book(settings.prices_path), ExportContext.from_settings(settings))
