"""The one CSV writer (issue 15): every CSV the project writes neutralises formula-leading text cells."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from gpuledger.analytics import kinds as K
from gpuledger.analytics.csvfile import FORMULA_START, write_frame, write_rows
from gpuledger.analytics.explain import explain_command
from gpuledger.analytics.focus import focus_csv
from gpuledger.analytics.prices import default_price_book
from gpuledger.store import Store
from tests.support.api_ledger import SCHEMA, row

#: Names a pod or namespace may carry (anyone who can start a pod picks them), one per formula start.
CRAFTED = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "=cmd|' /C calc'!A0"]


def _cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def _unsafe(rows: list[list[str]], columns: set[str]) -> list[str]:
    header = rows[0]
    return [cell for r in rows[1:] for name, cell in zip(header, r, strict=True)
            if name in columns and cell.startswith(FORMULA_START)]


def test_the_writer_neutralises_text_and_leaves_numbers_alone() -> None:
    buf = io.StringIO()
    write_rows(buf, ["name", "n", "x", "cost", "missing"],
               [[c, -1, -1.5, Decimal("-0.10"), None] for c in CRAFTED] + [["ml-team", 2, 0.25, Decimal("1.00"), None]])
    rows = _cells(buf.getvalue())
    assert [r[0] for r in rows[1:]] == ["'" + c for c in CRAFTED] + ["ml-team"]
    assert all(r[1:] == ["-1", "-1.5", "-0.10", ""] for r in rows[1:-1])  # numbers stay numbers
    assert buf.getvalue().endswith("ml-team,2,0.25,1.00,\r\n")


def test_a_frame_goes_through_the_same_writer() -> None:
    frame = pl.DataFrame({"pod": ["=x", "ok", None], "mig_index": [-1, 0, 3], "gpu_seconds": [-1.5, 3600.0, None]})
    buf = io.StringIO()
    assert write_frame(frame, buf) == 3
    assert buf.getvalue() == "pod,mig_index,gpu_seconds\n'=x,-1,-1.5\nok,0,3600.0\n,3,\n"


def test_the_chargeback_file_neutralises_crafted_tenants() -> None:
    ledger = pl.DataFrame([row(name, K.BUSY, 600, seq=0, gpu=i) for i, name in enumerate(CRAFTED)], schema=SCHEMA)
    text, _ = focus_csv(ledger.lazy(), default_price_book(), "2025-03")
    rows = _cells(text)
    assert not _unsafe(rows, {"SubAccountId", "SubAccountName", "x_tenant"})
    assert {r[rows[0].index("SubAccountId")] for r in rows[1:]} >= {"'" + c for c in CRAFTED}


def test_explain_csv_neutralises_crafted_pods_and_namespaces(tmp_path: Path) -> None:
    db = tmp_path / "explain.duckdb"
    rows = []
    for i, name in enumerate(CRAFTED):
        r = row("ml", K.BUSY, 600, seq=i, gpu=i)
        r.update(pod=name, namespace=name, node=name)
        rows.append(r)
    with Store(db) as store:
        store.append("ledger", pl.DataFrame(rows, schema=SCHEMA))
    out = _cells(explain_command(str(db), "ml", None, None, "csv", detail=True))
    # 52 unsafe cells in the outside probe: namespaces and pod names reached the file as they were
    assert not _unsafe(out, {"pod", "namespace", "node"}), out
    assert {r[out[0].index("pod")] for r in out[1:]} == {"'" + c for c in CRAFTED}
    assert {r[out[0].index("mig_index")] for r in out[1:]} == {"-1"}  # a number, not neutralised
    assert {r[out[0].index("gpu_hours")] for r in out[1:]} == {str(round(600 / 3600, 6))}
    summary = _cells(explain_command(str(db), "ml", None, None, "csv"))  # per GPU: node names are anyone's too
    assert not _unsafe(summary, {"node"}) and len(summary) == len(CRAFTED) + 1


def test_a_cell_with_a_line_break_is_quoted_whatever_the_line_terminator() -> None:
    for terminator in ("\n", "\r\n"):
        buf = io.StringIO()
        write_rows(buf, ["pod"], [["a\rb"], ["c\nd"]], lineterminator=terminator)
        assert buf.getvalue() == f'pod{terminator}"a\rb"{terminator}"c\nd"{terminator}'


def test_explain_of_an_unknown_tenant_fails_with_the_closest_names(tmp_path: Path) -> None:
    """Issue 15: a mistyped tenant read as "no rows" (exit 0); it is an error naming the known tenants."""
    from gpuledger.errors import GpuledgerError

    db = tmp_path / "explain.duckdb"
    with Store(db) as store:
        store.append("ledger", pl.DataFrame([row("vision", K.BUSY, 600), row("nlp", K.BUSY, 600, seq=1)],
                                            schema=SCHEMA))
    with pytest.raises(GpuledgerError, match="no tenant 'visoin'") as caught:
        explain_command(str(db), "visoin", None, None)
    assert "'vision'" in caught.value.hint
    assert "tenant vision" in explain_command(str(db), "vision", None, None)  # a known one still explains
