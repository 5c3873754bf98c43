"""Run the benchmarks: ``python -m benchmarks [--quick] [--json DIR] [NAME ...]``."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import benchmarks
from benchmarks import result


def main(argv: list[str] | None = None) -> int:
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="Measure gpuledger's speed and memory.")
    p.add_argument("only", nargs="*", metavar="NAME",
                   help=f"benchmarks to run (default: all of {', '.join(names) or 'none yet'})")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run (marked 'quick' in the JSON)")
    p.add_argument("--json", metavar="DIR", type=Path,
                   help="also write one JSON result per benchmark, DIR/<name>.json (machine, load average, "
                        "git commit, parameters, figures with units, targets); benchmarks/results/ is what "
                        "docs/benchmarks.md is generated from (python -m benchmarks.report)")
    args = p.parse_args(argv if argv is not None else sys.argv[1:])
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}")
    if args.json is not None and args.json.exists() and not args.json.is_dir():
        print(f"error: --json {args.json} is a file\nhint: give a directory; each benchmark writes DIR/<name>.json",
              file=sys.stderr)
        return 2
    selected = args.only or names
    if len(selected) > 1:
        return _each_in_its_own_process(selected, args.quick, args.json)
    command = shlex.join(["python", "-m", "benchmarks", *(argv if argv is not None else sys.argv[1:])])
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {' '.join(map(str, result.load_average()))}")
    for name in selected:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        print(f"\n## {name}")
        doc = result.run_benchmark(name, module, quick=args.quick, command=command, on_row=_print_row)
        for t in doc["targets"]:
            verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
            print(f"  target: {t['what']} {t['op']} {t['value']:g} {t['unit']}: measured {t['measured']} ({verdict})")
        if args.json is not None:
            print(f"  wrote {result.write(doc, args.json)}")
    return 0


def _each_in_its_own_process(names: list[str], quick: bool, json_dir: Path | None) -> int:
    """Run each benchmark in a fresh interpreter, one after the other.

    Linux keeps a process's peak RSS (``ru_maxrss``) across exec, and the benchmarks that report peak
    memory measure it in spawned children: in one long-lived runner, a child would start at the peak of
    every benchmark run before it. A fresh runner per benchmark keeps each figure its own.
    """
    failed = []
    for name in names:
        flags = [*(["--quick"] if quick else []), *(["--json", str(json_dir)] if json_dir is not None else [])]
        if subprocess.run([sys.executable, "-m", "benchmarks", *flags, name], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"error: benchmark(s) failed: {', '.join(failed)}\nhint: run one alone to see its traceback: "
              f"python -m benchmarks {failed[0]}", file=sys.stderr)
        return 1
    return 0


def _print_row(row: dict[str, object]) -> None:
    print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    sys.exit(main())
