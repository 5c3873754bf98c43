"""The price book: what one GPU-hour of each GPU model costs, and since when.

A book is a TOML file (the shipped default is ``gpuledger/defaults/prices.toml``)::

    currency = "USD"                 # one currency per book
    energy_per_kwh = "0.15"          # optional, per kWh of measured GPU energy
    quantum = "0.01"                 # optional, smallest money unit (default: cent)

    [[price]]
    id = "h100"                      # optional; default "<model>|<profile>|<date>"
    model = "*H100*"                 # exact product name or glob, case-insensitive
    profile = "1g.10gb"              # optional MIG profile
    per_gpu_hour = "2.99"            # decimal string, per GPU-hour of the whole GPU
    effective_from = 2024-01-01      # first UTC day it applies
    energy_per_kwh = "0.15"          # optional, overrides the book's

Units: ``per_gpu_hour`` is money per GPU-hour of a whole physical GPU; a MIG
slice consumes GPU-hours in proportion to its slice fraction, so the same rate
applies unless a profile entry sets another. ``energy_per_kwh`` is money per
kWh (3.6e6 J). Money is :class:`~decimal.Decimal`, never float: a TOML float is
rejected with a hint to quote it.

Lookup (:meth:`PriceBook.price_for`): among entries whose pattern matches the
model and whose profile is absent or equal, keep per (pattern, profile) the one
with the latest ``effective_from`` on or before the day; then the most specific
wins: a matching profile, then an exact name, then more literal characters in
the glob, then the earlier entry in the file. The catch-all ``model = "*"``
prices unknown models and marks the price ``is_default``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import Any

from gpuledger.config import parse_toml
from gpuledger.errors import ConfigError

__all__ = ["Price", "PriceEntry", "PriceBook", "load_price_book", "default_price_book", "DEFAULT_BOOK"]

#: Where the shipped default book lives, inside the ``gpuledger`` package.
DEFAULT_BOOK = "defaults/prices.toml"

_ENTRY_KEYS = {"id", "model", "profile", "per_gpu_hour", "effective_from", "currency", "energy_per_kwh"}
_BOOK_KEYS = {"currency", "energy_per_kwh", "quantum", "price"}
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class PriceEntry:
    """One ``[[price]]`` entry of a book, validated."""

    entry_id: str
    model: str
    profile: str | None
    per_gpu_hour: Decimal  # money per GPU-hour of a whole GPU
    effective_from: date
    energy_per_kwh: Decimal | None  # money per kWh, None: energy not charged
    order: int  # position in the file, 0-based (last tie-break)

    @property
    def is_glob(self) -> bool:
        return bool(_GLOB.search(self.model))

    @property
    def is_default(self) -> bool:
        return self.model == "*" and self.profile is None

    def matches(self, model: str, profile: str | None) -> bool:
        if self.profile is not None and (profile is None or self.profile.lower() != profile.lower()):
            return False
        if self.is_glob:
            return fnmatchcase(model.lower(), self.model.lower())
        return model.lower() == self.model.lower()

    def specificity(self) -> tuple[int, int, int, int]:
        literal = len(_GLOB.sub("", self.model))
        return (self.profile is not None, not self.is_glob, literal, -self.order)


@dataclass(frozen=True)
class Price:
    """The price that applies to one model/profile on one day."""

    per_gpu_hour: Decimal  # money per GPU-hour
    currency: str  # ISO 4217 code
    entry_id: str  # which book entry priced it (FOCUS SkuPriceId)
    is_default: bool = False  # True when the catch-all "*" entry was used
    energy_per_kwh: Decimal | None = None  # money per kWh; None: energy not charged
    effective_from: date | None = None  # first UTC day of the entry's period
    effective_until: date | None = None  # exclusive end (next entry of the series), None: open


class PriceBook:
    """A validated set of price entries in one currency."""

    def __init__(self, entries: list[PriceEntry], currency: str, quantum: Decimal = Decimal("0.01"),
                 source: str = "<memory>") -> None:
        self.entries = entries
        self.currency = currency
        self.quantum = quantum  # smallest money unit charged, e.g. 0.01 USD
        self.source = source
        self._until: dict[str, date | None] = {}
        self._cache: dict[tuple[str, str | None, date], Price] = {}
        series: dict[tuple[str, str | None], list[PriceEntry]] = {}
        for e in entries:
            series.setdefault(_series_key(e), []).append(e)
        for group in series.values():
            group.sort(key=lambda e: e.effective_from)
            for i, e in enumerate(group):
                self._until[e.entry_id] = group[i + 1].effective_from if i + 1 < len(group) else None

    def __repr__(self) -> str:
        return f"PriceBook({self.source!r}, {len(self.entries)} entries, {self.currency})"

    def price_for(self, model: str, profile: str | None, at: date) -> Price:
        """Price of one GPU-hour of ``model`` (MIG ``profile`` or None) on UTC day ``at``.

        Raises ConfigError when no entry applies (no catch-all, or every
        matching entry starts after ``at``).
        """
        key = (model, profile or None, at)
        if key not in self._cache:
            self._cache[key] = self._lookup(*key)
        return self._cache[key]

    def _lookup(self, model: str, profile: str | None, at: date) -> Price:
        current: dict[tuple[str, str | None], PriceEntry] = {}
        for e in self.entries:
            if e.effective_from <= at and e.matches(model, profile):
                key = _series_key(e)
                if key not in current or current[key].effective_from < e.effective_from:
                    current[key] = e
        if not current:
            raise ConfigError(
                f"{self.source}: no price for model {model!r} profile {profile!r} on {at.isoformat()}",
                hint='add an entry for it, or a catch-all [[price]] model = "*" with an early effective_from',
            )
        best = max(current.values(), key=PriceEntry.specificity)
        return Price(
            per_gpu_hour=best.per_gpu_hour,
            currency=self.currency,
            entry_id=best.entry_id,
            is_default=best.is_default,
            energy_per_kwh=best.energy_per_kwh,
            effective_from=best.effective_from,
            effective_until=self._until[best.entry_id],
        )


def _series_key(e: PriceEntry) -> tuple[str, str | None]:
    return (e.model.lower(), e.profile.lower() if e.profile else None)


# --- loading -----------------------------------------------------------------


def default_price_book() -> PriceBook:
    """The book shipped with gpuledger (indicative USD cloud rates)."""
    text = resources.files("gpuledger").joinpath(DEFAULT_BOOK).read_text(encoding="utf-8")
    return parse_price_book(text, source=f"gpuledger/{DEFAULT_BOOK}")


def load_price_book(path: str | Path) -> PriceBook:
    """Read and validate a price book file; ConfigError says where and what is wrong."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read price book: {exc.strerror or exc}",
                          hint="check the path given with --prices") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: price book is not UTF-8 text", hint="save the file as UTF-8") from None
    return parse_price_book(text, source=str(p))


