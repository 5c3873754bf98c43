"""Benchmark figures are written down once: docs/benchmarks.md and the README's status table are
generated from the stored runs (benchmarks/results/*.json), and a stored run says where and when
it was measured."""

from __future__ import annotations

import json
import os
import pkgutil
import re
import types
from pathlib import Path

import pytest

import benchmarks
from benchmarks import report, result
from benchmarks.__main__ import main as bench_main
from benchmarks.result import Target

ROOT = Path(__file__).resolve().parents[1]


def test_the_benchmarks_doc_is_what_the_stored_runs_generate() -> None:
    doc, _ = report.render_all()
    assert (ROOT / "docs" / "benchmarks.md").read_text() == doc, \
        "docs/benchmarks.md is stale or edited by hand: run python -m benchmarks.report (make bench-doc)"


def test_the_readme_status_table_is_what_the_stored_runs_generate() -> None:
    _, readme = report.render_all()
    assert (ROOT / "README.md").read_text() == readme, \
        "the README's status table is stale or edited by hand: run python -m benchmarks.report (make bench-doc)"


def test_every_benchmark_has_one_stored_run() -> None:
    modules = {m.name[len("bench_"):] for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")}
    stored = [r["benchmark"] for r in result.load()]
    assert sorted(stored) == sorted(modules), "python -m benchmarks --json benchmarks/results NAME for the missing ones"


@pytest.mark.parametrize("run", result.load(), ids=lambda r: r["benchmark"])
def test_a_stored_run_says_where_when_and_in_which_units(run: dict) -> None:
    assert run["mode"] in ("quick", "full")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", run["started_utc"])
    assert run["git"]["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", run["git"]["commit"])
    m = run["machine"]
    assert m["cpus"] >= 1 and len(m["load_avg_before"]) == 3 and len(m["load_avg_after"]) == 3
    assert run["command"].startswith("python -m benchmarks") and run["rows"]
    figures = {k for row in run["rows"] for k, v in row.items() if not isinstance(v, str) and v is not None}
    assert not sorted(k for k in figures if not run["units"].get(k)), "add these to the bench module's UNITS"


@pytest.mark.parametrize("run", result.load(), ids=lambda r: r["benchmark"])
def test_a_stored_verdict_follows_from_the_stored_figures(run: dict) -> None:
    for stored in run["targets"]:
        target = Target(**{k: stored[k] for k in ("what", "figure", "op", "value", "unit", "source", "where")})
        assert target.evaluate(run["rows"]) == stored


def fake_bench() -> types.ModuleType:
    mod = types.ModuleType("bench_fake")
    mod.__doc__ = "A fake benchmark.\n\nWhat it measures, with ``code``."
    mod.UNITS = {"p99_ms": "ms", "clients": "count"}  # type: ignore[attr-defined]
    mod.TARGETS = (  # type: ignore[attr-defined]
        Target("p99 at 5 clients", "p99_ms", "<", 50.0, "ms", "a test", {"case": "load"}),
        Target("p99 from wrk", "p99_ms", "<", 50.0, "ms", "a test", {"case": "wrk"}),
        Target("p50", "p50_ms", "<", 5.0, "ms", "a test", {"case": "absent"}),
    )
    mod.parameters = lambda quick: {"clients": 5 if quick else 50}  # type: ignore[attr-defined]
    mod.run = lambda quick: [  # type: ignore[attr-defined]
        {"case": "load", "clients": 5, "p99_ms": 62.5},
        {"case": "wrk", "skipped": "wrk is not installed"},
    ]
    return mod


def test_a_run_becomes_one_json_document_with_machine_commit_and_verdicts(tmp_path: Path) -> None:
    doc = result.run_benchmark("fake", fake_bench(), quick=True, command="python -m benchmarks --quick fake")
    back = json.loads(result.write(doc, tmp_path).read_text())
    assert (tmp_path / "fake.json").exists() and back == doc
    assert back["mode"] == "quick" and back["parameters"] == {"clients": 5}
    assert back["title"] == "A fake benchmark." and "``code``" in back["method"]
    assert back["machine"]["cpus"] == os.cpu_count() and len(back["machine"]["load_avg_before"]) == 3
    assert re.fullmatch(r"[0-9a-f]{40}", back["git"]["commit"])  # the tests run in a checkout
    assert back["units"] == {"clients": "count", "p99_ms": "ms"}
    load, wrk, absent = back["targets"]
    assert (load["measured"], load["met"]) == (62.5, False)
    assert (wrk["measured"], wrk["met"], wrk["note"]) == (None, None, "not measured: wrk is not installed")
    assert absent["met"] is None and "no row with case='absent'" in absent["note"]


def test_the_doc_prints_what_the_run_stored(tmp_path: Path) -> None:
    doc = result.run_benchmark("fake", fake_bench(), quick=True, command="python -m benchmarks --quick fake")
    page = report.render_doc([doc], "## Earlier runs\n\nverbatim | text\n")
    assert "## fake: A fake benchmark\n" in page and ", quick**" in page
    assert "| p99 at 5 clients | < 50.0 ms | 62.5 ms | **not met** | a test |" in page
    assert "— (not measured: wrk is not installed)" in page and "`code`" in page
    assert page.endswith("## Earlier runs\n\nverbatim | text\n")
    status = report.render_status([doc])
    assert status.startswith(report.BEGIN) and status.endswith(report.END) and "62.5 ms: **not met**" in status


def test_the_readme_needs_its_status_markers() -> None:
    with pytest.raises(ValueError, match="no status block"):
        report.update_readme("# a README without the markers\n", report.render_status([]))


def test_json_to_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "results.jsonl"
    target.write_text("")
    assert bench_main(["--json", str(target), "agent"]) == 2
    err = capsys.readouterr().err
    assert "error: --json" in err and "hint:" in err
