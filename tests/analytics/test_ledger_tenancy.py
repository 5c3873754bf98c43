"""Tenancy rules: labels, overrides, Slurm accounts, re-attribution, and the explain CLI."""

from __future__ import annotations

import polars as pl
import pytest

from gpuledger import cli, wire
from gpuledger.analytics import kinds as K
from gpuledger.analytics.job import run_attribution
from gpuledger.analytics.tenancy import TenancyRules
from gpuledger.errors import ConfigError
from gpuledger.store import Store
from tests.support.ledger_inputs import by, ledger_of, message

RULES = """
version = "2026-11-02"
label_keys = ["cost-center", "team"]
[overrides]
ops = "platform"
[pods]
"b/p1" = "special"
[slurm_accounts]
astro = "science"
slurm_jobs_csv = "sacct.txt"
"""


def test_rules_file_resolves_pods_namespaces_labels_and_slurm_jobs(tmp_path) -> None:
    (tmp_path / "sacct.txt").write_text("4242|astro\n4243|chem\n")
    path = tmp_path / "rules.toml"
    path.write_text(RULES.replace('slurm_jobs_csv = "sacct.txt"\n', "").replace(
        "version", 'slurm_jobs_csv = "sacct.txt"\nversion'))
    rules = TenancyRules.load(path)
    assert rules.version == "2026-11-02"
    assert rules.resolve("a", {"team": "x", "cost-center": "cc-7"}) == "cc-7"
    assert rules.resolve("a", {"team": "x"}) == "x"
    assert rules.resolve("ops", {"team": "x"}) == "platform"
    assert rules.resolve("b", {}, name="p1") == "special"
    assert rules.resolve(None, {}) == K.UNATTRIBUTED_TENANT
    assert [rules.resolve_slurm(j) for j in ("4242", "4243", "9")] == ["science", "chem", K.UNATTRIBUTED_TENANT]


def test_a_bad_rules_file_says_what_is_wrong(tmp_path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[overrides]\nops = 3\n")
    with pytest.raises(ConfigError, match=r"\[overrides\]"):
        TenancyRules.load(path)


def test_slurm_processes_are_charged_to_their_account_and_unknown_jobs_stay_visible() -> None:
    rules = TenancyRules(slurm_jobs={"4242": "astro"}, slurm_accounts={"astro": "science"})
    store = Store()
    store.write_messages([wire.decode(wire.encode(message([
        {"util": 0.5, "procs": [(None, 3.0, 10, "4242"), (None, 1.0, 10, "777")]}])))])
    run_attribution(store, rules)
    ledger = store.query("SELECT * FROM ledger")
    assert by(ledger, kind=K.BUSY, tenant="science") == pytest.approx(3.75)
    assert by(ledger, kind=K.BUSY, tenant=K.UNATTRIBUTED_TENANT) == pytest.approx(1.25)


def test_corrected_rules_reattribute_the_past_and_rerun_is_identical() -> None:
    _, store = ledger_of(message([{"util": 0.6, "holders": [("a", 0.5, 0), ("b", 0.5, 1)],
                                   "procs": [("a", 1.0), ("b", 2.0)]}]))
    run_attribution(store, TenancyRules(version="2", overrides={"a": "merged", "b": "merged"}), full=True)
    first = store.query("SELECT * FROM ledger ORDER BY ALL")
    assert set(first["tenant"]) == {"merged"}  # both replicas held: no unallocated line
    run_attribution(store, TenancyRules(version="2", overrides={"a": "merged", "b": "merged"}), full=True)
    assert store.query("SELECT * FROM ledger ORDER BY ALL").equals(first)


def test_explain_cli_prints_the_line_and_its_rows(tmp_path, capsys) -> None:
    db = tmp_path / "g.duckdb"
    with Store(db) as store:
        store.write_messages([wire.decode(wire.encode(message(
            [{"util": 0.5, "holders": [("a", 1.0, -1)], "procs": [("a", 4.0)]}], seq=s))) for s in range(3)])
        run_attribution(store)
    assert cli.main(["explain", "--db", str(db), "--tenant", "a", "--start", "1970-01-01",
                     "--end", "1970-01-01T00:00:20"]) == 0
    out = capsys.readouterr().out
    assert "tenant a: 0.006 GPU-h" in out and "coverage 100.0 %" in out and "process_samples" in out
    assert cli.main(["explain", "--db", str(db), "--tenant", "a", "--format", "csv"]) == 0
    rows = pl.read_csv(capsys.readouterr().out.encode())
    assert rows["intervals"].max() == 3 and rows["gpu_hours"].sum() == pytest.approx(30.0 / 3600, abs=1e-6)
    assert cli.main(["explain", "--db", str(db), "--tenant", "a", "--format", "csv", "--detail"]) == 0
    assert "process_samples" in pl.read_csv(capsys.readouterr().out.encode())["rule"].to_list()
    assert cli.main(["explain", "--db", str(db), "--tenant", "a", "--start", "soon"]) == 2
