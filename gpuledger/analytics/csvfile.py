"""The one CSV writer of the project: RFC 4180 quoting, and no cell a spreadsheet would run.

Every CSV gpuledger writes goes through :func:`write_rows` (or
:func:`write_frame` for a Polars frame): the FOCUS chargeback file
(:mod:`~gpuledger.analytics.focus`, and so ``/v1/chargeback.csv``,
``/v1/exports/chargeback`` and the page's download, which fetches that route),
the showback view's CSV (``/v1/showback?format=csv``, the page's "download this view"),
and ``gpuledger explain --format csv`` (:mod:`~gpuledger.analytics.explain`).

A cell is written by its Python type, so the writer knows text from numbers:

- ``str``: text. When it starts with a character a spreadsheet reads as the
  start of a formula (``= + - @``, tab, CR), a leading apostrophe is added
  (OWASP "CSV injection"): ``=cmd|'/C calc'!A0`` becomes ``'=cmd|'/C calc'!A0``.
  Names come from pod labels and namespaces, which anyone who can start a pod
  chooses.
- ``int``, ``float``, ``Decimal``: numbers, never altered (``-1.5`` stays a
  number); ``Decimal`` in fixed-point notation (``format(d, "f")``).
- ``datetime``: UTC ISO 8601, whole seconds (``2025-03-01T00:00:00Z``).
- ``None``: an empty cell (missing, never zero).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import polars as pl

__all__ = ["FORMULA_START", "Writable", "format_cell", "sanitize_cell", "write_frame", "write_rows"]

#: Leading characters a spreadsheet (Excel, LibreOffice, Sheets) evaluates as a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class Writable(Protocol):
    def write(self, text: str, /) -> object: ...


def sanitize_cell(text: str) -> str:
    """Neutralise spreadsheet formula injection (OWASP CSV injection): a leading apostrophe."""
    return "'" + text if text.startswith(FORMULA_START) else text


def format_cell(value: Any) -> str:
    """One cell's text, by the value's type (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return sanitize_cell(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, datetime):
        moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return sanitize_cell(str(value))  # anything else is text


def write_rows(out: Writable, header: Sequence[str], rows: Iterable[Sequence[Any]], *,
               lineterminator: str = "\r\n") -> int:
    """Write the header and the rows to a text stream; returns rows written (header not counted).

    Cells holding a CR or LF are always quoted: the csv module decides by its own
    line terminator, and with ``\n`` it would leave a bare CR unquoted.
    """
    line = io.StringIO()
    writer = csv.writer(line, lineterminator="\r\n")

    def emit(cells: Iterable[Any]) -> None:
        line.seek(0)
        line.truncate()
        writer.writerow([format_cell(v) for v in cells])
        out.write(line.getvalue()[:-2] + lineterminator)

    emit(header)
    n = 0
    for row in rows:
        emit(row)
        n += 1
    return n


def write_frame(frame: pl.DataFrame, out: Writable, *, lineterminator: str = "\n") -> int:
    """A Polars frame through :func:`write_rows` (``\\n`` lines by default, as Polars' own writer)."""
    return write_rows(out, frame.columns, frame.iter_rows(), lineterminator=lineterminator)
