"""The price book: matching, effective periods, and errors that say where and what."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from gpuledger.analytics.prices import default_price_book, load_price_book, parse_price_book
from gpuledger.errors import ConfigError

DAY = date(2025, 3, 15)


@pytest.mark.parametrize(
    ("model", "entry", "price"),
    [
        ("NVIDIA H100 80GB HBM3", "h100", "2.99"),
        ("NVIDIA H100 NVL", "h100", "2.99"),
        ("NVIDIA H200", "h200", "3.79"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb", "1.79"),
        ("NVIDIA A100 80GB PCIe", "a100-80gb", "1.79"),
        ("NVIDIA A100-SXM4-40GB", "a100", "1.29"),
        ("NVIDIA L40S", "l40s", "1.19"),
        ("NVIDIA L4", "l4", "0.69"),
        ("NVIDIA A10", "a10", "0.75"),
        ("NVIDIA A10G", "a10g", "1.00"),
        ("Tesla T4", "t4", "0.35"),
        ("Tesla V100-SXM2-16GB", "v100", "0.55"),
        ("Tesla P100-PCIE-16GB", "p100", "0.30"),
    ],
)
def test_default_book_prices_every_common_model(model: str, entry: str, price: str) -> None:
    p = default_price_book().price_for(model, None, DAY)
    assert (p.entry_id, p.per_gpu_hour, p.currency, p.is_default) == (entry, Decimal(price), "USD", False)


def test_unknown_model_uses_the_catch_all_and_says_so() -> None:
    p = default_price_book().price_for("Some Future GPU 9000", None, DAY)
    assert p.is_default and p.entry_id == "default" and p.per_gpu_hour == Decimal("1.00")


def test_mig_slice_of_a_known_model_is_priced_as_its_model() -> None:
    assert default_price_book().price_for("NVIDIA H100 80GB HBM3", "1g.10gb", DAY).entry_id == "h100"


BOOK = """
currency = "EUR"
energy_per_kwh = "0.20"

[[price]]
id = "h100-2024"
model = "*H100*"
per_gpu_hour = "3.00"
effective_from = 2024-01-01

[[price]]
id = "h100-2025"
model = "*H100*"
per_gpu_hour = "2.50"
effective_from = 2025-03-10
energy_per_kwh = "0.30"

[[price]]
id = "h100-small-slice"
model = "*H100*"
profile = "1g.10gb"
per_gpu_hour = "4.20"
effective_from = "2024-01-01"

