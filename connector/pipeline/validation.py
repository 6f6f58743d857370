"""Business validation of canonical invoices: accepted, or every reason it is not.

Pure functions over `Invoice`. The policy registry plugs in as a `PolicyCheck` so that this
module stays free of I/O; the engine passes one that reads a snapshot of the registry.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal

from connector.issues import Issue, Reason
from connector.mapping.types import MAX_AMOUNT, more_places_than
from connector.model import QUANTITY_PLACES, Invoice, LineItem, plain_quantity, to_cents
from connector.pipeline.categories import unmapped_message

PolicyCheck = Callable[[Invoice], list[Issue]]

_CURRENCY = re.compile(r"^[A-Z]{3}$")

# The longest text the store keeps per field (connector/store/schema.py). PostgreSQL refuses a
# longer value, and with it the whole batch: over-long text is this record's problem instead.
TEXT_LIMITS: dict[str, int] = {
    "id": 200,
    "invoice_number": 200,
    "source_status": 100,
    "facility": 300,
    "patient.name": 300,
    "patient.policy_number": 100,
    "patient.source_ref": 200,
}
ITEM_TEXT_LIMITS: dict[str, int] = {
    "description": 1000,
    "source_category": 300,
    "category_rule": 200,
}


def _in_range(value: Decimal) -> bool:
    """Finite and small enough that cent arithmetic stays within Decimal's precision."""
    return value.is_finite() and -MAX_AMOUNT < value < MAX_AMOUNT


def _amount_problem(value: Decimal) -> tuple[Reason, str] | None:
    """What is wrong with one amount, if anything (the path is added by the caller, which
    builds it only for the rare amount that has a problem)."""
    if not value.is_finite() or value < 0 or value >= MAX_AMOUNT:
        return Reason.AMOUNT_INVALID, f"amount {value} is out of range"
    if more_places_than(value, 2):
        return Reason.MONEY_PRECISION, f"{value} has more than two decimal places"
    return None


def _item_issues(index: int, item: LineItem, issues: list[Issue]) -> bool:
    """Append the issues of one item; whether its total is in range (for the invoice sum).

    The checks and their order are those of the reason-code table; written as plain
    appends rather than generators because they run for every item (docs/performance.md)."""
    quantity, unit_price, total = item.quantity, item.unit_price, item.total
    if item.category is None:
        said = f" ({item.source_category!r})" if item.source_category else ""
        # A rule may leave an item unmapped on purpose (a non-clinical charge): it says why.
        message = unmapped_message(item) or f"no MediTrak category{said}"
        issues.append(Issue(Reason.CATEGORY_UNMAPPED, f"items[{index}].category", message))
    if not item.description:
        issues.append(
            Issue(
                Reason.FIELD_MISSING, f"items[{index}].description", "item description is required"
            )
        )
    quantity_in_range = _in_range(quantity)
    if not quantity.is_finite() or quantity <= 0 or quantity >= MAX_AMOUNT:
        issues.append(
            Issue(Reason.AMOUNT_INVALID, f"items[{index}].quantity", "quantity must be positive")
        )
    elif more_places_than(quantity, QUANTITY_PLACES):
        # The store keeps six places; more would be rounded silently (PostgreSQL) or differ
        # between backends.
        issues.append(
            Issue(
                Reason.AMOUNT_INVALID,
                f"items[{index}].quantity",
                f"quantity {quantity} has more than {QUANTITY_PLACES} decimal places",
            )
        )
    problem = _amount_problem(unit_price)
    if problem is not None:
        issues.append(Issue(problem[0], f"items[{index}].unit_price", problem[1]))
    problem = _amount_problem(total)
    if problem is not None:
        issues.append(Issue(problem[0], f"items[{index}].total", problem[1]))
    for name, limit in ITEM_TEXT_LIMITS.items():
        value = getattr(item, name)
        if value is not None and len(value) > limit:
            issues.append(
                Issue(
                    Reason.FIELD_INVALID,
                    f"items[{index}].{name}",
                    f"{len(value)} characters; at most {limit} can be stored",
                )
            )
    if not quantity_in_range:
        issues.append(
            Issue(Reason.AMOUNT_INVALID, f"items[{index}].quantity", "quantity is out of range")
        )
    total_in_range = _in_range(total)
    if quantity_in_range and total_in_range and _in_range(unit_price):
        expected = to_cents(quantity * unit_price)
        if expected != total:
            issues.append(
                Issue(
                    Reason.ITEM_TOTAL_MISMATCH,
                    f"items[{index}].total",
                    f"total {total} != quantity {quantity} x unit price {unit_price} = {expected}",
                )
            )
    return total_in_range


