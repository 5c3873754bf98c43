"""The command line as a user meets it: help that explains, errors with a hint."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = ["agent", "ingest", "attribute", "serve", "export", "demo"]


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