[[price]]
id = "exact"
model = "NVIDIA H100 80GB HBM3"
per_gpu_hour = "2.75"
effective_from = 2025-06-01
"""


def test_effective_periods_switch_on_their_day() -> None:
    book = parse_price_book(BOOK)
    before = book.price_for("NVIDIA H100 NVL", None, date(2025, 3, 9))
    after = book.price_for("NVIDIA H100 NVL", None, date(2025, 3, 10))
    assert (before.entry_id, before.per_gpu_hour, before.effective_until) == ("h100-2024", Decimal("3.00"), date(2025, 3, 10))
    assert (after.entry_id, after.per_gpu_hour, after.effective_until) == ("h100-2025", Decimal("2.50"), None)
    assert (before.energy_per_kwh, after.energy_per_kwh) == (Decimal("0.20"), Decimal("0.30"))
    assert after.currency == "EUR"


def test_most_specific_entry_wins() -> None:
    book = parse_price_book(BOOK)
    assert book.price_for("NVIDIA H100 80GB HBM3", "1g.10gb", DAY).entry_id == "h100-small-slice"  # profile
    assert book.price_for("NVIDIA H100 80GB HBM3", "3g.40gb", DAY).entry_id == "h100-2025"
    assert book.price_for("nvidia h100 80gb hbm3", None, date(2025, 7, 1)).entry_id == "exact"  # exact name
    assert book.price_for("NVIDIA H100 NVL", None, date(2025, 7, 1)).entry_id == "h100-2025"


def test_exact_names_do_not_match_as_substrings() -> None:
    book = parse_price_book('currency = "USD"\n[[price]]\nmodel = "NVIDIA L4"\nper_gpu_hour = "1"\n'
                           'effective_from = 2024-01-01\n')
    assert book.price_for("NVIDIA L4", None, DAY).per_gpu_hour == Decimal("1")
    with pytest.raises(ConfigError, match="no price for model 'NVIDIA L40S'") as err:
        book.price_for("NVIDIA L40S", None, DAY)
    assert 'model = "*"' in err.value.hint


def test_no_entry_in_effect_yet_is_an_error() -> None:
    with pytest.raises(ConfigError, match="on 2023-12-31"):
        parse_price_book(BOOK).price_for("NVIDIA H100 NVL", None, date(2023, 12, 31))


def test_generated_ids_name_model_profile_and_day() -> None:
    book = parse_price_book('currency = "USD"\n[[price]]\nmodel = "*"\nper_gpu_hour = "1"\n'
                           'effective_from = 2024-01-01\n')
    assert book.price_for("x", None, DAY).entry_id == "*|*|2024-01-01"


def test_load_from_a_user_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(BOOK, encoding="utf-8")
    book = load_price_book(path)
    assert book.source == str(path) and book.currency == "EUR" and len(book.entries) == 4


ENTRY = 'model = "*H100*"\nper_gpu_hour = "2.99"\neffective_from = 2024-01-01\n'


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        ('currency = "USD"\n\n[[price]]\nmodel = "*"\nper_gpu_hour = 2.99\neffective_from = 2024-01-01\n',
         r"\[\[price\]\] #1 \(line 3\): per_gpu_hour = 2.99 is a float", 'quote it: per_gpu_hour = "2.99"'),
        ('currency = "USD"\n[[price]]\n' + ENTRY + '[[price]]\nmodel = "*"\nper_gpu_hr = "1"\n',
         r"#2 \(line 6\): unknown key\(s\) \['per_gpu_hr'\]", "allowed:"),
        ('currency = "USD"\n[[price]]\nmodel = "*"\nper_gpu_hour = "1"\n', r"#1 \(line 2\): missing 'effective_from'",
         "effective_from"),
        ('currency = "USD"\n[[price]]\nmodel = "*"\nper_gpu_hour = "one"\neffective_from = 2024-01-01\n',
         "is not a decimal number", "e.g."),
        ('currency = "USD"\n[[price]]\nmodel = "*"\nper_gpu_hour = "-1"\neffective_from = 2024-01-01\n',
         "must not be negative", "free"),
        ('currency = "USD"\n[[price]]\nmodel = "*"\nper_gpu_hour = "1"\neffective_from = "March"\n',
         "effective_from must be a date", "2024-01-01"),
        ('currency = "USD"\n[[price]]\n' + ENTRY + 'currency = "EUR"\n', "exactly one currency, found \\['EUR', 'USD'\\]",
         "one book per currency"),
        ("[[price]]\n" + ENTRY, "exactly one currency, found none", 'currency = "USD"'),
        ('currency = "dollars"\n[[price]]\n' + ENTRY, "not an ISO 4217 code", "EUR"),
        ('currency = "USD"\n[[price]]\nid = "a"\n' + ENTRY + '[[price]]\nid = "a"\nmodel = "*"\nper_gpu_hour = "1"\n'
         "effective_from = 2024-01-01\n", "duplicate id 'a'", "own id"),
        ('currency = "USD"\n[[price]]\n' + ENTRY + "[[price]]\n" + ENTRY, "both price model '\\*H100\\*'",
         "later effective_from"),
        ('currency = "USD"\n', "no \\[\\[price\\]\\] entries", "at least one"),
        ('currency = "USD"\nprices = []\n', "unknown top-level key", "\\[\\[price\\]\\]"),
        ('currency = "USD"\n[[price]\n', "not valid TOML: .*line 2", "toml.io"),
        ('currency = "USD"\nquantum = "0"\n[[price]]\n' + ENTRY, "quantum must be positive", "0.01"),
    ],
)
def test_errors_name_the_file_the_entry_and_the_fix(tmp_path: Path, text: str, message: str, hint: str) -> None:
    path = tmp_path / "book.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as err:
        load_price_book(path)
    assert str(err.value).startswith(str(path))
    assert hint in err.value.hint or __import__("re").search(hint, err.value.hint)


def test_missing_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml: cannot read price book") as err:
        load_price_book(tmp_path / "nope.toml")
    assert "--prices" in err.value.hint
