"""The test suite's own rules: shared code lives in tests/support, test folders mirror the package,
and a missing system tool skips a test but fails it under CI=true.

A test module that imports another test module (or conftest) works only when
pytest happens to have put that module's folder on sys.path, i.e. not when the
file is run alone; so no test file imports another, whatever the spelling
(``from test_wire import ...``, ``from tests.api.test_api import ...``,
``from tests.conftest import ...``, relative imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.system import need_binary

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
#: Folders under tests/ that are not a gpuledger module's tests, and what they hold instead.
NOT_A_MODULE = {
    "support": "shared test code",
    "golden": "golden files",
    "fixtures": "recorded inputs",
    "dashboards": "the Grafana dashboards in dashboards/",
    "deploy": "the Helm chart, the image and the alerts in deploy/",
    "web": "the built-in page (gpuledger/api/static) in a browser",
    "__pycache__": "",
}


def python_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, dotted name) of every import anywhere in the module; relative ones keep their dots."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module == "tests":  # `from tests import conftest`
                out += [(node.lineno, f"tests.{alias.name}") for alias in node.names]
            else:
                out.append((node.lineno, "." * node.level + (node.module or "")))
    return out


def forbidden(name: str, test_modules: set[str]) -> bool:
    """A name that reaches a test module, conftest or another module outside tests/support."""
    if name.startswith("."):
        return True  # relative: tests/ is not a package of packages; say tests.support.X
    if name == "tests.support" or name.startswith("tests.support."):
        return False
    if name == "tests" or name.startswith("tests."):
        return True
    return name.split(".")[0] in test_modules | {"support"}


def test_no_test_module_imports_another_test_module_or_conftest() -> None:
    files = python_files()
    # Bare names of modules outside tests/support (test modules, conftest, scripts beside fixtures):
    # importable only through a folder pytest put on sys.path. (Support's own stems are not in the
    # set: `kafka` there is kafka-python.)
    test_modules = {p.stem for p in files if "support" not in p.relative_to(TESTS).parts}
    bad = [f"{p.relative_to(ROOT)}:{line}: imports {name}"
           for p in files
           for line, name in imported_modules(ast.parse(p.read_text(), str(p)))
           if forbidden(name, test_modules)]
    assert not bad, "shared test code belongs in tests/support (import it as tests.support.X):\n" + "\n".join(bad)


def test_test_folders_mirror_the_package() -> None:
    """tests/<name>/ holds the tests of gpuledger/<name>/ (or gpuledger/<name>.py), or is a known non-module folder."""
    stray = []
    for folder in sorted(p for p in TESTS.iterdir() if p.is_dir()):
        if folder.name in NOT_A_MODULE:
            continue
        if not ((ROOT / "gpuledger" / folder.name).is_dir() or (ROOT / "gpuledger" / f"{folder.name}.py").is_file()):
            stray.append(folder.name)
    assert not stray, f"tests/{stray} mirror no gpuledger module: move the tests to the module's folder"


def test_a_missing_tool_skips_with_the_reason_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no gpuledger-no-such-tool binary on PATH .how to get it."):
        need_binary("gpuledger-no-such-tool", hint="how to get it")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        need_binary("gpuledger-no-such-tool", hint="how to get it")
    assert need_binary("gpuledger-no-such-tool", "python3", hint="-").endswith("python3")  # the first one found
