"""Contract compliance and mapping coverage of a validation sample.

Per canonical field: how many records were checked, had it, and had it well typed and
formatted; each issue is attributed to its field from its path (canonical paths of a built
invoice, or the vendor paths the mapping declares, `fields.FieldSources`). Then item
arithmetic, invoice totals, duplicate ids, dates covered; status words, category rules,
unrecognised vendor category words and policy numbers.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date, datetime
from typing import Any

from connector.issues import Issue, Reason
from connector.model import Invoice
from connector.pipeline.engine import RecordProcessor
from connector.validate.checks import Checks
from connector.validate.decisions import DescriptionFilter, category_decisions, policy_resolution
from connector.validate.fields import FIELDS, FieldSources, canonical_field
from connector.validate.sample import RecordResult, Sample

# Arithmetic and registry findings are reported in their own sections, not as field format.
_NOT_FIELD_FORMAT = frozenset(
    {
        Reason.ITEM_TOTAL_MISMATCH,
        Reason.INVOICE_TOTAL_MISMATCH,
        Reason.POLICY_UNKNOWN,
        Reason.POLICY_INACTIVE,
        Reason.DETAIL_UNAVAILABLE,
        Reason.DUPLICATE_IN_RUN,
    }
)
_MISSING_CODES = frozenset(
    r.value for r in (Reason.FIELD_MISSING, Reason.POLICY_MISSING, Reason.NO_ITEMS)
)


def _present(invoice: Invoice, name: str) -> bool | None:
    """Whether the canonical invoice carries the field (None: not applicable)."""
    if name == "id":
        return bool(invoice.id)
    if name == "invoice_number":
        return bool(invoice.invoice_number)
    if name == "invoice_date":
        return invoice.invoice_date is not None
    if name == "total_amount":
        return True
    if name == "status":
        return bool(invoice.source_status) or invoice.status is not None
    if name == "facility":
        return bool(invoice.facility)
    if name == "patient.name":
        return bool(invoice.patient.name)
    if name == "patient.policy_number":
        return bool(invoice.patient.policy_number)
    if name == "items":
        return bool(invoice.items)
    if not invoice.items:
        return None
    attribute = name.removeprefix("items[].")
    if attribute == "category":
        return all(i.category is not None or i.source_category for i in invoice.items)
    if attribute == "description":
        return all(bool(i.description) for i in invoice.items)
    return True


def errors_by_field(record: RecordResult, sources: FieldSources) -> dict[str, set[str]]:
    """The error codes of one record per canonical field. A built invoice's issues name
    canonical paths; the errors of a record the mapping could not build name the vendor's,
    attributed through the mapping's declaration (never guessed)."""
    bad: dict[str, set[str]] = defaultdict(set)
    for issue in record.issues:
        if issue.severity != "error" or issue.code in _NOT_FIELD_FORMAT:
            continue
        if record.invoice is not None:
            name = canonical_field(issue)
            names: tuple[str, ...] = (name,) if name is not None else ()
        else:
            names = sources.vendor_fields_of(issue)
        for name in names:
            bad[name].add(issue.code.value)
    return bad


def field_compliance(records: list[RecordResult], sources: FieldSources) -> list[dict[str, Any]]:
    checked: Counter[str] = Counter()
    present: Counter[str] = Counter()
    valid: Counter[str] = Counter()
    problems: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        bad = errors_by_field(record, sources)
        for name in FIELDS:
            invoice = record.invoice
            if invoice is None and name == "id":
                here: bool | None = not record.key.startswith("sha256:")
            elif invoice is None:
                # The mapping could not build the record: only what its errors name is judged.
                if name not in bad:
                    continue
                here = not bad[name] & _MISSING_CODES
            else:
                here = _present(invoice, name)
                if here is None:
                    continue
                if bad[name] & _MISSING_CODES:
                    here = False
            checked[name] += 1
            if here:
                present[name] += 1
            if here and not bad[name]:
                valid[name] += 1
            for code in bad[name]:
                problems[name][code] += 1
    rows = []
    for name in FIELDS:
        n = checked[name]
        rows.append(
            {
                "field": name,
                "required": name != "facility",
                "checked": n,
                "present": present[name],
                "valid": valid[name],
                "pass_rate": round(valid[name] / n, 4) if n else None,
                "problems": dict(problems[name].most_common()),
            }
        )
    return rows


def contract_section(sample: Sample, sources: FieldSources) -> dict[str, Any]:
    records = sample.records
    items_checked = mismatched_items = invoices_checked = mismatched_totals = 0
    without_items = 0
    dates: list[date] = []
    updated: list[datetime] = []
    for record in records:
        invoice = record.invoice
        codes = record.codes()
        if "NO_ITEMS" in codes:
            without_items += 1
        if invoice is None:
            continue
        if invoice.invoice_date is not None:
            dates.append(invoice.invoice_date)
        if invoice.source_updated_at is not None:
            updated.append(invoice.source_updated_at)
        items_checked += len(invoice.items)
        mismatched_items += sum(1 for i in record.issues if i.code is Reason.ITEM_TOTAL_MISMATCH)
        if invoice.items:
            invoices_checked += 1
            mismatched_totals += "INVOICE_TOTAL_MISMATCH" in codes
    return {
        "fields": field_compliance(records, sources),
        "item_arithmetic": {"items": items_checked, "mismatched": mismatched_items},
        "invoice_totals": {"invoices": invoices_checked, "mismatched": mismatched_totals},
        "without_items": without_items,
        "duplicate_ids": [
            {"id": key, "extra_copies": n} for key, n in sorted(sample.duplicates.items())
        ],
        "date_range": {
            "invoice_date_from": min(dates).isoformat() if dates else None,
            "invoice_date_to": max(dates).isoformat() if dates else None,
            "updated_from": min(updated).isoformat() if updated else None,
            "updated_to": max(updated).isoformat() if updated else None,
        },
        "pages": sample.pages,
    }


