"""The declarative mapping (`connector.mapping.declarative`) on its own: money units and
scales, date formats and time zones, statuses, policy candidates, the line folds; and, with
Hypothesis, random valid mappings over random vendor payloads: the mapping is total, it returns
an invoice or raises a `RecordError` carrying reason codes, never anything else."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.errors import RecordError
from connector.issues import Reason
from connector.mapping.declarative import FieldMapping, dig, map_record, trace_record
from connector.mapping.kit import MappingContext
from connector.model import InvoiceStatus
from connector.pipeline.engine import RecordProcessor
from mappings.rest import MAPPING

STATUSES = {"PAID": "paid", "open": "unpaid"}
BASE_FIELDS: dict[str, Any] = {
    "id": "id",
    "invoice_number": "no",
    "invoice_date": "date",
    "total_amount": "total",
    "status": "st",
    "patient": {"name": "who", "policy_number": "pol"},
    "items": {"path": "lines", "description": "what", "quantity": "n", "unit_price": "each"},
}


def context(fields: dict[str, Any], timezone: str = "UTC") -> MappingContext:
    spec = FieldMapping.model_validate(fields)
    return MAPPING.context(
        "src",
        currency="USD",
        status_overrides=STATUSES,
        timezone=timezone,
        options={"fields": spec},
    )


def record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "R1",
        "no": "N1",
        "date": "2025-04-01",
        "total": "30.00",
        "st": "PAID",
        "who": "Ana Mora",
        "pol": "POL-1",
        "lines": [{"what": "Consultation", "n": 2, "each": "15.00"}],
    }
    base.update(changes)
    return base


def codes(raw: Any, fields: dict[str, Any], timezone: str = "UTC") -> set[str]:
    with pytest.raises(RecordError) as caught:
        MAPPING.to_canonical(raw, context(fields, timezone))
    return {issue.code.value for issue in caught.value.issues}


def test_a_plain_record_maps_as_written() -> None:
    invoice = MAPPING.to_canonical(record(), context(BASE_FIELDS))
    assert (invoice.id, invoice.invoice_number, str(invoice.total_amount)) == ("R1", "N1", "30.00")
    assert invoice.status is InvoiceStatus.PAID and invoice.source_status == "PAID"
    (item,) = invoice.items
    assert (item.quantity, item.unit_price, item.total) == (2, Decimal("15.00"), Decimal("30.00"))


@pytest.mark.parametrize(
    ("scale", "sent", "amount"),
    [(2, 1250, "12.50"), (0, 1250, "1250.00"), (3, 12500, "12.50"), (2, "1250", "12.50")],
)
def test_money_in_minor_units_reads_with_its_scale(scale: int, sent: Any, amount: str) -> None:
    fields = {**BASE_FIELDS, "total_amount": {"path": "total", "unit": "minor", "scale": scale}}
    invoice = MAPPING.to_canonical(record(total=sent), context(fields))
    assert str(invoice.total_amount) == amount


@pytest.mark.parametrize(
    ("scale", "sent", "code"),
    [(3, 12345, "MONEY_PRECISION"), (2, 12.5, "MONEY_PRECISION"), (2, -100, "AMOUNT_INVALID")],
)
def test_minor_units_that_are_not_whole_cents_are_quarantined(
    scale: int, sent: Any, code: str
) -> None:
    fields = {**BASE_FIELDS, "total_amount": {"path": "total", "unit": "minor", "scale": scale}}
    assert codes(record(total=sent), fields) == {code}


def test_a_naive_timestamp_is_dated_in_the_source_zone() -> None:
    fields = {**BASE_FIELDS, "invoice_date": {"path": "date", "format": "%d/%m/%Y %H:%M"}}
    raw = record(date="31/03/2025 23:30")
    assert MAPPING.to_canonical(raw, context(fields, "America/Costa_Rica")).invoice_date.day == 31
    aware = {**BASE_FIELDS, "invoice_date": {"path": "date", "format": "iso_datetime"}}
    utc_late = record(date="2025-04-01T03:30:00Z")
    assert (
        MAPPING.to_canonical(utc_late, context(aware, "America/Costa_Rica")).invoice_date.day == 31
    )


def test_every_problem_of_a_record_is_reported_at_once() -> None:
    raw = record(total="12.345", date="01/04/2025", st=None, lines=[{"what": "x", "n": 0}])
    found = codes(raw, BASE_FIELDS)
    assert found == {"MONEY_PRECISION", "FIELD_INVALID", "FIELD_MISSING", "AMOUNT_INVALID"}


def test_an_unknown_status_word_is_quarantined_never_guessed() -> None:
    processor = RecordProcessor(MAPPING, context(BASE_FIELDS))
    accepted, rejected, _ = processor.process(record(st="Paid in full"))
    assert accepted is None and rejected is not None
    assert {i.code for i in rejected.issues} >= {Reason.STATUS_UNMAPPED}


def test_several_policy_paths_become_candidates_in_order() -> None:
    fields = {**BASE_FIELDS, "patient": {"policy_number": ["a.pol", "b.pol", "c.pol"]}}
    raw = record(a={"pol": None}, b={"pol": "POL-2"}, c={"pol": "POL-3"})
    patient = MAPPING.to_canonical(raw, context(fields)).patient
    assert patient.policy_number == "POL-2"
    assert [(c.number, c.origin) for c in patient.policy_candidates] == [
        ("POL-2", "b.pol"),
        ("POL-3", "c.pol"),
    ]


def test_line_discount_tax_and_invoice_discount_fold_like_the_hand_written_mappings() -> None:
    fields = {
        **BASE_FIELDS,
        "items": {
            **BASE_FIELDS["items"],
            "discount": "off",
            "tax": {"amount": "tax", "rate": "rate", "name": "GST"},
        },
        "invoice_discount": {"amount": "whole_off"},
    }
    lines = [
        {
            "what": "Consultation",
            "n": "0.5",
            "each": "193.99",
            "off": "20.00",
            "tax": "7.70",
            "rate": 10,
        },
        {"what": "X-Ray", "n": 1, "each": "50.00"},
    ]
    invoice = MAPPING.to_canonical(record(lines=lines, whole_off="3.00"), context(fields))
    first, second = invoice.items
    assert first.description == (
        "Consultation (0.5 × 193.99, less 20.00, less 1.82 invoice discount, +10% GST 7.70)"
    )
    assert (first.quantity, str(first.unit_price)) == (1, "82.88")
    assert second.description == "X-Ray (1 × 50.00, less 1.18 invoice discount)"
    assert str(second.total) == "48.82"


def test_the_trace_names_the_vendor_path_of_every_value_read() -> None:
    rows, invoice, issues = trace_record(
        record(), FieldMapping.model_validate(BASE_FIELDS), context(BASE_FIELDS)
    )
    assert invoice is not None and not issues
    by_field = {row.canonical: row for row in rows}
    assert by_field["total_amount"].vendor_path == "total"
    assert by_field["items[0].unit_price"].vendor_value == "15.00"
    assert by_field["patient.name"].vendor_path == "who"


# ----------------------------------------------------------------------------- properties

KEYS = ("id", "a", "b", "lines", "x", "0", "total")
key = st.sampled_from(KEYS)
path = st.lists(key, min_size=1, max_size=3).map(".".join)
paths = st.one_of(path, st.lists(path, min_size=1, max_size=3))
texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "12.50",
            "$1,200.5",
            "-3",
            "2025-01-02",
            "2025-01-02T10:00:00",
            "0001-01-01T00:00:00",
            "9999-12-31T23:59:59-12:00",
            "31/12/2025 23:59",
            "PAID",
            "open",
            " ",
            "1e400",
            "NaN",
        ]
    ),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
payloads = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(key, inner, max_size=5)),
    max_leaves=25,
)


def sourced(extra: st.SearchStrategy[dict[str, Any]] | None = None) -> st.SearchStrategy[Any]:
    spec = st.fixed_dictionaries({"path": paths}, optional={"required": st.booleans()})
    if extra is not None:
        spec = st.tuples(spec, extra).map(lambda parts: {**parts[0], **parts[1]})
    return st.one_of(paths, spec)


text_spec = st.one_of(
    sourced(st.fixed_dictionaries({}, optional={"join": st.sampled_from([" ", ", "])})),
    st.fixed_dictionaries({"value": st.sampled_from(["Clinic", "x"])}),
)
money_spec = sourced(
    st.fixed_dictionaries(
        {}, optional={"unit": st.sampled_from(["decimal", "minor"]), "scale": st.integers(0, 6)}
    )
)
date_spec = sourced(
    st.fixed_dictionaries(
        {},
        optional={
            "format": st.sampled_from(
                ["iso_date", "iso_datetime", "date_or_datetime", "%d/%m/%Y %H:%M", "%Y%m%d"]
            )
        },
    )
)
moment_spec = sourced(
    st.fixed_dictionaries(
        {}, optional={"format": st.sampled_from(["iso_datetime", "%Y-%m-%d %H:%M:%S"])}
    )
)
quantity_spec = st.one_of(
    sourced(), st.fixed_dictionaries({"value": st.sampled_from(["1", "0.5", 3])})
)
items_spec = st.fixed_dictionaries(
    {"path": path, "description": text_spec, "unit_price": money_spec},
    optional={
        "category": text_spec,
        "quantity": quantity_spec,
        "total": money_spec,
        "discount": money_spec,
        "tax": st.fixed_dictionaries(
            {"amount": money_spec}, optional={"rate": money_spec, "name": st.just("VAT")}
        ),
    },
)
mappings = st.fixed_dictionaries(
    {"id": text_spec, "total_amount": money_spec, "status": text_spec, "items": items_spec},
    optional={
        "invoice_number": text_spec,
        "invoice_date": date_spec,
        "paid_amount": money_spec,
        "currency": text_spec,
        "facility": text_spec,
        "updated_at": moment_spec,
        "patient": st.fixed_dictionaries(
            {}, optional={"name": text_spec, "policy_number": text_spec, "ref": text_spec}
        ),
        "invoice_discount": st.fixed_dictionaries(
            {}, optional={"amount": money_spec, "percent": money_spec, "base": money_spec}
        ),
    },
)
zones = st.sampled_from(["UTC", "America/Costa_Rica", "Pacific/Kiritimati", "Pacific/Niue"])


@given(fields=mappings, raw=payloads, timezone=zones)
def test_any_valid_mapping_over_any_payload_maps_or_quarantines_never_raises(
    fields: dict[str, Any], raw: Any, timezone: str
) -> None:
    ctx = context(fields, timezone)
    spec = ctx.options["fields"]
    try:
        invoice = map_record(raw, spec, ctx)
    except RecordError as exc:
        assert exc.issues
        assert all(isinstance(issue.code, Reason) for issue in exc.issues)
    else:
        assert invoice.source == "src"
    # The trace runs the same reader: it agrees with the mapping on whether the record maps.
    _rows, traced, issues = trace_record(raw, spec, ctx)
    assert (traced is None) == bool(issues)


@given(fields=mappings, raw=st.dictionaries(key, payloads, max_size=6), timezone=zones)
def test_the_whole_processor_never_reports_a_mapping_crash(
    fields: dict[str, Any], raw: dict[str, Any], timezone: str
) -> None:
    processor = RecordProcessor(MAPPING, context(fields, timezone))
    _accepted, rejected, _ = processor.process(raw)
    if rejected is not None:
        crashes = [i for i in rejected.issues if i.message.startswith("mapping failed")]
        assert not crashes, crashes


def _put(node: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a value at a dotted path, unless another value is already in the way."""
    *parents, last = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return
        node = child
    node.setdefault(last, value)


