"""The MediTrak mappings from JSON fixtures alone (pure: no HTTP, no store).

`meditrak_import_record.json` is the import record example from MediTrak's own documentation;
it must map to the canonical invoice in `*.expected.json` to the cent. Fixtures are parsed
the way the HTTP client parses bodies (JSON numbers as floats) and also with exact decimals.
"""

from __future__ import annotations

import ast
import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from connector.errors import RecordError
from connector.issues import Reason
from connector.mapping.kit import MappingContext, SourceMapping
from connector.model import Category, ImportRecord, InvoiceStatus
from connector.pipeline.validation import normalized, validate_invoice
from mappings import meditrak, meditrak_import

FIXTURES = Path(__file__).with_name("fixtures")


def fixture(name: str, *, exact: bool = False) -> Any:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    return json.loads(text, parse_float=Decimal) if exact else orjson.loads(text)


def context(mapping: SourceMapping, source: str, **options: Any) -> MappingContext:
    return mapping.context(source, currency="USD", **options)


@pytest.mark.parametrize("exact", [False, True], ids=["wire-floats", "exact-decimals"])
def test_documented_import_record_maps_to_the_expected_canonical_invoice(exact: bool) -> None:
    raw = fixture("meditrak_import_record.json", exact=exact)
    mapped = meditrak_import.MAPPING.to_canonical(
        raw, context(meditrak_import.MAPPING, "partner_api")
    )
    assert validate_invoice(mapped) == []
    stored = normalized(mapped)
    record = stored.to_import_record()
    assert record == fixture("meditrak_import_record.expected.json")
    assert stored.total_amount == Decimal("1250.00")
    assert sum(item.total for item in stored.items) == stored.total_amount
    assert [item.category for item in stored.items] == [Category.CONSULTATION, Category.LABORATORY]
    ImportRecord.model_validate(record)


@pytest.mark.parametrize("exact", [False, True], ids=["wire-floats", "exact-decimals"])
def test_meditrak_detail_maps_status_currency_category_and_utc_time(exact: bool) -> None:
    body = fixture("meditrak_invoice_detail.json", exact=exact)
    mapped = meditrak.MAPPING.to_canonical(body["invoice"], context(meditrak.MAPPING, "meditrak"))
    assert validate_invoice(mapped) == []
    stored = normalized(mapped)
    assert stored.to_import_record() == fixture("meditrak_invoice_detail.expected.json")
    assert stored.items[0].source_category == "Radiology"
    assert stored.items[0].category_rule == "exact:category"
    ImportRecord.model_validate(stored.to_import_record())


def test_mappings_are_pure_and_deterministic() -> None:
    raw = fixture("meditrak_import_record.json")
    untouched = copy.deepcopy(raw)
    ctx = context(meditrak_import.MAPPING, "partner_api")
    first = meditrak_import.MAPPING.to_canonical(raw, ctx)
    second = meditrak_import.MAPPING.to_canonical(raw, ctx)
    assert first == second
    assert first.content_hash() == second.content_hash()
    assert raw == untouched


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("draft", InvoiceStatus.PENDING),
        ("submitted", InvoiceStatus.PENDING),
        ("approved", InvoiceStatus.UNPAID),
        ("paid", InvoiceStatus.PAID),
        ("rejected", InvoiceStatus.VOID),
        ("PAID", InvoiceStatus.PAID),
        ("refunded", None),
    ],
)
def test_meditrak_status_words(word: str, expected: InvoiceStatus | None) -> None:
    body = fixture("meditrak_invoice_detail.json")
    body["invoice"]["status"] = word
    mapped = meditrak.MAPPING.to_canonical(body["invoice"], context(meditrak.MAPPING, "meditrak"))
    assert mapped.status == expected
    assert mapped.source_status == word


def test_status_overrides_from_config_apply() -> None:
    raw = fixture("meditrak_import_record.json")
    raw["status"] = "refunded"
    plain = meditrak_import.MAPPING.to_canonical(raw, context(meditrak_import.MAPPING, "p"))
    assert plain.status is None
    assert {i.code for i in validate_invoice(plain)} == {Reason.STATUS_UNMAPPED}
    ctx = context(meditrak_import.MAPPING, "p", status_overrides={"Refunded": "void"})
    assert meditrak_import.MAPPING.to_canonical(raw, ctx).status is InvoiceStatus.VOID


