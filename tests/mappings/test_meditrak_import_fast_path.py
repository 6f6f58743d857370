"""The MediTrak import mapping's plain path (field validators called directly) against its
payload models: for any record, either the plain path declines or both give the same invoice,
and every defect is reported by the models exactly as before."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.errors import RecordError
from connector.model import Invoice
from mappings import meditrak_import
from mappings.meditrak_import import _parse_plain, _via_models

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CTX = meditrak_import.MAPPING.context("partner_api", currency="USD", timezone="Europe/Madrid")

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**14), max_value=10**14),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.sampled_from(
        [
            "",
            "  ",
            " Laboratory ",
            "paid",
            "Paid",
            "x\x00y",
            "tab\there",
            "1,250.00",
            "$12.5",
            "-3",
            "2025-01-31",
            "2025-02-30",
            "2025-01-07T17:11:28Z",
            "2025-01-07T17:11:28",
            "2025-01-07T17:11:28+05:30",
            "eur",
            "Ümlaut\u00a0name",
        ]
    ),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["name", "id"]), st.text(max_size=3), max_size=2),
)
RECORD_FIELDS = [
    "id",
    "invoice_number",
    "invoice_date",
    "total_amount",
    "status",
    "facility",
    "patient",
    "items",
    "updated_at",
    "currency",
]
ITEM_FIELDS = ["category", "description", "quantity", "unit_price", "total"]
PATIENT_FIELDS = ["name", "policy_number"]
MISSING = object()


def base_record() -> Any:
    return orjson.loads((FIXTURES / "meditrak_import_record.json").read_bytes())


def put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is MISSING:
        target.pop(key, None)
    else:
        target[key] = value


def outcome(raw: Any) -> Invoice | RecordError:
    try:
        return _via_models(raw, CTX)
    except RecordError as exc:
        return exc


def check(raw: Any) -> None:
    untouched = copy.deepcopy(raw)
    plain = _parse_plain(raw, CTX)
    via_models = outcome(raw)
    assert raw == untouched
    if plain is not None:
        assert isinstance(via_models, Invoice), via_models
        assert plain == via_models
        assert plain.content_hash() == via_models.content_hash()
    result = meditrak_import.to_canonical(raw, CTX) if isinstance(via_models, Invoice) else None
    if result is not None:
        assert result == via_models


def test_the_documented_record_takes_the_plain_path() -> None:
    raw = base_record()
    assert _parse_plain(raw, CTX) is not None
    check(raw)


@pytest.mark.parametrize("raw", [None, [], "x", 3, {"items": "no"}, {}])
def test_odd_shapes_decline_and_fail_as_before(raw: Any) -> None:
    assert _parse_plain(raw, CTX) is None
    with pytest.raises(RecordError):
        meditrak_import.to_canonical(raw, CTX)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    field=st.sampled_from(RECORD_FIELDS),
    value=st.one_of(VALUES, st.just(MISSING)),
)
def test_any_record_field_agrees_with_the_models(field: str, value: Any) -> None:
    raw = base_record()
    put(raw, field, value)
    check(raw)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    field=st.sampled_from(ITEM_FIELDS),
    value=st.one_of(VALUES, st.just(MISSING)),
    index=st.integers(min_value=0, max_value=1),
)
def test_any_item_field_agrees_with_the_models(field: str, value: Any, index: int) -> None:
    raw = base_record()
    put(raw["items"][index], field, value)
    check(raw)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(field=st.sampled_from(PATIENT_FIELDS), value=st.one_of(VALUES, st.just(MISSING)))
def test_any_patient_field_agrees_with_the_models(field: str, value: Any) -> None:
    raw = base_record()
    put(raw["patient"], field, value)
    check(raw)


def test_exact_decimals_and_extra_fields_agree() -> None:
    raw = base_record()
    raw["total_amount"] = Decimal("1250.00")
    raw["unexpected"] = {"nested": [1, 2]}
    raw["items"][0]["extra"] = "ignored"
    raw["items"].append(dict(raw["items"][0], quantity=Decimal("1.500000"), total=Decimal("0")))
    check(raw)