def parse_price_book(text: str, source: str = "<string>") -> PriceBook:
    """Validate the TOML text of a book (``source`` names it in errors)."""
    doc = parse_toml(text, source)
    unknown = set(doc) - _BOOK_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {sorted(unknown)}",
                          hint=f"allowed: {sorted(_BOOK_KEYS)}; entries go under [[price]]")
    raw = doc.get("price")
    if not isinstance(raw, list) or not raw or not all(isinstance(r, dict) for r in raw):
        raise ConfigError(f"{source}: no [[price]] entries", hint='add at least one: [[price]] model = "*" '
                          'per_gpu_hour = "1.00" effective_from = 2024-01-01')
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.strip().startswith("[[price]]")]
    book_energy = _money(doc, "energy_per_kwh", f"{source}: top level", optional=True)
    quantum = _money(doc, "quantum", f"{source}: top level", optional=True)
    quantum = Decimal("0.01") if quantum is None else quantum
    if quantum <= 0:
        raise ConfigError(f"{source}: quantum must be positive, got {quantum}", hint='e.g. quantum = "0.01"')
    currencies = {str(doc["currency"])} if "currency" in doc else set()
    entries: list[PriceEntry] = []
    seen: dict[str, str] = {}
    for n, item in enumerate(raw):
        where = f"{source}: [[price]] #{n + 1}" + (f" (line {lines[n]})" if n < len(lines) else "")
        entry = _entry(item, n, where, book_energy)
        if "currency" in item:
            currencies.add(str(item["currency"]))
        if "id" in item and entry.entry_id in seen:  # generated ids: _check_duplicates says more
            raise ConfigError(f"{where}: duplicate id {entry.entry_id!r} (also {seen[entry.entry_id]})",
                              hint="give each entry its own id; a new price for the same model "
                              "is a new entry with a later effective_from")
        seen[entry.entry_id] = where
        entries.append(entry)
    if len(currencies) != 1:
        raise ConfigError(f"{source}: a book must use exactly one currency, found {sorted(currencies) or 'none'}",
                          hint='set currency = "USD" (ISO 4217) at the top and keep one book per currency')
    currency = currencies.pop()
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise ConfigError(f"{source}: currency {currency!r} is not an ISO 4217 code", hint='e.g. currency = "EUR"')
    _check_duplicates(entries, source)
    return PriceBook(entries, currency, quantum, source)


