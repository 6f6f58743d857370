"""Reason codes and the `Issue` value that explains why a record was rejected or flagged.

The codes are a stable, documented contract (docs/reason-codes.md): reports, quarantine
filters and integrators' CI depend on them, so codes are only ever added, never renamed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class Reason(StrEnum):
    PAYLOAD_INVALID = "PAYLOAD_INVALID"
    FIELD_MISSING = "FIELD_MISSING"
    FIELD_INVALID = "FIELD_INVALID"
    MONEY_PRECISION = "MONEY_PRECISION"
    AMOUNT_INVALID = "AMOUNT_INVALID"
    STATUS_UNMAPPED = "STATUS_UNMAPPED"
    NO_ITEMS = "NO_ITEMS"
    CATEGORY_UNMAPPED = "CATEGORY_UNMAPPED"
    ITEM_TOTAL_MISMATCH = "ITEM_TOTAL_MISMATCH"
    INVOICE_TOTAL_MISMATCH = "INVOICE_TOTAL_MISMATCH"
    POLICY_MISSING = "POLICY_MISSING"
    POLICY_FORMAT = "POLICY_FORMAT"
    POLICY_UNKNOWN = "POLICY_UNKNOWN"
    POLICY_INACTIVE = "POLICY_INACTIVE"
    POLICY_CONFLICT = "POLICY_CONFLICT"
    DETAIL_UNAVAILABLE = "DETAIL_UNAVAILABLE"
    DUPLICATE_IN_RUN = "DUPLICATE_IN_RUN"


REASON_HELP: dict[Reason, tuple[str, str]] = {
    Reason.PAYLOAD_INVALID: (
        "The vendor record does not have the shape its API documents (wrong types, not an object).",
        "Fix the record at the source; if the vendor changed its format, update the mapping.",
    ),
    Reason.FIELD_MISSING: (
        "A required field is absent, null or empty.",
        "Fill the field at the source (invoice number, date, patient name, item description...).",
    ),
    Reason.FIELD_INVALID: (
        "A field is present but malformed (date not YYYY-MM-DD, unparseable timestamp...).",
        "Send the field in the documented format.",
    ),
    Reason.MONEY_PRECISION: (
        "An amount has more than two decimal places.",
        "Round amounts to cents at the source; the connector never rounds money silently.",
    ),
    Reason.AMOUNT_INVALID: (
        "An amount is negative, not a finite number, or absurdly large.",
        "Correct the amount at the source.",
    ),
    Reason.STATUS_UNMAPPED: (
        "The source's status word is not in the status map.",
        "Add the word to the source's `status_map` in config, or fix it at the source.",
    ),
    Reason.NO_ITEMS: (
        "The invoice has no line items; MediTrak needs at least one.",
        "Add the billed services as items at the source.",
    ),
    Reason.CATEGORY_UNMAPPED: (
        "A line item's category is not one of the ten MediTrak categories and no rule matched; "
        "or the line is a non-clinical charge (cancellation / missed-appointment fee, "
        "surcharge, gift voucher, admin, booking or report fee, late payment), for which "
        "MediTrak has no category.",
        "Send a valid category, or add a category rule / fallback for the source; for "
        "non-clinical charges set the source's `non_clinical_category`. "
        '`connector categories explain "TEXT"` shows which rule decided.',
    ),
    Reason.ITEM_TOTAL_MISMATCH: (
        "An item's total is not quantity x unit price (to the cent).",
        "Correct the item at the source.",
    ),
    Reason.INVOICE_TOTAL_MISMATCH: (
        "The invoice total does not equal the sum of its items (after documented tax/discount).",
        "Correct the total or the items at the source.",
    ),
    Reason.POLICY_MISSING: (
        "No insurance policy number on the invoice and no patient link gives one.",
        "Send the policy number, or import a patient link (`connector policies link`).",
    ),
    Reason.POLICY_FORMAT: (
        "The policy number does not match the registry's format.",
        "Correct the policy number at the source.",
    ),
    Reason.POLICY_UNKNOWN: (
        "The policy number is not in the policy registry.",
        "Synchronise the registry (`connector policies import`), then `connector reprocess`.",
    ),
    Reason.POLICY_INACTIVE: (
        "The policy exists but is inactive or not valid on the invoice date.",
        "Update the registry or the invoice, then `connector reprocess`.",
    ),
    Reason.POLICY_CONFLICT: (
        "A warning, never a block: the invoice's candidate policies (patient link, vendor "
        "reference fields, the record's policy) disagree. The one billed ranks best in the "
        "registry: registered and active, then inactive, then unknown, then not in the "
        "registry's format; ties go to the patient link, then the vendor's order "
        "(docs/sources.md).",
        "Check the candidates named in the message; correct the source or the link "
        "(`connector policies link`) so that they agree.",
    ),
    Reason.DETAIL_UNAVAILABLE: (
        "The list named the invoice but its detail call failed for this record only.",
        "Check the record at the source; it is retried on the next sync.",
    ),
    Reason.DUPLICATE_IN_RUN: (
        "The same invoice id arrived twice in one run with different content.",
        "Make ids unique at the source; the later copy is kept in quarantine for review.",
    ),
}


@dataclass(frozen=True, slots=True)
class Issue:
    """One finding about one record: a stable code, where it is, and what is wrong."""

    code: Reason
    path: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def as_dict(self) -> dict[str, str]:
        return {
            "code": self.code.value,
            "path": self.path,
            "message": self.message,
            "severity": self.severity,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, str]) -> Issue:
        severity: Literal["error", "warning"] = (
            "warning" if raw.get("severity") == "warning" else "error"
        )
        return cls(Reason(raw["code"]), raw.get("path", ""), raw.get("message", ""), severity)


def errors_only(issues: list[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity == "error"]
