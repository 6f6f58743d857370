"""Vendor lines as canonical items: categorised by the rules, and folded when a discount or an
added tax changes their amount (MediTrak's items have neither, only quantity x unit price).

The fold rule, written once for every mapping: a line with adjustments becomes quantity 1 x
its net amount, and its description records the original arithmetic in one format,
`Name (0.5 × 193.99, less 20.00, +10% tax 7.70)`:
- quantities and rates as plain numbers: `0.5`, `3`, `12.5` (no trailing zeros, no exponent);
- amounts with exactly two places: `193.99`, `20.00` (no separators, no currency sign);
- the parts in the order the mapping lists the adjustments, joined by ", ".
Pure and `Decimal` throughout; see `fold_line` for the one rounding step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

from connector.mapping.kit import CategoryMatch, MappingContext
from connector.mapping.types import more_places_than
from connector.model import CENT, LineItem, plain_quantity, to_cents

_ONE = Decimal(1)
_HUNDRED = Decimal(100)


def number_text(value: Decimal) -> str:
    """A quantity or a rate as a bill writes it: 2 not 2.000, 0.5 not 0.50, 100 not 1E+2."""
    return f"{plain_quantity(value):f}"


def money_text(amount: Decimal) -> str:
    """An amount with two places. Never rounded: an amount with fractional cents (which
    validation quarantines as MONEY_PRECISION) is shown as it is, so the note cannot disagree
    with the arithmetic it explains."""
    if more_places_than(amount, 2):
        return f"{amount.normalize():f}"
    return f"{amount.quantize(CENT):f}"


def percent_of(amount: Decimal, rate: Decimal) -> Decimal:
    """`rate` % of `amount`, rounded half-up to the cent: how vendors compute a line's tax or
    an invoice's percentage discount (the rounding is theirs, and documented per vendor)."""
    return to_cents(amount * rate / _HUNDRED)


def allocate(amount: Decimal, weights: Sequence[Decimal]) -> list[Decimal]:
    """`amount` split in proportion to `weights` (an invoice-level discount over its lines),
    each share rounded to cents and the remainder on the last, so that the shares always sum
    to `amount` exactly."""
    if not weights:
        return []
    zero = Decimal("0.00")
    whole = sum(weights, zero)
    if whole <= 0:
        return [zero] * (len(weights) - 1) + [amount]
    shares = [to_cents(amount * weight / whole) for weight in weights[:-1]]
    return [*shares, amount - sum(shares, zero)]


@dataclass(frozen=True, slots=True)
class Adjustment:
    """One change to a line's amount, and how the folded description names it."""

    # Added to the line: negative for a discount.
    amount: Decimal
    note: str
    # A share of an invoice-level adjustment: not part of the vendor's own line total.
    of_invoice: bool = False


def discount(amount: Decimal) -> Adjustment:
    """A line's own discount: `less 20.00`."""
    return Adjustment(-amount, f"less {money_text(amount)}")


def invoice_discount_share(amount: Decimal) -> Adjustment:
    """The line's share of an invoice-level discount: `less 3.34 invoice discount`."""
    return Adjustment(-amount, f"less {money_text(amount)} invoice discount", of_invoice=True)


def added_tax(amount: Decimal, rate: Decimal | None = None, name: str = "tax") -> Adjustment:
    """Tax added on top of the line: `+10% tax 7.70`, `+18% GST 405.00`, `+GST 405.00` when
    the vendor gives no rate."""
    rate_text = f"{number_text(rate)}% " if rate else ""
    return Adjustment(amount, f"+{rate_text}{name} {money_text(amount)}")


class LineAmounts(NamedTuple):
    """What a canonical item shows of a vendor line, folded or not."""

    description: str | None
    quantity: Decimal
    unit_price: Decimal
    total: Decimal


def fold_line(
    description: str | None,
    quantity: Decimal,
    unit_price: Decimal,
    adjustments: Sequence[Adjustment] = (),
    *,
    stated_total: Decimal | None = None,
) -> LineAmounts:
    """A vendor line as MediTrak quantity x unit price: as billed without adjustments, else
    quantity 1 x its net amount, the description ending in the original arithmetic.

    The one rounding step is the gross, quantity x unit price half-up to the cent: the
    vendors' own rule and the one validation checks. Adjustments are added exactly as given,
    so a discount or tax with fractional cents leaves a unit price that validation quarantines
    as MONEY_PRECISION rather than one silently rounded here.

    `stated_total` is the vendor's own total for the line (its own adjustments included, not
    invoice-level shares), kept as the item total so that a vendor line whose parts do not add
    up to it is an ITEM_TOTAL_MISMATCH instead of being silently trusted. Without it the item
    total is the computed one.
    """
    if not adjustments:
        total = to_cents(quantity * unit_price) if stated_total is None else stated_total
        return LineAmounts(description, quantity, unit_price, total)
    net = to_cents(quantity * unit_price)
    invoice_shares = Decimal(0)
    for adjustment in adjustments:
        net += adjustment.amount
        if adjustment.of_invoice:
            invoice_shares += adjustment.amount
    total = net if stated_total is None else stated_total + invoice_shares
    if description is not None:
        arithmetic = [f"{number_text(quantity)} × {money_text(unit_price)}"]
        arithmetic.extend(adjustment.note for adjustment in adjustments)
        description = f"{description} ({', '.join(arithmetic)})"
    return LineAmounts(description, _ONE, net, total)


def line_item(
    ctx: MappingContext,
    source_category: str | None,
    description: str | None,
    quantity: Decimal,
    unit_price: Decimal,
    total: Decimal,
    match: CategoryMatch | None = None,
) -> LineItem:
    """A canonical item, categorised by the rules from the vendor's category word and the
    description unless `match` (made from the vendor's own words) is given."""
    if match is None:
        match = ctx.categorize(source_category, description)
    return LineItem(
        category=match.category,
        description=description,
        quantity=quantity,
        unit_price=unit_price,
        total=total,
        source_category=source_category,
        category_rule=match.rule,
    )


def vendor_line(
    ctx: MappingContext,
    source_category: str | None,
    description: str | None,
    quantity: Decimal,
    unit_price: Decimal,
    adjustments: Sequence[Adjustment] = (),
    *,
    stated_total: Decimal | None = None,
) -> LineItem:
    """A vendor line as a canonical item, folded by `fold_line`. The rules see the vendor's
    own description, not the folded one."""
    match = ctx.categorize(source_category, description)
    amounts = fold_line(description, quantity, unit_price, adjustments, stated_total=stated_total)
    return line_item(ctx, source_category, *amounts, match)
