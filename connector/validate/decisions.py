"""The decisions behind two canonical fields of a validation sample, for the report's mapping
section: which candidate policy each invoice was billed to and where it came from
(`patient.policy_number`), and which kind of category rule placed each item
(`items[].category`), with the descriptions no rule placed.

Item descriptions are vendor free text and may name a patient ("Report for ..."), so one is
shown only when it cannot point at one: when the vendors' error-text filter passes it
(`is_safe_vendor_text`), when its words are those of the rule that decided it (a rule's name
comes from the rules file), or when it was billed to at least `SHARED_BY_PATIENTS` different
patients (price-list wording) and carries no long number or e-mail. The others are counted
under one withheld row, and withheld too wherever a finding's message quotes them. A format
error quotes the vendor's value ("not a number: '...'"), which may be a name or a policy put
in the wrong field: findings keep such a value only when it has the shape of a date, time or
amount (`safe_message`).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from connector.issues import Issue, Reason
from connector.masking import mask_policy
from connector.model import LINK_ORIGIN, RECORD_ORIGIN, Invoice
from connector.policies import PolicyChecker
from connector.sources.bodies import is_safe_vendor_text
from connector.validate.sample import RecordResult

# How an invoice's policy was found: the registry's patient link, the record's own policy
# field, or a vendor reference field the mapping lists as a candidate (its origin names it).
POLICY_KINDS = ("link", "record", "reference", "none")
# The kinds of category rule, in the order the categorizer tries them; "none": no rule.
CATEGORY_KINDS = ("exact", "non-clinical", "map", "keyword", "pattern", "fallback", "none")
MAX_CONFLICT_EXAMPLES = 5
MAX_UNMAPPED_DESCRIPTIONS = 10
# A description billed to this many different patients is price-list text, not about one.
SHARED_BY_PATIENTS = 3
DESCRIPTION_WITHHELD = "(description withheld: may contain patient data)"
_LONG_NUMBER = re.compile(r"\d{4,}")
# Findings whose messages quote the value that failed its format.
_VALUE_QUOTING = frozenset(
    {Reason.FIELD_INVALID, Reason.AMOUNT_INVALID, Reason.MONEY_PRECISION, Reason.PAYLOAD_INVALID}
)
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")
# A date, a time or an amount: digits and their separators, no run long enough for an id.
_VALUE_SHAPE = re.compile(r"^[\d\s.,:/+\-$€£TZ]{1,40}$")
_ID_DIGITS = re.compile(r"\d{5,}")
VALUE_WITHHELD = "(value withheld)"
_WORDS = re.compile(r"[^\W\d_]+|\d+")


def policy_kind(origin: str | None) -> str:
    """`POLICY_KINDS` of a candidate's origin (None: the invoice has no policy at all)."""
    if origin is None:
        return "none"
    if origin == LINK_ORIGIN:
        return "link"
    if origin == RECORD_ORIGIN:
        return "record"
    return "reference"


def rule_kind(rule: str | None) -> str:
    """`CATEGORY_KINDS` of a recorded rule name ("keyword:laboratory/hemograma" → keyword)."""
    if not rule:
        return "none"
    return rule.split(":", 1)[0]


def used_origin(invoice: Invoice) -> str | None:
    """Where the billed policy came from; a policy the resolution did not see (no registry
    wiring) is the record's own."""
    patient = invoice.patient
    if patient.policy_source is not None:
        return patient.policy_source
    return RECORD_ORIGIN if (patient.policy_number or "").strip() else None


def disagreeing(invoice: Invoice) -> bool:
    """The invoice had candidates with different numbers to choose from."""
    return len({c.number for c in invoice.patient.policy_candidates}) > 1


def masked_candidates(invoice: Invoice, checker: PolicyChecker | None) -> list[dict[str, Any]]:
    """Every candidate of an invoice whose candidates disagree, masked, with its standing
    (best first: the resolution rule's order); [] when there was nothing to choose."""
    if not disagreeing(invoice):
        return []
    candidates = list(invoice.patient.policy_candidates)
    day = invoice.invoice_date
    ranked = (
        checker.rank_candidates(candidates, day)
        if checker is not None
        else [(None, c) for c in candidates]
    )
    used = (invoice.patient.policy_number, used_origin(invoice))
    return [
        {
            "origin": candidate.origin,
            "kind": policy_kind(candidate.origin),
            "number": mask_policy(candidate.number),
            "standing": standing.name.lower() if standing is not None else None,
            "used": (candidate.number, candidate.origin) == used,
        }
        for standing, candidate in ranked
    ]


