"""The reference pages stay true: every route, error code and FOCUS column is documented, and no more.

- docs/api.md lists every path of the OpenAPI document, and its routes table
  names no path the API does not serve;
- docs/api.md's error table holds exactly the codes of the registry
  (``gpuledger/api/errors.py``), each with its status, and no code reaches a
  client except through the registry;
- docs/chargeback.md's column table holds exactly the columns the FOCUS
  exporter writes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from gpuledger.analytics.focus import COLUMNS_1_2, COLUMNS_1_4
from gpuledger.api import errors
from gpuledger.api.app import create_app

ROOT = Path(__file__).resolve().parents[1]
API_MD = ROOT / "docs" / "api.md"
CHARGEBACK_MD = ROOT / "docs" / "chargeback.md"


def section(path: Path, title: str) -> str:
    """The text of the ``## title`` section of a Markdown page."""
    text = path.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"{path.name} has no '## {title}' section"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The cells of each body row of the Markdown tables in ``text`` (header and rule rows skipped)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or re.fullmatch(r"\|[\s|:-]+\|", line):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows.append(cells)
    return rows[1:] if rows else rows  # the first row is the header


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def documented_paths(text: str) -> set[str]:
    """Paths named in backticks (`GET /v1/x?a=b`, `/v1/y`), without their query strings."""
    spans = [span for line in text.splitlines() for span in re.findall(r"`([^`]+)`", line)]
    return {m.group(1) for span in spans if (m := re.match(r"(?:GET )?(/[^\s?\\]*)", span))}


def test_every_route_of_the_openapi_document_is_documented(tmp_path: Path) -> None:
    served = set(create_app(tmp_path / "none.duckdb").openapi()["paths"])
    missing = sorted(served - documented_paths(API_MD.read_text(encoding="utf-8")))
    assert not missing, f"document these routes in docs/api.md: {missing}"
    listed = documented_paths(section(API_MD, "Routes"))
    stale = sorted(p for p in listed if p not in served)
    assert not stale, f"docs/api.md's routes table names routes the API does not serve: {stale}"


def test_every_error_code_is_documented_with_its_status_and_nothing_else() -> None:
    rows = table_rows(section(API_MD, "Errors"))
    documented: dict[str, int] = {}
    for cells in rows:
        codes, status = backticked(cells[0]), cells[1]
        for code in codes:
            documented[code] = int(status.split()[0])
    registry = {e.code: e.status for e in errors.CODES.values()}
    assert documented == registry, (
        f"docs/api.md's error table and gpuledger/api/errors.py differ: undocumented "
        f"{sorted(set(registry) - set(documented))}, not in the registry {sorted(set(documented) - set(registry))}, "
        f"status differs {sorted(c for c in registry if c in documented and documented[c] != registry[c])}")


def test_no_error_code_bypasses_the_registry() -> None:
    """Codes are ErrorCode constants of gpuledger/api/errors.py: no string code, no ErrorCode made elsewhere."""
    found = []
    for path in sorted((ROOT / "gpuledger").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            first = node.args[0] if node.args else None
            if name in ("ApiError", "error_response") and isinstance(first, ast.Constant):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}({first.value!r}, ...)")
            if name == "ErrorCode" and path.name != "errors.py":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} ErrorCode(...) outside the registry")
    assert not found, "use a code of gpuledger/api/errors.py: " + "; ".join(found)


def test_every_focus_column_the_exporter_writes_is_documented_and_nothing_else() -> None:
    documented = {name for cells in table_rows(section(CHARGEBACK_MD, "Columns"))
                  for name in backticked(cells[0])}
    written = {c.name for c in (*COLUMNS_1_4, *COLUMNS_1_2)}
    assert documented == written, (
        f"docs/chargeback.md's column table and focus.COLUMNS_1_4 + COLUMNS_1_2 differ: "
        f"undocumented {sorted(written - documented)}, "
        f"not written {sorted(documented - written)}")
