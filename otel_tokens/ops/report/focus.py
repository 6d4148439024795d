"""`--format focus`: a statement as FOCUS 1.2 (FinOps Open Cost and Usage Specification) CSV, the
format FinOps tools import, so LLM spend sits beside the cloud bill.

One row per day x app x user x department x model x token type: a usage charge whose consumed and
pricing quantity are tokens, whose SKU is the model and whose price is the token type's, with user,
department and app as tags (FOCUS's place for the customer's own allocation keys) and as `x_` columns.
The app (the calling process's service.name) is the `service_name` tag and `x_App`, not `ServiceName` or
`ResourceName`: in FOCUS those name the provider's offering and the provider's resource that was billed (here
"OpenAI LLM" and the model), whereas the app is who consumed it, a cost-allocation key like a team or a
project, which FOCUS puts in Tags.
Costs come from the app's price table: list, contracted, effective and billed cost are the same
(no discounts or commitments are known here); an unpriced model (a local one) costs 0, flagged by
x_Priced. Unit prices stay null: a line's cost is the cost counter's growth, and a price changed
inside the day would make "ListUnitPrice x PricingQuantity = ListCost" (a FOCUS rule) false; with
null unit prices FOCUS asks ListCost and ContractedCost to equal BilledCost, which they do.
A null is an empty CSV field, as FOCUS CSV files write it.
"""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from typing import Any

from otel_tokens import names
from otel_tokens.ops.report.model import USAGE_ERROR, ReportError
from otel_tokens.ops.report.render import _iso, _spreadsheet_safe
from otel_tokens.ops.report.statement import Line, Statement

# FOCUS 1.2's columns, in the specification's alphabetical order, then ours (x_ prefix: FOCUS's rule
# for custom columns).
COLUMNS = (
    "AvailabilityZone", "BilledCost", "BillingAccountId", "BillingAccountName", "BillingAccountType",
    "BillingCurrency", "BillingPeriodEnd", "BillingPeriodStart", "CapacityReservationId",
    "CapacityReservationStatus", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargeFrequency",
    "ChargePeriodEnd", "ChargePeriodStart", "CommitmentDiscountCategory", "CommitmentDiscountId",
    "CommitmentDiscountName", "CommitmentDiscountQuantity", "CommitmentDiscountStatus", "CommitmentDiscountType",
    "CommitmentDiscountUnit", "ConsumedQuantity", "ConsumedUnit", "ContractedCost", "ContractedUnitPrice",
    "EffectiveCost", "InvoiceId", "InvoiceIssuerName", "ListCost", "ListUnitPrice", "PricingCategory",
    "PricingCurrency", "PricingCurrencyContractedUnitPrice", "PricingCurrencyEffectiveCost",
    "PricingCurrencyListUnitPrice", "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "RegionId",
    "RegionName", "ResourceId", "ResourceName", "ResourceType", "ServiceCategory", "ServiceName",
    "ServiceSubcategory", "SkuId", "SkuMeter", "SkuPriceDetails", "SkuPriceId", "SubAccountId", "SubAccountName",
    "SubAccountType", "Tags",
    "x_UserId", "x_Department", "x_App", "x_TokenType", "x_EstimatedTokens", "x_Priced",
)
UNIT = "Tokens"
ACCOUNT_TYPE = "Internal chargeback"  # BillingAccountId is set, so FOCUS wants a readable type beside it
_PROVIDERS = {names.PROVIDER_OPENAI: "OpenAI", names.PROVIDER_TRANSFORMERS: "Self-hosted (transformers)"}
_METER = {names.TOKEN_TYPE_INPUT: "Input Tokens", names.TOKEN_TYPE_OUTPUT: "Output Tokens"}


def _decimal(value: float | int) -> str:
    return format(Decimal(repr(value)) if isinstance(value, float) else Decimal(value), "f")


def _provider(provider: str) -> str:
    return _PROVIDERS.get(provider) or provider or "unknown"


def _row(s: Statement, x: Line, currency: str, account: str) -> dict[str, Any]:
    cost = x.cost.get(currency, 0.0)
    provider = _provider(x.provider)
    return {
        "BilledCost": _decimal(cost), "EffectiveCost": _decimal(cost), "ListCost": _decimal(cost),
        "ContractedCost": _decimal(cost),
        "BillingAccountId": account, "BillingAccountName": account, "BillingAccountType": ACCOUNT_TYPE,
        "BillingCurrency": currency,
        "BillingPeriodStart": _iso(s.period.start), "BillingPeriodEnd": _iso(s.period.end),
        "ChargeCategory": "Usage", "ChargeFrequency": "Usage-Based",
        "ChargeDescription": f"{x.model} {_METER.get(x.token_type, x.token_type).lower()}",
        "ChargePeriodStart": _iso(x.day), "ChargePeriodEnd": _iso(x.day_end),
        "ConsumedQuantity": _decimal(x.tokens), "ConsumedUnit": UNIT,
        "PricingQuantity": _decimal(x.tokens), "PricingUnit": UNIT, "PricingCategory": "Standard",
        "InvoiceIssuerName": provider, "ProviderName": provider, "PublisherName": provider,
        "ServiceCategory": "AI and Machine Learning", "ServiceSubcategory": "Generative AI",
        "ServiceName": f"{provider} LLM",
        "SkuId": x.model, "SkuPriceId": f"{x.model}/{x.token_type}", "SkuMeter": _METER.get(x.token_type, x.token_type),
        "Tags": json.dumps({"user_id": x.user, "department": x.department, "service_name": x.app},
                           ensure_ascii=False, sort_keys=True),
        "x_UserId": x.user, "x_Department": x.department, "x_App": x.app, "x_TokenType": x.token_type,
        "x_EstimatedTokens": _decimal(x.estimated_tokens), "x_Priced": "true" if x.cost else "false",
    }


def to_focus(s: Statement, account: str) -> str:
    currencies = sorted({c for x in s.lines for c in x.cost})
    if len(currencies) > 1:
        raise ReportError("costs in several currencies (" + ", ".join(currencies) + "): a FOCUS row has one "
                          "BillingCurrency; set one reporting currency in every app", USAGE_ERROR)
    currency = currencies[0] if currencies else "USD"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n", restval="", quoting=csv.QUOTE_ALL)
    writer.writeheader()
    for x in s.lines:
        if x.tokens or x.cost:
            writer.writerow({k: _spreadsheet_safe(v) for k, v in _row(s, x, currency, account).items()})
    return buffer.getvalue()
