"""MediTrak's detail maps through the import record's builder (`invoice_from_record`): the same
record under MediTrak's names (`invoice_id`, `service_date`) gives the same invoice as under the
import contract's, while defects are still reported at MediTrak's own field names."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from connector.errors import RecordError
from connector.issues import Reason
from mappings import meditrak, meditrak_import

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MEDITRAK = meditrak.MAPPING.context("meditrak", currency="USD", timezone="Europe/Madrid")
IMPORT = meditrak_import.MAPPING.context("meditrak", currency="USD", timezone="Europe/Madrid")


def detail() -> dict[str, Any]:
    body = orjson.loads((FIXTURES / "meditrak_invoice_detail.json").read_bytes())
    invoice: dict[str, Any] = body["invoice"]
    return invoice


def issues(raw: Any) -> list[tuple[Reason, str]]:
    with pytest.raises(RecordError) as raised:
        meditrak.to_canonical(raw, MEDITRAK)
    return [(issue.code, issue.path) for issue in raised.value.issues]


def test_the_same_record_under_either_names_maps_to_the_same_invoice() -> None:
    raw = detail()
    raw["status"] = "paid"  # a word both status tables know
    as_import = {
        **{k: v for k, v in raw.items() if k not in ("invoice_id", "service_date")},
        "id": raw["invoice_id"],
        "invoice_date": raw["service_date"],
    }
    mapped = meditrak.to_canonical(raw, MEDITRAK)
    assert mapped.id == "INV-2025-001"
    assert mapped.invoice_date == date(2025, 1, 15)
    assert mapped == meditrak_import.to_canonical(as_import, IMPORT)


def test_defects_are_reported_at_meditraks_field_names_in_its_order() -> None:
    raw = detail()
    del raw["invoice_id"]
    raw["service_date"] = "2025-02-30"
    raw["total_amount"] = "lots"
    assert issues(raw) == [
        (Reason.FIELD_MISSING, "invoice_id"),
        (Reason.FIELD_INVALID, "service_date"),
        (Reason.AMOUNT_INVALID, "total_amount"),
    ]


def test_the_import_contracts_names_are_not_read_from_a_meditrak_detail() -> None:
    raw = detail()
    raw["id"] = raw.pop("invoice_id")
    raw["invoice_date"] = raw.pop("service_date")
    assert issues(raw) == [
        (Reason.FIELD_MISSING, "invoice_id"),
        (Reason.FIELD_MISSING, "service_date"),
    ]