def policy_resolution(
    records: Iterable[RecordResult], checker: PolicyChecker | None
) -> dict[str, Any]:
    """How the sample's invoices were billed: per kind and per origin, how many had
    candidates to choose from, and the POLICY_CONFLICT warnings with a few masked examples."""
    kinds: Counter[str] = Counter({kind: 0 for kind in POLICY_KINDS})
    origins: Counter[str] = Counter()
    several = conflicts = 0
    examples: list[dict[str, Any]] = []
    for record in records:
        invoice = record.invoice
        if invoice is None:
            continue
        origin = used_origin(invoice)
        kinds[policy_kind(origin)] += 1
        if origin is not None:
            origins[origin] += 1
        several += disagreeing(invoice)
        if any(i.code is Reason.POLICY_CONFLICT for i in record.issues):
            conflicts += 1
            if len(examples) < MAX_CONFLICT_EXAMPLES:
                examples.append(
                    {"id": record.key, "candidates": masked_candidates(invoice, checker)}
                )
    return {
        "by_kind": dict(kinds),
        "by_origin": [
            {"origin": origin, "kind": policy_kind(origin), "invoices": n}
            for origin, n in origins.most_common()
        ],
        "with_several_candidates": several,
        "conflicts": conflicts,
        "conflict_examples": examples,
    }


@dataclass
class DescriptionFilter:
    """Which item descriptions of a sample may be shown (see the module docstring)."""

    patients: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    @classmethod
    def of(cls, records: Iterable[RecordResult]) -> DescriptionFilter:
        found = cls()
        for record in records:
            invoice = record.invoice
            if invoice is None:
                continue
            patient = invoice.patient
            # Who the line was billed to; an invoice without any patient datum counts alone.
            who = patient.source_ref or patient.policy_number or patient.name or record.key
            for item in invoice.items:
                if item.description:
                    found.patients[item.description].add(who)
        return found

    def shows(self, description: str, rule: str | None = None) -> bool:
        """Whether `description` may be shown; `rule`, the category rule that decided its
        item: words of a rule's name come from the rules file, never from a patient."""
        collapsed = " ".join(description.split())
        if is_safe_vendor_text(collapsed) or _told_by_rule(collapsed, rule):
            return True
        return (
            len(self.patients.get(description, ())) >= SHARED_BY_PATIENTS
            and "@" not in description
            and not _LONG_NUMBER.search(description)
        )

    def shown(self, description: str, rule: str | None = None) -> str:
        return description if self.shows(description, rule) else DESCRIPTION_WITHHELD

    def scrub_message(self, message: str, invoice: Invoice | None) -> str:
        """A finding's message with the invoice's unshowable descriptions withheld (a
        category warning quotes the description it could not place)."""
        if invoice is None:
            return message
        for item in invoice.items:
            text = item.description
            if text and text in message and not self.shows(text, item.category_rule):
                message = message.replace(text, DESCRIPTION_WITHHELD)
        return message


def _told_by_rule(description: str, rule: str | None) -> bool:
    """Every word of the description is a word of the deciding rule's name or a generic one
    ("Admin fee" placed by `non-clinical:admin fee`)."""
    if not rule:
        return False
    known = set(_WORDS.findall(rule.lower()))
    words = _WORDS.findall(description.lower())
    return bool(words) and all(w in known or is_safe_vendor_text(w) for w in words)


def _shown_value(match: re.Match[str]) -> str:
    value = match.group(1) if match.group(1) is not None else match.group(2)
    if is_safe_vendor_text(value) or (_VALUE_SHAPE.match(value) and not _ID_DIGITS.search(value)):
        return match.group(0)
    return VALUE_WITHHELD


def safe_message(issue: Issue, invoice: Invoice | None, descriptions: DescriptionFilter) -> str:
    """A finding's message as a report may show it: unshowable descriptions withheld, and a
    quoted vendor value of a format error kept only in the shape of a date or an amount."""
    message = descriptions.scrub_message(issue.message, invoice)
    if issue.code in _VALUE_QUOTING:
        message = _QUOTED.sub(_shown_value, message)
    return message


def category_decisions(
    records: Iterable[RecordResult], descriptions: DescriptionFilter
) -> dict[str, Any]:
    """Per rule kind the items it placed (by category), and the most frequent descriptions
    left unmapped with the rule that left them so (a non-clinical charge) or none."""
    by_kind: Counter[str] = Counter({kind: 0 for kind in CATEGORY_KINDS})
    by_kind_category: dict[str, Counter[str]] = defaultdict(Counter)
    unmapped: Counter[tuple[str, str | None]] = Counter()
    for record in records:
        invoice = record.invoice
        if invoice is None:
            continue
        for item in invoice.items:
            kind = rule_kind(item.category_rule)
            by_kind[kind] += 1
            category = item.category.value if item.category else "(unmapped)"
            by_kind_category[kind][category] += 1
            if item.category is None:
                rule = item.category_rule if kind != "none" else None
                text = descriptions.shown(item.description, rule) if item.description else None
                unmapped[(text or "(no description)", rule)] += 1
    return {
        "by_kind": [
            {"kind": kind, "count": n, "categories": dict(by_kind_category[kind].most_common())}
            for kind, n in by_kind.items()
        ],
        "unmapped": [
            {"description": text, "count": n, "rule": rule}
            for (text, rule), n in unmapped.most_common(MAX_UNMAPPED_DESCRIPTIONS)
        ],
    }
