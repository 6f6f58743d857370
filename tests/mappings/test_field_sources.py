"""Each mapping's `field_sources` against its code and its fixtures: every canonical field is
declared, every declared vendor path is in the vendor's fixture payloads, and changing a
declared vendor value changes the canonical field it is declared for (or the mapping refuses
the record at that path). So a declaration cannot drift from `to_canonical`."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from connector.errors import RecordError
from connector.mapping.kit import (
    CANONICAL_FIELDS,
    POLICY_LINK,
    SETTING,
    CategoryMatch,
    MappingContext,
    SourceMapping,
    record_path,
)
from connector.model import Invoice
from connector.sources.discovery import source_type
from mappings import bio_ecko, citabox, invoice_api, meditrak, meditrak_import, splose

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MAPPINGS: dict[str, SourceMapping] = {
    m.vendor: m
    for m in (
        meditrak.MAPPING,
        meditrak_import.MAPPING,
        splose.MAPPING,
        bio_ecko.MAPPING,
        citabox.MAPPING,
        invoice_api.MAPPING,
    )
}


# A list index as pydantic ("lines.0.amount") or validation ("lines[0].amount") writes it.
_INDEX = re.compile(r"\[\d*\]|\.\d+(?=\.|$)")


def normalized_path(path: str) -> str:
    """A reported path spelled as declarations are: every list index becomes "[]"."""
    return _INDEX.sub("[]", path)


def _load(name: str) -> Any:
    # Parsed as the HTTP client parses bodies (JSON numbers as floats).
    return orjson.loads((FIXTURES / name).read_bytes())


def _citabox_records() -> list[Any]:
    quirks = _load("citabox/quirks.json")
    return [
        _load("citabox/documented_example.json"),
        *(case["record"] for case in quirks.values()),
        *_load("citabox/patient_name_fallbacks.json")["records"],
    ]


# The raw records each mapping receives in its fixtures (what the adapter hands over).
PAYLOADS: dict[str, Callable[[], list[Any]]] = {
    "meditrak": lambda: [_load("meditrak_invoice_detail.json")["invoice"]],
    "meditrak_import": lambda: [_load("meditrak_import_record.json")],
    "splose": lambda: [
        _load("splose/invoice_mixed.json"),
        {**_load("splose/invoice_doc_example.json"), "_patient": _load("splose/patient.json")},
    ],
    "bio_ecko": lambda: [
        _load("bio_ecko/detail_documented.json"),
        _load("bio_ecko/detail_inter_state.json"),
    ],
    "citabox": _citabox_records,
    "invoice_api": lambda: [
        _load(f"invoice_api/{name}.json")
        for name in (
            "documented_example",
            "line_discount",
            "invoice_discount_amount",
            "invoice_discount_percent",
            "partially_paid_plain_lines",
        )
    ],
}


def _inputs_as_rule(word: str | None, description: str | None) -> CategoryMatch:
    """Category rules whose answer names both their inputs: any input shows in the item."""
    return CategoryMatch(None, f"{word}|{description}")


def _context(mapping: SourceMapping) -> MappingContext:
    return mapping.context(
        mapping.vendor,
        currency="USD",
        categorize=_inputs_as_rule,
        options={"facility": "Clínica Central"},
    )


def _in_record(source: str) -> bool:
    return record_path(source) is not None


def _values_at(node: Any, parts: list[str]) -> Iterator[Any]:
    """Every value at a dotted path ("[]" steps into each element of a list)."""
    if not parts:
        yield node
        return
    head, rest = parts[0], parts[1:]
    is_list = head.endswith("[]")
    key = head.removesuffix("[]")
    if not isinstance(node, dict) or key not in node:
        return
    value = node[key]
    if is_list:
        for element in value if isinstance(value, list) else ():
            yield from _values_at(element, rest)
    else:
        yield from _values_at(value, rest)


def _exists(record: Any, path: str) -> bool:
    return any(True for _ in _values_at(record, path.split(".")))


def _changed(value: Any) -> Any:
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "7"
    if isinstance(value, list):
        return value[1:] if len(value) > 1 else []
    return None


def _edit(node: Any, parts: list[str], *, delete: bool = False) -> None:
    """Change (or delete) the values at a dotted path, in place."""
    head, rest = parts[0], parts[1:]
    key = head.removesuffix("[]")
    if not isinstance(node, dict) or key not in node:
        return
    if head.endswith("[]") and rest:
        for element in node[key] or ():
            _edit(element, rest, delete=delete)
    elif rest:
        _edit(node[key], rest, delete=delete)
    elif delete:
        del node[key]
    else:
        node[key] = _changed(node[key])


def _canonical(invoice: Invoice, name: str) -> Any:
    if name == "status":
        return invoice.status, invoice.source_status
    if name.startswith("patient."):
        return getattr(invoice.patient, name.removeprefix("patient."))
    if name == "items":
        return invoice.items
    if name.startswith("items[]."):
        attribute = name.removeprefix("items[].")
        if attribute == "category":
            return [(i.category, i.source_category, i.category_rule) for i in invoice.items]
        return [getattr(i, attribute) for i in invoice.items]
    return getattr(invoice, name)


@pytest.mark.parametrize("vendor", sorted(MAPPINGS))
def test_every_canonical_field_is_declared(vendor: str) -> None:
    declared = MAPPINGS[vendor].field_sources
    assert list(declared) == list(CANONICAL_FIELDS)
    for name, sources in declared.items():
        assert isinstance(sources, tuple), name
        assert len(set(sources)) == len(sources), f"{name}: a source listed twice"


@pytest.mark.parametrize("vendor", sorted(MAPPINGS))
def test_every_declared_vendor_path_is_in_the_fixture_payloads(vendor: str) -> None:
    records = PAYLOADS[vendor]()
    settings = source_type(vendor).config_model().model_fields
    for name, sources in MAPPINGS[vendor].field_sources.items():
        for source in sources:
            where = record_path(source)
            if where is None:
                # Not in the record: a patient link, or a setting the vendor's config has.
                assert source == POLICY_LINK or source.removeprefix(SETTING) in settings, source
                continue
            assert normalized_path(where) == where, f"{name}: spell lists as '[]': {source}"
            assert any(_exists(record, where) for record in records), f"{name}: {source}"


@pytest.mark.parametrize("vendor", sorted(MAPPINGS))
def test_changing_a_declared_vendor_value_changes_its_canonical_field(vendor: str) -> None:
    mapping = MAPPINGS[vendor]
    ctx = _context(mapping)
    records = PAYLOADS[vendor]()
    unfelt = []
    for name, sources in mapping.field_sources.items():
        paths = [str(record_path(source)) for source in sources if _in_record(source)]
        for position, where in enumerate(paths):
            # A fallback shows only where the sources before it are absent.
            fallback_of = paths[:position]
            if not any(
                _felt(mapping, ctx, record, name, where)
                or _felt(mapping, ctx, _without(record, fallback_of), name, where)
                for record in records
            ):
                unfelt.append(f"{name} <- {where}")
    assert unfelt == []


def _without(record: Any, paths: list[str]) -> Any:
    """A copy of the record without the values at these paths."""
    copied = copy.deepcopy(record)
    for path in paths:
        _edit(copied, path.split("."), delete=True)
    return copied


def _felt(mapping: SourceMapping, ctx: MappingContext, record: Any, name: str, path: str) -> bool:
    """Whether changing the vendor value at `path` changes canonical field `name` (or makes
    the mapping refuse the record for that very path)."""
    if not any(_changed(v) is not None for v in _values_at(record, path.split("."))):
        return False
    try:
        before = _canonical(mapping.to_canonical(record, ctx), name)
    except RecordError:
        return False  # a defective fixture says nothing about this path
    changed = copy.deepcopy(record)
    _edit(changed, path.split("."))
    try:
        after = _canonical(mapping.to_canonical(changed, ctx), name)
    except RecordError as exc:
        return any(normalized_path(issue.path) == path for issue in exc.issues)
    return bool(before != after)


def test_the_checks_notice_a_wrong_declaration() -> None:
    """The drift check fails for a vendor path declared against the wrong field."""
    mapping = meditrak_import.MAPPING
    record = PAYLOADS["meditrak_import"]()[0]
    ctx = _context(mapping)
    assert _felt(mapping, ctx, record, "facility", "facility")
    assert not _felt(mapping, ctx, record, "facility", "invoice_number")
    assert not _felt(mapping, ctx, record, "items[].total", "items[].unit_price")
    assert _exists(record, "items[].unit_price")
    assert not _exists(record, "items[].price")