def test_naive_update_times_are_read_in_the_source_time_zone() -> None:
    raw = fixture("meditrak_import_record.json")
    raw["updated_at"] = "2025-01-16T09:30:00"
    ctx = context(meditrak_import.MAPPING, "p", timezone="Africa/Nairobi")  # UTC+3
    mapped = meditrak_import.MAPPING.to_canonical(raw, ctx)
    assert mapped.source_updated_at is not None
    assert mapped.source_updated_at.isoformat() == "2025-01-16T06:30:00+00:00"


def test_a_malformed_record_reports_every_problem_in_one_record_error() -> None:
    raw = fixture("meditrak_import_record.defective.json")
    with pytest.raises(RecordError) as caught:
        meditrak_import.MAPPING.to_canonical(raw, context(meditrak_import.MAPPING, "p"))
    found = {(issue.path, issue.code) for issue in caught.value.issues}
    assert found == {
        ("invoice_number", Reason.FIELD_MISSING),
        ("invoice_date", Reason.FIELD_INVALID),
        ("total_amount", Reason.MONEY_PRECISION),
        ("patient.name", Reason.FIELD_MISSING),
        ("items.0.quantity", Reason.AMOUNT_INVALID),
        ("items.0.total", Reason.AMOUNT_INVALID),
        ("updated_at", Reason.FIELD_INVALID),
    }
    assert meditrak_import.MAPPING.record_id(raw) == "INV-013"


def test_business_defects_survive_mapping_and_fail_validation_with_their_codes() -> None:
    raw = fixture("meditrak_import_record.json")
    raw["items"][0]["category"] = "miscellaneous"
    raw["items"][1]["total"] = 810.00
    raw["total_amount"] = 1255.00
    mapped = meditrak_import.MAPPING.to_canonical(raw, context(meditrak_import.MAPPING, "p"))
    assert {(i.code, i.path) for i in validate_invoice(mapped)} == {
        (Reason.CATEGORY_UNMAPPED, "items[0].category"),
        (Reason.ITEM_TOTAL_MISMATCH, "items[1].total"),
        (Reason.INVOICE_TOTAL_MISMATCH, "total_amount"),
    }
    raw = fixture("meditrak_import_record.json")
    raw["items"] = []
    raw["total_amount"] = 0
    mapped = meditrak_import.MAPPING.to_canonical(raw, context(meditrak_import.MAPPING, "p"))
    assert {i.code for i in validate_invoice(mapped)} == {Reason.NO_ITEMS}


def test_meditrak_record_id_is_read_from_invoice_id() -> None:
    body = fixture("meditrak_invoice_detail.json")
    assert meditrak.MAPPING.record_id(body["invoice"]) == "INV-2025-001"
    assert meditrak.MAPPING.record_id({"id": "x"}) is None


# Mappings are pure (house style): what they may import, and calls that would reach outside.
_PURE_IMPORTS = (
    "__future__",
    "collections.abc",
    "dataclasses",
    "datetime",
    "decimal",
    "math",
    "re",
    "typing",
    "zoneinfo",
    "pydantic",
    "pydantic_core",
    "connector.mapping",
    "connector.masking",
    "connector.model",
    "connector.errors",
    "connector.issues",
    "mappings",
)
_IMPURE_CALLS = frozenset({"now", "today", "utcnow", "open", "print", "sleep", "getenv"})


def _pure_module_files() -> list[Path]:
    root = Path(__file__).resolve().parent.parent
    return sorted([*root.glob("mappings/*.py"), *root.glob("connector/mapping/*.py")])


@pytest.mark.parametrize("path", _pure_module_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_mappings_and_their_kit_do_no_io_read_no_clock_and_do_not_log(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported: list[str] = []
    calls: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.append(node.module)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in _IMPURE_CALLS:
                calls.append(name)
    outside = [m for m in imported if not any(_is_within(m, pure) for pure in _PURE_IMPORTS)]
    assert outside == [], f"{path.name} imports {outside}"
    assert calls == [], f"{path.name} calls {calls}"


def _is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")
