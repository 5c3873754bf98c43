"""One benchmark run as a JSON document: what ran, where, when, which figures, against which targets.

``python -m benchmarks --json DIR`` writes ``DIR/<name>.json`` per benchmark;
the stored runs in ``benchmarks/results/`` are what ``docs/benchmarks.md`` and
the README's status table are generated from (``benchmarks/report.py``), so a
figure is written down once. Schema version 1::

    {
      "schema": 1,
      "benchmark": "ingest",                      # bench_<name>.py
      "title": "...", "method": "...",            # the module docstring: what was measured, how
      "mode": "quick" | "full",                   # --quick: smaller sizes, a smoke run
      "command": "python -m benchmarks --quick --json benchmarks/results ingest",
      "started_utc": "2026-12-03T21:10:00Z", "wall_s": 123.4,
      "git": {"commit": "<40 hex>" | null, "dirty": false | null},   # dirty: the measured code differed
      "machine": {"cpus": 2, "cpu_model": "...", "ram_gib": 23.4, "platform": "...", "python": "3.11.2",
                  "load_avg_before": [1.2, 0.9, 0.8], "load_avg_after": [...]},   # 1, 5, 15 min
      "packages": {"duckdb": "1.4.2", ...},
      "parameters": {...},                        # the sizes this mode ran with
      "units": {"p99_ms": "ms", ...},             # every figure's unit (labels have none)
      "rows": [{...}, ...],                       # what run() returned, in order
      "targets": [{"what", "figure", "where", "op", "value", "unit", "source",
                   "measured", "met", "note"}, ...]
    }

A bench module declares ``UNITS`` (figure -> unit), ``TARGETS`` (``Target``s;
may be empty) and ``parameters(quick) -> dict``; ``run(quick)`` returns the rows.
"""

from __future__ import annotations

import json
import operator
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

SCHEMA = 1
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: Packages whose version moves the figures; recorded with every run.
PACKAGES = ("duckdb", "polars", "pyarrow", "numpy", "numba", "kafka-python", "msgspec", "fastapi", "uvicorn")
OPS: dict[str, Callable[[Any, Any], bool]] = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


@dataclass(frozen=True)
class Target:
    """A goal for one figure of one row: ``figure`` of the row matching ``where``, compared by ``op``."""

    what: str  # the reader's words: "agent CPU per tick, with encoding and /metrics"
    figure: str  # the row key measured
    op: str  # "<=", "<", ">=", ">"
    value: float
    unit: str
    source: str  # where the goal was set: "issue 3"
    where: Mapping[str, Any] = field(default_factory=dict)  # row selector: every key equal

    def evaluate(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The target with what this run measured: ``measured`` None (and a ``note``) when the row is
        absent or skipped; ``met`` None then too."""
        out = {**asdict(self), "where": dict(self.where), "measured": None, "met": None, "note": None}
        row = next((r for r in rows if all(r.get(k) == v for k, v in self.where.items())), None)
        if row is None:
            out["note"] = f"no row with {_selector(self.where)} in this run"
        elif row.get(self.figure) is None:
            out["note"] = f"not measured: {row['skipped']}" if row.get("skipped") else f"{self.figure} missing"
        else:
            out["measured"] = row[self.figure]
            out["met"] = bool(OPS[self.op](row[self.figure], self.value))
        return out


def _selector(where: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in where.items()) or "any row"


def machine() -> dict[str, Any]:
    """Cores, CPU model, RAM and platform of this machine (load averages are added around the run)."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "cpu_model": None, "ram_gib": None,
                            "platform": platform.platform(), "python": platform.python_version()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu_model"] = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                                  if line.startswith("model name")), None)
        meminfo = Path("/proc/meminfo").read_text()
        kib = next(int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:"))
        info["ram_gib"] = round(kib / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass  # not Linux: left None, said so by the null
    return info


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages, rounded to 0.01."""
    return [round(x, 2) for x in os.getloadavg()]


#: What a run measures: a change here (uncommitted) makes the run's commit not the code that ran.
#: Docs, tests, the stored results and the report generator do not change a figure.
MEASURED_PATHS = ("gpuledger", "benchmarks", "pyproject.toml", ":(exclude)benchmarks/results",
                  ":(exclude)benchmarks/report.py")


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """The commit measured and whether the measured code (MEASURED_PATHS) differed from it; nulls outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=30).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--", *MEASURED_PATHS], cwd=root,
                                capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def packages() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_benchmark(name: str, module: ModuleType, *, quick: bool, command: str,
                  on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``module.run(quick)`` and wrap its rows in the result document (see the module doc)."""
    doc = (module.__doc__ or name).strip()
    title, _, method = doc.partition("\n")
    started = datetime.now(UTC)
    before = load_average()
    t0 = time.perf_counter()
    rows = []
    for row in module.run(quick=quick):
        rows.append(row)
        if on_row is not None:
            on_row(row)
    wall = time.perf_counter() - t0
    declared: Mapping[str, str] = getattr(module, "UNITS", {})
    units: dict[str, str | None] = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, str) or key in units:
                continue  # labels (variant, scenario, case, skipped reason) carry no unit
            units[key] = declared.get(key)
            if units[key] is None and value is not None:
                print(f"warning: bench_{name}.py: figure {key!r} has no unit in UNITS", file=sys.stderr)
    return {
        "schema": SCHEMA, "benchmark": name, "title": title.strip(), "method": method.strip(),
        "mode": "quick" if quick else "full", "command": command,
        "started_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "wall_s": round(wall, 1),
        "git": git_state(), "machine": {**machine(), "load_avg_before": before, "load_avg_after": load_average()},
        "packages": packages(),
        "parameters": module.parameters(quick) if hasattr(module, "parameters") else {},
        "units": units, "rows": rows,
        "targets": [t.evaluate(rows) for t in getattr(module, "TARGETS", ())],
    }


def write(result: Mapping[str, Any], directory: Path) -> Path:
    """``directory/<benchmark>.json``, stable key order, one trailing newline."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{result['benchmark']}.json"
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    return path


def load(directory: Path = RESULTS) -> list[dict[str, Any]]:
    """Every stored result in ``directory`` (``*.json``), checked against the schema version."""
    out = []
    for path in sorted(directory.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise ValueError(f"{path}: not a schema-{SCHEMA} benchmark result")
        out.append(doc)
    return out
