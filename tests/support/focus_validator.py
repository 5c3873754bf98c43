"""The FinOps Foundation's ``focus-validator`` in a virtualenv of its own (tests/analytics/test_focus_validator.py).

It needs Python >= 3.12 and pins numpy < 2 (which then needs pyarrow < 22),
so it cannot share the project's environment: :func:`validator_env` makes a
virtualenv once, under ``.cache/`` keyed by the validator and Python versions,
with the first Python 3.12 it finds (``python3.12`` on PATH, or under pyenv;
then 3.13+, where numpy < 2 builds from source).

``make test`` runs ``python -m tests.support.focus_validator`` before the
suite, so the install (about a minute) is setup, not test time; it reports
what it could not do and exits 0, and the test then skips with the reason
(fails under ``CI=true``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.system import missing, prepare_tool, tool_venv

VALIDATOR = "2.2.1"
REQUIREMENTS = [f"focus-validator=={VALIDATOR}", "numpy<2", "pyarrow<22"]
ROOT = Path(__file__).resolve().parents[2]


def python312() -> tuple[Path, str]:
    """A Python >= 3.12 interpreter that runs (pyenv shims of an inactive version do not) and its X.Y, else skip."""
    # 3.12 first: numpy < 2 has wheels for it; on 3.13 pip would build numpy 1.26 from source.
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which("python3.12"), *map(str, sorted(pyenv.glob("3.12*/bin/python3"), reverse=True)),
                  shutil.which("python3.13"), *map(str, sorted(pyenv.glob("3.1[3-9]*/bin/python3")))]
    for c in candidates:
        if not c:
            continue
        probe = subprocess.run([c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        version = probe.stdout.strip()
        if probe.returncode == 0 and tuple(map(int, version.split("."))) >= (3, 12):
            return Path(c), version
    missing("focus-validator 2.2.1 needs Python >= 3.12: none on PATH (python3.12) or under pyenv "
            "(`pyenv install 3.12`)")


def validator_env() -> tuple[Path, Path]:
    """(the focus-validator executable, its site-packages folder), creating the virtualenv on first use."""
    python, version = python312()
    venv = ROOT / ".cache" / f"focus-validator-{VALIDATOR}-py{version}"
    tool_venv(venv, python, REQUIREMENTS, "focus-validator")
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import focus_validator, os; print(os.path.dirname(os.path.dirname(focus_validator.__file__)))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    return venv / "bin" / "focus-validator", Path(site)


def main() -> int:
    """Prepare the virtualenv ahead of the suite (``make test``)."""
    return prepare_tool("focus-validator", lambda: validator_env()[0], "tests/analytics/test_focus_validator.py")


if __name__ == "__main__":
    sys.exit(main())
