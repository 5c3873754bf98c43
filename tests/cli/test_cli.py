"""The command line as a user meets it: help that explains, errors with a hint."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from gpuledger.cli import build_parser
from gpuledger.cli.common import SETTING_FLAGS, SettingFlag, subcommands
from gpuledger.config import Settings

ROOT = Path(__file__).resolve().parents[2]
PARSERS = subcommands(build_parser(Settings()))
COMMANDS = list(PARSERS)


def gpuledger(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuledger.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_top_level_help_lists_every_command() -> None:
    out = gpuledger("--help")
    assert out.returncode == 0
    for command in COMMANDS:
        assert command in out.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_an_explaining_help(command: str) -> None:
    out = gpuledger(command, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: gpuledger " + command in out.stdout
    assert len(out.stdout.split()) > 40, "help should explain, not just list flags"


@pytest.mark.slow
def test_real_backend_without_a_driver_fails_with_a_hint_not_a_traceback() -> None:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    except pynvml.NVMLError:
        pass
    out = gpuledger("agent", "--backend", "nvml", "--ticks", "1", "--interval", "0.1")
    assert out.returncode == 2
    assert "error: NVML could not start" in out.stderr
    assert "hint:" in out.stderr and "--backend sim" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_simulated_agent_prints_ticks() -> None:
    out = gpuledger("agent", "--backend", "sim", "--ticks", "2", "--interval", "0.2", "--metrics-port", "0")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("seq ")]
    assert len(lines) == 2 and "8 GPUs" in lines[0]


@pytest.mark.slow
def test_serving_a_missing_database_says_what_to_do(tmp_path) -> None:
    out = gpuledger("serve", "--db", str(tmp_path / "nope.duckdb"))
    assert out.returncode == 2
    assert "hint:" in out.stderr and "gpuledger demo" in out.stderr


def test_the_parser_has_the_commands_users_and_manifests_know() -> None:
    assert {"agent", "ingest", "attribute", "serve", "export", "demo", "token", "explain", "retention", "merge",
            "compact"} <= set(COMMANDS)


def test_every_command_and_subcommand_is_in_the_docs() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text()
    for name, parser in PARSERS.items():
        assert f"`gpuledger {name}`" in doc, f"list `gpuledger {name}` in docs/cli.md"
        for action in parser._actions:  # a first positional with choices is a subcommand: export chargeback, ...
            if not action.option_strings and action.choices:
                for choice in action.choices:
                    assert f"gpuledger {name} {choice}" in doc, f"describe `gpuledger {name} {choice}` in docs/cli.md"


def test_the_docs_table_of_setting_flags_is_the_programs() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text()
    rows = {line.split("|")[1].strip(" `"): [c.strip(" `") for c in line.split("|")[2:5]]
            for line in doc.splitlines() if line.startswith("| `--")}
    want = {}
    for flag, (setting, _) in SETTING_FLAGS.items():
        used = [n for n, p in PARSERS.items()
                if any(isinstance(a, SettingFlag) and flag in a.option_strings for a in p._actions)]
        want[flag] = [setting, f"GPULEDGER_{setting.upper()}", ", ".join(used)]
    assert rows == want


def test_only_the_cli_imports_the_simulator() -> None:
    """Production code never imports gpuledger.sim; the CLI wiring (agent --backend sim, demo) does."""
    offenders = []
    for path in (ROOT / "gpuledger").rglob("*.py"):
        rel = path.relative_to(ROOT / "gpuledger").parts
        if rel[0] in ("sim", "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "gpuledger.sim" or n.startswith("gpuledger.sim.") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"production modules importing the simulator: {offenders}"
