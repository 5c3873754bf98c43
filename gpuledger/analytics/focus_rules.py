"""The FOCUS 1.2 / 1.4 column rules the chargeback file promises, as a checker.

:func:`check_rows` reads the file as a consumer would (CSV cells as strings;
empty = null) and returns one message per violated rule. It is run by the
reconciliation report and by the property tests; each rule cites the FOCUS
column or attribute it comes from (FOCUS 1.2, cost and usage columns). A
header with ``ServiceProviderName`` is read as FOCUS 1.4, which names the
provider columns ``ServiceProviderName``/``HostProviderName`` instead of
``ProviderName``/``PublisherName`` and adds the split cost allocation
columns (``AllocatedTags`` is checked like ``Tags``); the other rules are
the same. The full 1.4 data model is checked in the tests with the
FinOps workbook's machine-readable model (``focus-data-toolkit``).

- presence: every column of :data:`MANDATORY` is in the header; other columns
  carry the ``x_`` prefix (ColumnNamingAndOrdering, custom columns).
- NumericFormat: decimals as ``-?digits[.digits]``, no exponent, no ``+``.
- DateTimeFormat: ``YYYY-MM-DDTHH:mm:ssZ`` (UTC); start < end for both periods.
- BilledCost, EffectiveCost, ListCost, ContractedCost, BillingCurrency (ISO
  4217), BillingAccountId, BillingPeriod*, ChargePeriod*, ChargeCategory,
  ProviderName, PublisherName, InvoiceIssuerName, ServiceName,
  ServiceCategory: never null.
- ChargeClass: null or ``Correction``; a correction's charge period lies
  before its billing period, a regular row's inside it.
- Usage rows that are not corrections: PricingQuantity, PricingUnit,
  ConsumedQuantity, ConsumedUnit, ListUnitPrice, ContractedUnitPrice, SkuId,
  SkuPriceId not null; quantities and unit prices not negative.
- ListUnitPrice × PricingQuantity matches ListCost (and contracted likewise)
  within one money quantum plus the 6-decimal quantity rounding: costs are
  allocated by largest remainder so the file sums to the fleet cost exactly,
  which leaves each row within one quantum of its exact share.
- SubAccountName, ResourceName/ResourceType, RegionName are null when their
  id is null; Tags is null or a JSON object of unique keys with scalar values
  (KeyValueFormat).
- Spreadsheet safety (gpuledger's own rule): no text cell starts with
  ``= + - @``, tab or CR unless it is a number.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal

from gpuledger.analytics.csvfile import FORMULA_START

__all__ = ["MANDATORY", "MANDATORY_1_4", "check_rows"]

MANDATORY = (
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "BillingCurrency", "BillingAccountId",
    "BillingAccountName", "BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd",
    "ChargeCategory", "ChargeClass", "ChargeDescription", "PricingQuantity", "PricingUnit", "ConsumedQuantity",
    "ConsumedUnit", "ListUnitPrice", "ProviderName", "PublisherName", "InvoiceIssuerName", "ServiceName",
    "ServiceCategory", "SubAccountId", "SubAccountName", "ResourceId", "ResourceName", "ResourceType", "SkuId",
    "RegionId", "Tags",
)
_PROVIDERS_1_2 = ("ProviderName", "PublisherName")
_PROVIDERS_1_4 = ("ServiceProviderName", "HostProviderName")
#: FOCUS 1.4's mandatory columns this file carries (1.2's, with the provider columns renamed).
MANDATORY_1_4 = tuple({"ProviderName": "ServiceProviderName", "PublisherName": "HostProviderName"}.get(c, c)
                      for c in MANDATORY)
_FOCUS_EXTRA = {"ChargeFrequency", "PricingCategory", "ContractedUnitPrice", "SkuPriceId", "RegionName",
                "InvoiceId", "ServiceSubcategory"}
_FOCUS_EXTRA_1_4 = _FOCUS_EXTRA | {"AllocatedMethodId", "AllocatedMethodDetails", "AllocatedResourceId",
                                   "AllocatedResourceName", "AllocatedTags"}
_NOT_NULL = ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "BillingCurrency", "BillingAccountId",
             "BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd", "ChargeCategory",
             "InvoiceIssuerName", "ServiceName", "ServiceCategory")
_USAGE_NOT_NULL = ("PricingQuantity", "PricingUnit", "ConsumedQuantity", "ConsumedUnit", "ListUnitPrice",
                   "ContractedUnitPrice", "SkuId", "SkuPriceId")
_DECIMALS = ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "PricingQuantity", "ConsumedQuantity",
             "ListUnitPrice", "ContractedUnitPrice")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_CATEGORIES = {"Usage", "Purchase", "Tax", "Credit", "Adjustment"}
_SERVICE_CATEGORIES = {
    "AI and Machine Learning", "Analytics", "Business Applications", "Compute", "Databases", "Developer Tools",
    "Multicloud", "Identity", "Integration", "Internet of Things", "Management and Governance", "Media",
    "Migration", "Mobile", "Networking", "Security", "Storage", "Web", "Other",
}
_QUANTITY_ROUNDING = Decimal("0.0000005")


def check_rows(rows: Iterable[Mapping[str, str]], header: Iterable[str], quantum: Decimal = Decimal("0.01"),
               limit: int = 20) -> list[str]:
    """Violations of the rules above (at most ``limit``), each naming the row (1 = first data row)."""
    problems: list[str] = []
    names = list(header)
    v14 = "ServiceProviderName" in names
    mandatory, extra = (MANDATORY_1_4, _FOCUS_EXTRA_1_4) if v14 else (MANDATORY, _FOCUS_EXTRA)
    not_null = _NOT_NULL + (_PROVIDERS_1_4[:1] if v14 else _PROVIDERS_1_2)
    problems += [f"header: missing FOCUS column {c}" for c in mandatory if c not in names]
    problems += [f"header: custom column {c} lacks the x_ prefix" for c in names
                 if c not in mandatory and c not in extra and not c.startswith("x_")]
    for n, row in enumerate(rows, start=1):
        problems += [f"row {n}: {p}" for p in _check_row(row, quantum, not_null)]
        if len(problems) >= limit:
            break
    return problems[:limit]


def _check_row(row: Mapping[str, str], quantum: Decimal, not_null: tuple[str, ...]) -> list[str]:
    out: list[str] = []

    def get(c: str) -> str | None:
        return row.get(c) or None

    out += [f"{c} is null" for c in not_null if get(c) is None]
    for c in _DECIMALS:
        if get(c) is not None and not _NUMBER.fullmatch(row[c]):
            out.append(f"{c}={row[c]!r} is not NumericFormat")
    for c in ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd"):
        if get(c) is not None and not _DATETIME.fullmatch(row[c]):
            out.append(f"{c}={row[c]!r} is not YYYY-MM-DDTHH:mm:ssZ")
    if out:
        return out
    bill = (row["BillingPeriodStart"], row["BillingPeriodEnd"])
    charge = (row["ChargePeriodStart"], row["ChargePeriodEnd"])  # ISO strings in UTC order like the instants
    if not (bill[0] < bill[1] and charge[0] < charge[1]):
        out.append("a period does not start before it ends")
    if not re.fullmatch(r"[A-Z]{3}", row["BillingCurrency"]):
        out.append(f"BillingCurrency={row['BillingCurrency']!r} is not ISO 4217")
    if row["ChargeCategory"] not in _CATEGORIES:
        out.append(f"ChargeCategory={row['ChargeCategory']!r} is not an allowed value")
    if row["ServiceCategory"] not in _SERVICE_CATEGORIES:
        out.append(f"ServiceCategory={row['ServiceCategory']!r} is not an allowed value")
    correction = get("ChargeClass")
    if correction not in (None, "Correction"):
        out.append(f"ChargeClass={correction!r} is neither null nor Correction")
    if correction is None and not (bill[0] <= charge[0] and charge[1] <= bill[1]):
        out.append("regular row's charge period is outside its billing period")
    if correction is not None and not charge[1] <= bill[0]:
        out.append("correction does not refer to a period before its billing period")
    if row["ChargeCategory"] == "Usage" and correction is None:
        out += [f"{c} is null on a Usage row" for c in _USAGE_NOT_NULL if get(c) is None]
        for c in ("PricingQuantity", "ConsumedQuantity", "ListUnitPrice", "ContractedUnitPrice"):
            if get(c) is not None and Decimal(row[c]) < 0:
                out.append(f"{c} is negative on a regular Usage row")
        for price, cost in (("ListUnitPrice", "ListCost"), ("ContractedUnitPrice", "ContractedCost")):
            if get(price) is not None and get("PricingQuantity") is not None:
                unit = Decimal(row[price])
                gap = abs(unit * Decimal(row["PricingQuantity"]) - Decimal(row[cost]))
                if gap >= quantum + unit * _QUANTITY_ROUNDING:
                    out.append(f"{price} x PricingQuantity is {gap} away from {cost}")
    for child, parent in (("SubAccountName", "SubAccountId"), ("ResourceName", "ResourceId"),
                          ("ResourceType", "ResourceId"), ("RegionName", "RegionId")):
        if get(parent) is None and get(child) is not None:
            out.append(f"{child} is set but {parent} is null")
    for tags in ("Tags", "AllocatedTags"):
        if get(tags) is not None:
            out += _check_tags(row[tags], tags)
    for name, value in row.items():
        if value and value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
            out.append(f"{name} starts with a formula character: {value[:20]!r}")
    return out


def _check_tags(text: str, column: str = "Tags") -> list[str]:
    def unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate keys")
        return dict(pairs)

    try:
        tags = json.loads(text, object_pairs_hook=unique)
    except ValueError as exc:
        return [f"{column} is not a JSON object with unique keys: {exc}"]
    if not isinstance(tags, dict):
        return [f"{column} is not a JSON object"]
    return [f"{column} value of {k!r} is not a scalar" for k, v in tags.items() if isinstance(v, (dict, list))]