def _entry(item: dict[str, Any], order: int, where: str, book_energy: Decimal | None) -> PriceEntry:
    unknown = set(item) - _ENTRY_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}", hint=f"allowed: {sorted(_ENTRY_KEYS)}")
    for key in ("model", "per_gpu_hour", "effective_from"):
        if key not in item:
            raise ConfigError(f"{where}: missing {key!r}",
                              hint='an entry needs model, per_gpu_hour and effective_from, e.g. '
                              'model = "*H100*" per_gpu_hour = "2.99" effective_from = 2024-01-01')
    model, profile = item["model"], item.get("profile")
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"{where}: model must be a non-empty string", hint='e.g. model = "*H100*"')
    if profile is not None and (not isinstance(profile, str) or not profile.strip()):
        raise ConfigError(f"{where}: profile must be a MIG profile name", hint='e.g. profile = "1g.10gb"')
    price = _money(item, "per_gpu_hour", where)
    assert price is not None
    if price < 0:
        raise ConfigError(f"{where}: per_gpu_hour must not be negative, got {price}", hint="use 0 for free GPUs")
    start = item["effective_from"]
    if isinstance(start, str):
        try:
            start = date.fromisoformat(start)
        except ValueError:
            start = None
    if not isinstance(start, date) or hasattr(start, "hour"):
        raise ConfigError(f"{where}: effective_from must be a date, got {item['effective_from']!r}",
                          hint="write a TOML date: effective_from = 2024-01-01 (UTC day)")
    energy = _money(item, "energy_per_kwh", where, optional=True)
    entry_id = item.get("id") or f"{model}|{profile or '*'}|{start.isoformat()}"
    return PriceEntry(str(entry_id), model.strip(), profile.strip() if profile else None, price, start,
                      energy if energy is not None else book_energy, order)


def _money(item: dict[str, Any], key: str, where: str, optional: bool = False) -> Decimal | None:
    if key not in item:
        if optional:
            return None
        raise ConfigError(f"{where}: missing {key!r}", hint=f'e.g. {key} = "1.00"')
    value = item[key]
    if isinstance(value, float):
        raise ConfigError(f"{where}: {key} = {value!r} is a float",
                          hint=f'quote it: {key} = "{value}" (money is exact decimal; floats lose cents)')
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(f"{where}: {key} must be a decimal string, got {value!r}", hint=f'e.g. {key} = "1.00"')
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite():
        raise ConfigError(f"{where}: {key} = {value!r} is not a decimal number", hint=f'e.g. {key} = "2.99"')
    return amount


def _check_duplicates(entries: list[PriceEntry], source: str) -> None:
    seen: dict[tuple[str, str | None, date], str] = {}
    for e in entries:
        key = (*_series_key(e), e.effective_from)
        if key in seen:
            raise ConfigError(
                f"{source}: entries {seen[key]!r} and {e.entry_id!r} both price model {e.model!r} "
                f"profile {e.profile!r} from {e.effective_from}",
                hint="remove one, or give the newer price a later effective_from",
            )
        seen[key] = e.entry_id
    ids = [e.entry_id for e in entries]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        raise ConfigError(f"{source}: two entries have the id {dup!r}", hint="give each entry its own id")
