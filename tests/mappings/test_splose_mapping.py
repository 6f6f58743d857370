"""Splose mapping tests from JSON fixtures: the documented example, a realistic mixed invoice,
the status table, every documented quirk, and malformed payloads with their reason codes."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters.splose import Config
from connector.errors import RecordError
from connector.issues import Reason
from connector.mapping.kit import CategoryMatch, MappingContext
from connector.model import Category, Invoice, InvoiceStatus
from connector.pipeline.validation import validate_invoice
from mappings.splose import DEFAULT_POLICY_PREFIXES, MAPPING, policy_from_references

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "splose"
CODES = {
    "10001": Category.CONSULTATION,
    "10003": Category.CONSULTATION,
    "13002": Category.PHARMACY,
    "17001": Category.PHYSIOTHERAPY,
    "17002": Category.PHYSIOTHERAPY,
}


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def by_code(word: str | None, description: str | None) -> CategoryMatch:
    if word in CODES:
        return CategoryMatch(CODES[word], "test:code")
    return CategoryMatch(None, None)


def context(**kwargs: Any) -> MappingContext:
    return MAPPING.context("splose", currency="AUD", **kwargs)


def doc_example() -> dict[str, Any]:
    raw: dict[str, Any] = load("invoice_doc_example.json")
    raw["_patient"] = load("patient.json")
    return raw


def mixed(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = load("invoice_mixed.json")
    raw.update(changes)
    return raw


def codes_of(exc: pytest.ExceptionInfo[RecordError]) -> dict[str, Reason]:
    return {issue.path: issue.code for issue in exc.value.issues}


# -- documented example and a realistic invoice ------------------------------------------


def test_the_documented_example_maps_to_the_cent() -> None:
    invoice = MAPPING.to_canonical(doc_example(), context())
    assert invoice == Invoice.model_validate(load("invoice_doc_example.expected.json"))
    # 0.5 x 193.99 = 96.995 -> 97.00, less $20.00 = 77.00, +10 % tax 7.70 = 84.70. Splose's
    # own example does not add up to its `total` of 193.99, and validation says so. Its only
    # reference is a Medicare provider number, which is not an insurance policy (issue 14).
    codes = {issue.code for issue in validate_invoice(invoice)}
    assert codes == {
        Reason.INVOICE_TOTAL_MISMATCH,
        Reason.CATEGORY_UNMAPPED,
        Reason.POLICY_MISSING,
    }


def test_a_mixed_invoice_reconciles_with_its_total() -> None:
    invoice = MAPPING.to_canonical(mixed(), context(categorize=by_code))
    assert invoice == Invoice.model_validate(load("invoice_mixed.expected.json"))
    assert validate_invoice(invoice) == []
    assert sum(item.total for item in invoice.items) == invoice.total_amount


def test_mapping_is_pure_and_leaves_the_payload_alone() -> None:
    raw = mixed()
    before = copy.deepcopy(raw)
    first = MAPPING.to_canonical(raw, context())
    assert MAPPING.to_canonical(raw, context()) == first
    assert raw == before
    assert MAPPING.record_id(raw) == "4711"


# -- status table -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("Draft", InvoiceStatus.PENDING),
        ("Awaiting Payment", InvoiceStatus.UNPAID),
        ("Paid", InvoiceStatus.PAID),
        ("awaiting payment", InvoiceStatus.UNPAID),
        ("Written Off", None),
        ("Refunded", None),
        ("Awaiting", None),
    ],
)
def test_status_table(word: str, expected: InvoiceStatus | None) -> None:
    invoice = MAPPING.to_canonical(mixed(status=word), context())
    assert invoice.status == expected
    assert invoice.source_status == word
    if expected is None:
        assert Reason.STATUS_UNMAPPED in {i.code for i in validate_invoice(invoice)}


def test_config_status_map_overrides_the_table() -> None:
    ctx = context(status_overrides={"Written Off": "void", "Draft": "unpaid"})
    assert MAPPING.to_canonical(mixed(status="Written Off"), ctx).status == InvoiceStatus.VOID
    assert MAPPING.to_canonical(mixed(status="Draft"), ctx).status == InvoiceStatus.UNPAID
    assert MAPPING.to_canonical(mixed(status="Paid"), ctx).status == InvoiceStatus.PAID


# -- quirks: dates --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-07-01", date(2023, 7, 1)),
        ("2023-07-01T00:00:00Z", date(2023, 7, 1)),
        ("2023-07-01T00:00:00.000Z", date(2023, 7, 1)),
        ("2023-07-01T23:59:59.999Z", date(2023, 7, 1)),
        # An offset is converted: the invoice date is the UTC date.
        ("2023-07-01T08:00:00+10:00", date(2023, 6, 30)),
    ],
)
def test_issue_date_in_every_form_gives_its_utc_date(text: str, expected: date) -> None:
    assert MAPPING.to_canonical(mixed(issueDate=text), context()).invoice_date == expected


@pytest.mark.parametrize("text", ["2023-07-01", "2023-07-01T00:00:00Z", "2023-07-01T00:00:00.000Z"])
def test_updated_at_in_every_form_is_aware_utc(text: str) -> None:
    updated = MAPPING.to_canonical(mixed(updatedAt=text), context()).source_updated_at
    assert updated == datetime(2023, 7, 1, tzinfo=UTC)
    assert updated is not None and updated.utcoffset() is not None


# -- quirks: money, quantities, discounts, tax -------------------------------------------


def one_item(tax_status: str = "excluding", **item: Any) -> dict[str, Any]:
    line = {"description": "Service", "code": 10001, "unitPrice": 100, "quantity": 1, **item}
    return mixed(taxStatus=tax_status, invoiceItems=[line])


def the_item(raw: dict[str, Any]) -> tuple[Decimal, Decimal, Decimal, str | None]:
    item = MAPPING.to_canonical(raw, context()).items[0]
    return item.quantity, item.unit_price, item.total, item.description


def test_fractional_quantity_without_adjustment_is_kept() -> None:
    quantity, unit_price, total, description = the_item(one_item(quantity=0.5, unitPrice=193.99))
    assert (quantity, unit_price, total) == (Decimal("0.5"), Decimal("193.99"), Decimal("97.00"))
    assert description == "Service"


def test_line_amounts_round_half_up_to_cents() -> None:
    assert the_item(one_item(quantity=0.5, unitPrice=0.05))[2] == Decimal("0.03")
    # 10.05 x 10 % = 1.005 -> 1.01
    _, _, total, description = the_item(one_item(unitPrice=10.05, taxRate=10))
    assert total == Decimal("11.06")
    assert description == "Service (1 × 10.05, +10% tax 1.01)"


@pytest.mark.parametrize("discount", [None, "", "$0.00", "0", 0])
def test_no_discount_keeps_quantity_and_unit_price(discount: Any) -> None:
    quantity, unit_price, total, _ = the_item(one_item(quantity=2, unitPrice=40, discount=discount))
    assert (quantity, unit_price, total) == (Decimal(2), Decimal(40), Decimal("80.00"))


@pytest.mark.parametrize(("discount", "net"), [("$20.00", "180.00"), ("$1,000.00", "4000.00")])
def test_a_formatted_discount_is_folded_into_the_line(discount: str, net: str) -> None:
    raw = one_item(quantity=2, unitPrice=2500 if "1,000" in discount else 100, discount=discount)
    quantity, unit_price, total, description = the_item(raw)
    assert (quantity, unit_price, total) == (Decimal(1), Decimal(net), Decimal(net))
    assert description is not None and f"less {discount.strip('$').replace(',', '')}" in description


def test_tax_is_added_only_when_excluding() -> None:
    excluding = the_item(one_item("excluding", unitPrice=50, quantity=2, taxRate=10))
    assert excluding[:3] == (Decimal(1), Decimal("110.00"), Decimal("110.00"))
    assert excluding[3] == "Service (2 × 50.00, +10% tax 10.00)"
    # Tax inside the price, or no tax at all: the line keeps quantity and unit price.
    for status in ("including", "no tax", "Including", "No Tax"):
        kept = the_item(one_item(status, unitPrice=50, quantity=2, taxRate=10))
        assert kept == (Decimal(2), Decimal(50), Decimal("100.00"), "Service")
    zero_rate = the_item(one_item("excluding", unitPrice=50, quantity=2, taxRate=0))
    assert zero_rate == (Decimal(2), Decimal(50), Decimal("100.00"), "Service")


def test_tax_included_lines_still_fold_their_discount() -> None:
    raw = one_item("including", unitPrice=110, quantity=1, discount="$11.00", taxRate=10)
    assert the_item(raw) == (
        Decimal(1),
        Decimal("99.00"),
        Decimal("99.00"),
        "Service (1 × 110.00, less 11.00)",
    )


def test_mixed_invoice_under_other_tax_statuses() -> None:
    invoice = MAPPING.to_canonical(mixed(taxStatus="including"), context())
    pain_medication = invoice.items[3]
    assert (pain_medication.quantity, pain_medication.unit_price) == (Decimal(3), Decimal("33.35"))
    assert pain_medication.total == Decimal("100.05")
    assert Reason.INVOICE_TOTAL_MISMATCH in {i.code for i in validate_invoice(invoice)}


# -- quirks: patient, policy, currency, categories ---------------------------------------


@pytest.mark.parametrize(
    ("references", "expected"),
    [
        # Medicare and DVA numbers are provider numbers, not insurance policies (issue 14).
        (["Medicare: 12345678"], None),
        (["Policy: POL-123456"], "POL-123456"),
        (["DVA: QX1", "Insurance: POL-9"], "POL-9"),
        (["policy:POL-7 "], "POL-7"),
        (["Insurance: POL-2", "Medicare: 555"], "POL-2"),
        # Preference follows the prefix list, not the order of the entries.
        (["Insurance: POL-2", "Policy: POL-3"], "POL-3"),
        (["DVA: QX1"], None),
        (["Policy:   "], None),
        (["Medicare 12345678"], None),
        ([], None),
        (None, None),
        ([None, "Policy: POL-1"], "POL-1"),
    ],
)
def test_policy_number_from_reference_numbers(
    references: list[str | None] | None, expected: str | None
) -> None:
    invoice = MAPPING.to_canonical(mixed(referenceNumbers=references), context())
    assert invoice.patient.policy_number == expected
    first = invoice.patient.policy_candidates[:1]
    assert [c.number for c in first] == ([expected] if expected else [])


# The default before issue 14: still honoured when a source configures it.
OLD_DEFAULT = ["Medicare", "Policy", "Insurance"]


@pytest.mark.parametrize(
    ("references", "expected"),
    [
        (["Medicare: 12345678"], ["12345678"]),
        (["Insurance: POL-2", "Medicare: 555"], ["555", "POL-2"]),
        (["Policy: POL-1", "Medicare: 5", "Policy: POL-4"], ["5", "POL-1", "POL-4"]),
    ],
)
def test_configured_prefixes_list_every_candidate_in_their_order(
    references: list[str | None], expected: list[str]
) -> None:
    ctx = context(options={"policy_reference_prefixes": OLD_DEFAULT})
    patient = MAPPING.to_canonical(mixed(referenceNumbers=references), ctx).patient
    assert [c.number for c in patient.policy_candidates] == expected
    assert patient.policy_number == expected[0]
    assert all(c.origin.startswith("referenceNumbers[") for c in patient.policy_candidates)


def test_default_prefixes_leave_medicare_and_dva_out() -> None:
    assert not {"medicare", "dva"} & {p.lower() for p in DEFAULT_POLICY_PREFIXES}
    config = Config.model_validate({"name": "clinic", "api_key": "k"})
    assert config.policy_reference_prefixes == DEFAULT_POLICY_PREFIXES
    assert config.mapping_options == {"policy_reference_prefixes": list(DEFAULT_POLICY_PREFIXES)}


def test_policy_prefixes_come_from_config_options() -> None:
    ctx = context(options={"policy_reference_prefixes": ["DVA"]})
    invoice = MAPPING.to_canonical(mixed(), ctx)
    assert invoice.patient.policy_number == "QX123456"
    assert invoice.patient.policy_candidates[0].origin == "referenceNumbers[DVA]"
    assert policy_from_references(["Medicare: 1"], ["Policy"]) is None


def test_patient_name_comes_from_the_attached_patient() -> None:
    invoice = MAPPING.to_canonical(mixed(), context())
    assert invoice.patient.name == "Grace Mensah"
    assert invoice.patient.source_ref == "42"
    only_first = mixed(_patient={"id": 42, "firstName": "Grace", "lastName": None})
    assert MAPPING.to_canonical(only_first, context()).patient.name == "Grace"


@pytest.mark.parametrize("patient", ["absent", None, {"id": 42}])
def test_without_a_patient_name_validation_reports_field_missing(patient: Any) -> None:
    raw = mixed()
    if patient == "absent":
        del raw["_patient"]
    else:
        raw["_patient"] = patient
    invoice = MAPPING.to_canonical(raw, context())
    assert invoice.patient.name is None
    assert invoice.patient.source_ref == "42"
    issues = validate_invoice(invoice)
    assert any(i.code == Reason.FIELD_MISSING and i.path == "patient.name" for i in issues)


def test_currency_comes_from_config_and_archived_invoices_still_map() -> None:
    invoice = MAPPING.to_canonical(mixed(isArchived=True), MAPPING.context("s", currency="NZD"))
    assert invoice.currency == "NZD"
    assert invoice.status == InvoiceStatus.UNPAID


def test_categorize_gets_the_code_or_else_the_type() -> None:
    calls: list[tuple[str | None, str | None]] = []

    def spy(word: str | None, description: str | None) -> CategoryMatch:
        calls.append((word, description))
        return CategoryMatch(None, None)

    raw = one_item(code=None, type="appointment", discount="$5.00")
    item = MAPPING.to_canonical(raw, context(categorize=spy)).items[0]
    assert item.source_category == "appointment"
    MAPPING.to_canonical(mixed(), context(categorize=spy))
    # The rules see the vendor's own description, not the folded one.
    assert calls == [
        ("appointment", "Service"),
        ("10001", "Initial Consultation"),
        ("17001", "Physiotherapy Session"),
        ("10003", "Follow-up Visit"),
        ("13002", "Pain Medication"),
        ("17002", "Rehabilitation"),
    ]
    # The baseline rules only accept a word that already is a category.
    baseline = MAPPING.to_canonical(mixed(), context()).items[0]
    assert baseline.category is None
    assert baseline.source_category == "10001"


def test_no_items_or_null_items_give_no_items() -> None:
    no_items: tuple[list[Any] | None, ...] = ([], None)
    for items in no_items:
        invoice = MAPPING.to_canonical(mixed(invoiceItems=items), context())
        assert invoice.items == ()
        assert Reason.NO_ITEMS in {i.code for i in validate_invoice(invoice)}


# -- malformed payloads -------------------------------------------------------------------


def test_a_defective_payload_reports_every_problem_at_once() -> None:
    with pytest.raises(RecordError) as caught:
        MAPPING.to_canonical(load("invoice_defective.json"), context())
    assert codes_of(caught) == {
        "invoiceNumber": Reason.FIELD_MISSING,
        "issueDate": Reason.FIELD_INVALID,
        "taxStatus": Reason.FIELD_INVALID,
        "total": Reason.MONEY_PRECISION,
        "invoiceItems.0.unitPrice": Reason.AMOUNT_INVALID,
        "invoiceItems.0.quantity": Reason.AMOUNT_INVALID,
        "invoiceItems.0.discount": Reason.AMOUNT_INVALID,
        "updatedAt": Reason.FIELD_INVALID,
    }


@pytest.mark.parametrize(
    ("changes", "path", "code"),
    [
        ({"invoiceNumber": None}, "invoiceNumber", Reason.FIELD_MISSING),
        ({"issueDate": None}, "issueDate", Reason.FIELD_MISSING),
        ({"issueDate": "2023-13-01"}, "issueDate", Reason.FIELD_INVALID),
        ({"total": None}, "total", Reason.FIELD_MISSING),
        ({"total": "lots"}, "total", Reason.AMOUNT_INVALID),
        ({"total": -1}, "total", Reason.AMOUNT_INVALID),
        ({"total": 1.005}, "total", Reason.MONEY_PRECISION),
        ({"paidAmount": "x"}, "paidAmount", Reason.AMOUNT_INVALID),
        ({"status": None}, "status", Reason.FIELD_MISSING),
        ({"taxStatus": None}, "taxStatus", Reason.FIELD_MISSING),
        ({"patientId": None}, "patientId", Reason.FIELD_MISSING),
        ({"invoiceItems": "none"}, "invoiceItems", Reason.PAYLOAD_INVALID),
        ({"invoiceItems": [{"quantity": 1}]}, "invoiceItems.0.unitPrice", Reason.FIELD_MISSING),
        ({"invoiceItems": [{"unitPrice": 1}]}, "invoiceItems.0.quantity", Reason.FIELD_MISSING),
        (
            {"invoiceItems": [{"unitPrice": 1, "quantity": 1, "taxRate": 150}]},
            "invoiceItems.0.taxRate",
            Reason.AMOUNT_INVALID,
        ),
        ({"_patient": "Grace"}, "_patient", Reason.PAYLOAD_INVALID),
    ],
)
def test_malformed_fields_give_specific_reasons(
    changes: dict[str, Any], path: str, code: Reason
) -> None:
    with pytest.raises(RecordError) as caught:
        MAPPING.to_canonical(mixed(**changes), context())
    assert codes_of(caught) == {path: code}


@pytest.mark.parametrize("raw", [None, [], "invoice", 42])
def test_a_payload_that_is_not_an_object_is_payload_invalid(raw: Any) -> None:
    with pytest.raises(RecordError) as caught:
        MAPPING.to_canonical(raw, context())
    assert [i.code for i in caught.value.issues] == [Reason.PAYLOAD_INVALID]
    assert MAPPING.record_id(raw) is None