def validate_invoice(invoice: Invoice, policy_check: PolicyCheck | None = None) -> list[Issue]:
    """All issues of one canonical invoice; no error-severity issue means it may be stored."""
    issues: list[Issue] = []
    if invoice.invoice_number in (None, ""):
        issues.append(Issue(Reason.FIELD_MISSING, "invoice_number", "invoice_number is required"))
    if invoice.invoice_date in (None, ""):
        issues.append(Issue(Reason.FIELD_MISSING, "invoice_date", "invoice_date is required"))
    patient = invoice.patient
    if not patient.name:
        issues.append(Issue(Reason.FIELD_MISSING, "patient.name", "patient name is required"))
    if invoice.status is None:
        issues.append(
            Issue(Reason.STATUS_UNMAPPED, "status", "status word is not in the status map")
        )
    texts = (
        invoice.id,
        invoice.invoice_number,
        invoice.source_status,
        invoice.facility,
        patient.name,
        patient.policy_number,
        patient.source_ref,
    )
    for (name, limit), value in zip(TEXT_LIMITS.items(), texts, strict=True):
        if value is not None and len(value) > limit:
            issues.append(
                Issue(
                    Reason.FIELD_INVALID,
                    name,
                    f"{len(value)} characters; at most {limit} can be stored",
                )
            )
    if not _CURRENCY.match(invoice.currency):
        issues.append(
            Issue(Reason.FIELD_INVALID, "currency", f"{invoice.currency[:20]!r} is not ISO 4217")
        )
    problem = _amount_problem(invoice.total_amount)
    if problem is not None:
        issues.append(Issue(problem[0], "total_amount", problem[1]))
    if invoice.paid_amount is not None:
        problem = _amount_problem(invoice.paid_amount)
        if problem is not None:
            issues.append(Issue(problem[0], "paid_amount", problem[1]))
    items = invoice.items
    if not items:
        issues.append(Issue(Reason.NO_ITEMS, "items", "at least one line item is required"))
    totals_in_range = True
    for index, item in enumerate(items):
        if not _item_issues(index, item, issues):
            totals_in_range = False
    if items and totals_in_range:
        items_sum = sum((i.total for i in items), Decimal(0))
        if items_sum != invoice.total_amount:
            issues.append(
                Issue(
                    Reason.INVOICE_TOTAL_MISMATCH,
                    "total_amount",
                    f"total {invoice.total_amount} != sum of items {items_sum}",
                )
            )
    if policy_check is not None:
        issues.extend(policy_check(invoice))
    elif not patient.policy_number:
        issues.append(
            Issue(Reason.POLICY_MISSING, "patient.policy_number", "policy number is required")
        )
    return issues


def _same(a: Decimal | None, b: Decimal | None) -> bool:
    """Same value in the same spelling (1.5 == 1.50 as numbers, not in the stored form)."""
    # compare_total orders by value, then exponent: zero only for identical spellings.
    return a is b or (a is not None and b is not None and not a.compare_total(b))


def normalized(invoice: Invoice) -> Invoice:
    """The stored form of an accepted invoice: every amount exactly two places, quantities
    in their plain spelling."""
    # Most invoices already are in stored form: copying pydantic models only when a value
    # changes spelling halves the cost of this step (docs/performance.md).
    items = []
    changed = False
    for item in invoice.items:
        quantity = plain_quantity(item.quantity)
        unit_price = to_cents(item.unit_price)
        total = to_cents(item.total)
        if (
            _same(quantity, item.quantity)
            and _same(unit_price, item.unit_price)
            and _same(total, item.total)
        ):
            items.append(item)
            continue
        changed = True
        items.append(
            item.model_copy(update={"quantity": quantity, "unit_price": unit_price, "total": total})
        )
    total_amount = to_cents(invoice.total_amount)
    paid = None if invoice.paid_amount is None else to_cents(invoice.paid_amount)
    if (
        not changed
        and _same(total_amount, invoice.total_amount)
        and _same(paid, invoice.paid_amount)
    ):
        return invoice
    return invoice.model_copy(
        update={"total_amount": total_amount, "paid_amount": paid, "items": tuple(items)}
    )
