"""Documentation stays true: settings, wire fields and commands are documented."""

from __future__ import annotations

from pathlib import Path

from gpuledger import wire
from gpuledger.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = [n for n in Settings.model_fields if f"`GPULEDGER_{n.upper()}`" not in doc]
    assert not missing, f"document these settings in docs/configuration.md: {missing}"


def test_every_wire_field_is_documented() -> None:
    doc = (ROOT / "docs" / "wire-schema.md").read_text()
    fields = {name for dt in wire.TABLES.values() for name in dt.names or ()}
    missing = sorted(f for f in fields if f"`{f}`" not in doc)
    assert not missing, f"document these wire fields in docs/wire-schema.md: {missing}"


def test_readme_shows_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_readme_fits_on_a_page_and_indexes_every_doc() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150, "the README is a page: move detail into docs/"
    unlisted = sorted(p.name for p in (ROOT / "docs").glob("*.md") if f"(docs/{p.name})" not in readme)
    assert not unlisted, f"add these to the README's documentation index: {unlisted}"
