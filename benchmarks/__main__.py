"""Run the benchmarks: ``python -m benchmarks [--quick] [NAME ...]``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
from pathlib import Path

import benchmarks


def main(argv: list[str] | None = None) -> int:
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="Measure gpuledger's speed and memory.")
    p.add_argument("only", nargs="*", metavar="NAME",
                   help=f"benchmarks to run (default: all of {', '.join(names) or 'none yet'})")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.add_argument("--json", metavar="PATH", help="also write every row as JSON lines here")
    args = p.parse_args(argv)
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}")
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    out = Path(args.json).open("w") if args.json else None
    for name in args.only or names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        print(f"\n## {name}")
        for row in module.run(quick=args.quick):
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            if out:
                out.write(json.dumps({"bench": name, **row}) + "\n")
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