def _value_for(spec: Any, data: st.DataObject) -> Any:
    """A vendor value a spec can read (mostly well formed, sometimes not)."""
    kind = type(spec).__name__
    if kind == "MoneyField":
        if spec.unit == "minor":
            return data.draw(st.integers(0, 10**7))
        return data.draw(st.decimals(0, 10**5, places=2).map(str) | st.integers(0, 999))
    if kind == "QuantityField":
        return data.draw(st.decimals("0.5", 20, places=1).map(str) | st.integers(1, 5))
    if kind in ("DateField", "TimestampField"):
        moment = data.draw(st.datetimes(min_value=datetime(1990, 1, 1)))
        if spec.format == "iso_date":
            return moment.date().isoformat()
        if spec.format in ("iso_datetime", "date_or_datetime"):
            return moment.isoformat()
        return moment.strftime(spec.format)
    return data.draw(st.sampled_from(["PAID", "open", "Ana Mora", "POL-1", "Other word"]))


def _fill(node: dict[str, Any], spec: Any, data: st.DataObject) -> None:
    for dotted in getattr(spec, "path", ()):
        if data.draw(st.integers(0, 9)):  # now and then a field is left out
            _put(node, dotted, _value_for(spec, data))


@given(fields=mappings, timezone=zones, data=st.data())
def test_payloads_shaped_like_their_mapping_map_or_quarantine_never_raise(
    fields: dict[str, Any], timezone: str, data: st.DataObject
) -> None:
    ctx = context(fields, timezone)
    spec: FieldMapping = ctx.options["fields"]
    raw: dict[str, Any] = {}
    singles = [
        spec.id,
        spec.total_amount,
        spec.status,
        spec.invoice_number,
        spec.invoice_date,
        spec.paid_amount,
        spec.currency,
        spec.facility,
        spec.updated_at,
        spec.patient.name,
        spec.patient.policy_number,
        spec.patient.ref,
    ]
    for single in singles:
        if single is not None:
            _fill(raw, single, data)
    items = spec.items
    lines = []
    for _ in range(data.draw(st.integers(0, 3))):
        line: dict[str, Any] = {}
        for part in (
            items.description,
            items.category,
            items.quantity,
            items.unit_price,
            items.total,
            items.discount,
            items.tax.amount if items.tax else None,
        ):
            if part is not None:
                _fill(line, part, data)
        lines.append(line)
    _put(raw, items.path, lines)
    try:
        invoice = map_record(raw, spec, ctx)
    except RecordError as exc:
        assert exc.issues and all(isinstance(i.code, Reason) for i in exc.issues)
    else:
        if dig(raw, items.path) is lines:  # not when another field's value took its place
            assert len(invoice.items) == len(lines)
        processor = RecordProcessor(MAPPING, ctx)
        processor.process(raw)
