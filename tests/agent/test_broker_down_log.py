"""While the broker is down, the agent's log says so once (and once more when it is back), instead of
kafka-python's line per connect attempt, retry and undelivered record; the spool's counters say the rest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.system import free_port


@pytest.mark.slow
def test_a_down_broker_is_one_log_line_not_a_flood(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: the broker is down for the whole run
    out = subprocess.run(
        [sys.executable, "-m", "gpuledger.cli", "agent", "--backend", "sim", "--kafka", f"127.0.0.1:{port}",
         "--ticks", "3", "--interval", "1", "--metrics-port", "0", "--spool-dir", str(tmp_path / "spool")],
        capture_output=True, text=True, timeout=120)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    from_library = [line for line in lines if " kafka." in line]
    assert not from_library, f"{len(from_library)} kafka-python lines, e.g. {from_library[:3]}"
    unreachable = [line for line in lines if "broker unreachable" in line]
    assert len(unreachable) == 1, lines
    assert len(lines) <= 8, "\n".join(lines)