def _placed_by(rule: str | None) -> str:
    if not rule:
        return "none"
    return rule.split(":", 1)[0] if ":" in rule else rule


def mapping_section(
    sample: Sample, processor: RecordProcessor, checks: Checks
) -> tuple[dict[str, Any], dict[str, list[Issue]]]:
    """Status words, category rules and policies; plus vocabulary warnings per record key."""
    words: Counter[str] = Counter()
    mapped: dict[str, str | None] = {}
    by_rule: Counter[str] = Counter()
    by_category: Counter[str] = Counter()
    vocabulary: Counter[str] = Counter()
    word_rules: dict[str, Counter[str]] = defaultdict(Counter)
    policies = Counter({"matched": 0, "unknown": 0, "inactive": 0, "bad_format": 0, "missing": 0})
    for record in sample.records:
        invoice = record.invoice
        if invoice is None:
            continue
        word = invoice.source_status if invoice.source_status is not None else "(none)"
        words[word] += 1
        mapped[word] = invoice.status.value if invoice.status is not None else None
        for item in invoice.items:
            by_rule[item.category_rule or "(unmapped)"] += 1
            by_category[item.category.value if item.category else "(unmapped)"] += 1
            if item.source_category:
                vocabulary[item.source_category] += 1
                word_rules[item.source_category][_placed_by(item.category_rule)] += 1
        codes = record.codes()
        if "POLICY_MISSING" in codes:
            policies["missing"] += 1
        elif "POLICY_FORMAT" in codes:
            policies["bad_format"] += 1
        elif "POLICY_UNKNOWN" in codes:
            policies["unknown"] += 1
        elif "POLICY_INACTIVE" in codes:
            policies["inactive"] += 1
        elif invoice.patient.policy_number:
            policies["matched"] += 1
    unrecognised, warnings = _vocabulary_gaps(sample, vocabulary, word_rules)
    status_rows = [
        {"word": w, "count": n, "maps_to": mapped.get(w)} for w, n in words.most_common()
    ]
    known = sorted(processor.context.status_map)
    decided = category_decisions(sample.records, DescriptionFilter.of(sample.records))
    section = {
        "statuses": status_rows,
        "status_map_words": known,
        "categories": {
            "by_rule": [{"rule": r, "count": n} for r, n in by_rule.most_common()],
            "by_category": [{"category": c, "count": n} for c, n in by_category.most_common()],
            "by_kind": decided["by_kind"],
            "unmapped_descriptions": decided["unmapped"],
            "unrecognised_words": unrecognised,
        },
        "policies": {
            "checked_against_registry": checks.registry_checked,
            "registry_policies": checks.registry_policies,
            "registry_links": checks.registry_links,
            **dict(policies),
            "resolution": policy_resolution(sample.records, checks.policy_checker),
        },
    }
    return section, warnings


def _vocabulary_gaps(
    sample: Sample, vocabulary: Counter[str], word_rules: dict[str, Counter[str]]
) -> tuple[list[dict[str, Any]], dict[str, list[Issue]]]:
    """Vendor category words that neither are a MediTrak category nor in the source's map,
    in a source whose items otherwise speak a known vocabulary: the item was only placed by
    its description, which is a guess the vendor should confirm (a warning, not a block)."""
    by_word = sum(
        n for w, n in vocabulary.items() for kind in word_rules[w] if kind in ("exact", "map")
    )
    total = sum(vocabulary.values())
    if not total or by_word * 2 < total:
        # A source whose words are item codes (Splose) is placed by descriptions by design.
        return [], {}
    gaps = {
        w: rules
        for w, rules in word_rules.items()
        if not any(kind in ("exact", "map") for kind in rules)
    }
    warnings: dict[str, list[Issue]] = defaultdict(list)
    for record in sample.records:
        invoice = record.invoice
        if invoice is None:
            continue
        for index, item in enumerate(invoice.items):
            if item.source_category in gaps and item.category is not None:
                warnings[record.key].append(
                    Issue(
                        Reason.CATEGORY_UNMAPPED,
                        f"items[{index}].category",
                        f"vendor category {item.source_category!r} is not a MediTrak category "
                        f"nor in the source's map; placed as {item.category.value} by rule "
                        f"{item.category_rule}",
                        severity="warning",
                    )
                )
    rows = [
        {"word": w, "count": vocabulary[w], "placed_by": dict(rules.most_common())}
        for w, rules in sorted(gaps.items(), key=lambda kv: -vocabulary[kv[0]])
    ]
    return rows, warnings
