"""CitaBox mapping tests from JSON fixtures: the documented example, the status table, each
CitaBox quirk (cents, clinic-local dates, drafts without a consecutive, flat invoices) and
malformed payloads."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from connector.errors import RecordError
from connector.issues import Reason
from connector.mapping.kit import CategoryMatch, MappingContext
from connector.model import Category, Invoice, InvoiceStatus, to_cents
from connector.pipeline.validation import validate_invoice
from mappings.citabox import MAPPING, STATUS_MAP, to_canonical

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "citabox"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def context(**overrides: Any) -> MappingContext:
    options: dict[str, Any] = {
        "currency": "CRC",
        "timezone": "America/Costa_Rica",
        **overrides,
    }
    return MAPPING.context("citabox", **options)


def codes_of(error: RecordError) -> set[str]:
    return {issue.code.value for issue in error.issues}


def example() -> dict[str, Any]:
    record: dict[str, Any] = load("documented_example.json")
    return record


# -- the documented example --------------------------------------------------------------


def test_documented_example_maps_to_the_expected_invoice_to_the_cent() -> None:
    invoice = to_canonical(example(), context())
    assert invoice.model_dump(mode="json") == load("documented_example.expected.json")
    # The arithmetic validation relies on, exactly.
    assert invoice.total_amount == Decimal("25000.00")
    assert invoice.items[0].total == to_cents(
        invoice.items[0].quantity * invoice.items[0].unit_price
    )


def test_documented_example_passes_validation_once_categorised_and_linked() -> None:
    def rules(word: str | None, description: str | None) -> CategoryMatch:
        assert word is None, "CitaBox has no category word; only the description is given"
        if description and "consulta" in description.lower():
            return CategoryMatch(Category.CONSULTATION, "keyword:consulta")
        return CategoryMatch(None, None)

    invoice = to_canonical(example(), context(categorize=rules))
    item = invoice.items[0]
    assert (item.category, item.category_rule) == (Category.CONSULTATION, "keyword:consulta")
    assert validate_invoice(invoice, policy_check=lambda _inv: []) == []


def test_without_a_patient_link_the_example_is_policy_missing_and_uncategorised() -> None:
    invoice = to_canonical(example(), context())
    codes = {issue.code for issue in validate_invoice(invoice)}
    assert codes == {Reason.POLICY_MISSING, Reason.CATEGORY_UNMAPPED}


# -- the status table --------------------------------------------------------------------


@pytest.mark.parametrize(("payment", "hacienda", "expected"), load("statuses.json"))
def test_status_table(payment: str, hacienda: str, expected: str | None) -> None:
    record = {**example(), "payment_status": payment, "hacienda_status": hacienda}
    invoice = to_canonical(record, context())
    assert invoice.status == (InvoiceStatus(expected) if expected else None)
    # The source's own words are kept, both of them.
    assert invoice.source_status == f"{payment}/{hacienda}"


def test_an_unmapped_word_is_reported_not_guessed() -> None:
    record = {**example(), "payment_status": "REFUNDED"}
    issues = validate_invoice(to_canonical(record, context()), policy_check=lambda _i: [])
    assert Reason.STATUS_UNMAPPED in {issue.code for issue in issues}


def test_the_status_table_covers_every_documented_combination() -> None:
    documented = {
        f"{p}/{h}" for p in ("PAID", "UNPAID", "PARTIAL") for h in ("DRAFT", "ACCEPTED", "REJECTED")
    }
    assert set(STATUS_MAP) == documented


def test_config_status_map_can_override_one_combination() -> None:
    record = {**example(), "payment_status": "UNPAID", "hacienda_status": "REJECTED"}
    ctx = context(status_overrides={"UNPAID/REJECTED": "void"})
    assert to_canonical(record, ctx).status == InvoiceStatus.VOID
    other = {**record, "hacienda_status": "DRAFT"}
    assert to_canonical(other, ctx).status == InvoiceStatus.PENDING


# -- quirks ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(load("quirks.json")))
def test_quirk(case: str) -> None:
    spec = load("quirks.json")[case]
    dumped = to_canonical(spec["record"], context()).model_dump(mode="json")
    for field, expected in spec["expect"].items():
        assert dumped[field] == expected, f"{case}: {field} ({spec['why']})"


@pytest.mark.parametrize("case", sorted(load("quirks.json")))
def test_every_quirk_keeps_one_item_equal_to_the_total(case: str) -> None:
    record = load("quirks.json")[case]["record"]
    invoice = to_canonical(record, context())
    (item,) = invoice.items
    assert (item.quantity, item.unit_price, item.total) == (
        Decimal(1),
        invoice.total_amount,
        invoice.total_amount,
    )
    assert item.description == record["service_description"]
    assert item.source_category is None
    assert invoice.currency == "CRC"
    assert invoice.patient.policy_number is None


def test_the_categoriser_sees_the_spanish_description_only() -> None:
    seen: list[tuple[str | None, str | None]] = []

    def rules(word: str | None, description: str | None) -> CategoryMatch:
        seen.append((word, description))
        return CategoryMatch(None, None)

    to_canonical(
        load("quirks.json")["late_evening_in_san_jose"]["record"], context(categorize=rules)
    )
    assert seen == [(None, "Atención de emergencia")]


def test_the_clinic_zone_decides_the_invoice_date() -> None:
    record = load("quirks.json")["late_evening_in_san_jose"]["record"]
    assert str(to_canonical(record, context()).invoice_date) == "2025-02-28"
    assert str(to_canonical(record, context(timezone="UTC")).invoice_date) == "2025-03-01"


def test_missing_service_description_is_flagged_by_validation() -> None:
    record = {**example(), "service_description": None}
    invoice = to_canonical(record, context())
    assert invoice.items[0].description is None
    paths = {(i.code, i.path) for i in validate_invoice(invoice, policy_check=lambda _i: [])}
    assert (Reason.FIELD_MISSING, "items[0].description") in paths


@pytest.mark.parametrize(
    ("patient", "name"),
    [
        ({"first_name": "María", "last_name": None}, "María"),
        ({"full_name": "María Rodríguez"}, "María Rodríguez"),
        ({"id": "p_only"}, None),
        (None, None),
    ],
)
def test_patient_name_shapes(patient: dict[str, Any] | None, name: str | None) -> None:
    record = {**example(), "patient": patient}
    invoice = to_canonical(record, context())
    assert invoice.patient.name == name
    assert invoice.patient.source_ref == "p_abc123"


def test_patient_ref_falls_back_to_the_embedded_patient_id() -> None:
    record = {**example(), "patient_id": None}
    assert to_canonical(record, context()).patient.source_ref == "p_abc123"


def test_facility_comes_from_config_options() -> None:
    invoice = to_canonical(example(), context(options={"facility": "Clínica San José Centro"}))
    assert invoice.facility == "Clínica San José Centro"


def test_mapping_is_deterministic() -> None:
    first: Invoice = to_canonical(example(), context())
    second: Invoice = to_canonical(example(), context())
    assert first.content_hash() == second.content_hash()


def test_record_id() -> None:
    assert MAPPING.record_id(example()) == "inv_abc789"
    assert MAPPING.record_id({"total_amount": 1}) is None
    assert MAPPING.record_id(["not", "a", "record"]) is None


# -- malformed payloads ------------------------------------------------------------------


@pytest.mark.parametrize("case", load("malformed.json"), ids=lambda case: case["name"])
def test_malformed_payload(case: dict[str, Any]) -> None:
    record = example()
    record.update(case.get("set", {}))
    for name in case.get("drop", []):
        record.pop(name)
    with pytest.raises(RecordError) as caught:
        to_canonical(record, context())
    assert codes_of(caught.value) == set(case["codes"])


@pytest.mark.parametrize("raw", [[], "inv_abc789", None, 42])
def test_not_an_object_is_payload_invalid(raw: Any) -> None:
    with pytest.raises(RecordError) as caught:
        to_canonical(raw, context())
    assert codes_of(caught.value) == {"PAYLOAD_INVALID"}


# -- records read for a clinic group ------------------------------------------------------

GROUP_CLINIC = "c-heredia"


def tagged(record: dict[str, Any], clinic: str = GROUP_CLINIC) -> dict[str, Any]:
    """A record as the adapter hands it on when the source reads several clinics."""
    return {**record, "clinic_id": clinic, "_clinic": {"clinic_id": clinic, "clinic_name": "H"}}


def test_a_record_of_a_clinic_group_is_keyed_by_its_clinic() -> None:
    record = tagged(example())
    invoice = to_canonical(record, context())
    assert invoice.id == f"{GROUP_CLINIC}:inv_abc789" == MAPPING.record_id(record)
    # Only the key: the invoice number and everything else read as for one clinic.
    plain = to_canonical(example(), context())
    assert invoice.invoice_number == plain.invoice_number
    assert invoice.total_amount == plain.total_amount
    assert (invoice.facility, plain.facility) == ("H", None)


def test_the_facility_setting_wins_over_the_clinic_name() -> None:
    invoice = to_canonical(tagged(example()), context(options={"facility": "Grupo"}))
    assert invoice.facility == "Grupo"


def test_the_same_id_in_two_clinics_is_two_invoices() -> None:
    one = to_canonical(tagged(example(), "c-1"), context())
    two = to_canonical(tagged(example(), "c-2"), context())
    assert one.id != two.id


def test_a_record_naming_another_clinic_than_it_was_read_for_is_quarantined() -> None:
    record = {**tagged(example()), "clinic_id": "c-someone-else"}
    with pytest.raises(RecordError) as caught:
        to_canonical(record, context())
    assert [(i.code, i.path) for i in caught.value.issues] == [(Reason.FIELD_INVALID, "clinic_id")]
    # Its key is still its clinic's: it leaves quarantine under that key once corrected.
    assert MAPPING.record_id(record) == f"{GROUP_CLINIC}:inv_abc789"


def test_a_record_without_a_clinic_id_takes_the_clinic_it_was_read_for() -> None:
    record = {**tagged(example()), "clinic_id": None}
    assert to_canonical(record, context()).id == f"{GROUP_CLINIC}:inv_abc789"


def test_an_untagged_record_keeps_the_plain_vendor_id() -> None:
    """One clinic: the keys of stores written before clinic groups."""
    assert to_canonical(example(), context()).id == "inv_abc789" == MAPPING.record_id(example())
    assert MAPPING.record_id({**example(), "_clinic": "not-a-tag"}) == "inv_abc789"
