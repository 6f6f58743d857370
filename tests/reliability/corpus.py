"""Malformed and hostile payloads in the MediTrak import-record contract, each with the outcome
the connector must reach: a quarantined record with a specific reason code, or a clear
page-level error that fails the source. Listed in docs/reliability.md.

`RECORD_KINDS`: one list row each, served together on one list; `PAGE_KINDS`: whole list
answers, each served as its own source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

POLICY = "POL-456789"


def valid_record(record_id: str) -> dict[str, Any]:
    return {
        "id": record_id,
        "invoice_number": f"2025-{record_id}",
        "invoice_date": "2025-03-01",
        "total_amount": 150.00,
        "status": "paid",
        "facility": "CFB Medical Hospital",
        "patient": {"name": "John Doe", "policy_number": POLICY},
        "items": [
            {
                "category": "consultation",
                "description": "General Consultation",
                "quantity": 1,
                "unit_price": 100.00,
                "total": 100.00,
            },
            {
                "category": "laboratory",
                "description": "Full Blood Count",
                "quantity": 2,
                "unit_price": 25.00,
                "total": 50.00,
            },
        ],
        "updated_at": "2025-03-01T10:00:00Z",
    }


@dataclass(frozen=True)
class RecordKind:
    name: str
    description: str
    # The record as served (built from a valid one).
    record: Any
    # Reason codes expected among the quarantine entry's errors; None: stored (accepted).
    expected: str | None
    # The key the quarantine entry is filed under (defaults to the record's id).
    key: str | None = None


def _with(record_id: str, **changes: Any) -> dict[str, Any]:
    record = valid_record(record_id)
    for path, value in changes.items():
        node = record
        *parents, last = path.split("__")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is _DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return record


_DELETE = object()


def _deep(depth: int) -> Any:
    node: Any = "bottom"
    for _ in range(depth):
        node = {"nested": node}
    return node


def _record_kinds() -> list[RecordKind]:
    k: list[RecordKind] = []

    def add(name: str, description: str, record: Any, expected: str | None, **kw: Any) -> None:
        k.append(RecordKind(name, description, record, expected, **kw))

    add("control_valid", "a valid record (control: stored)", valid_record("R00"), None)
    add(
        "missing_invoice_number",
        "required field absent",
        _with("R01", invoice_number=_DELETE),
        "FIELD_MISSING",
    )
    add(
        "null_invoice_number",
        "required field null",
        _with("R02", invoice_number=None),
        "FIELD_MISSING",
    )
    add("missing_patient", "patient object absent", _with("R03", patient=_DELETE), "FIELD_MISSING")
    add("null_total", "total_amount null", _with("R04", total_amount=None), "AMOUNT_INVALID")
    add(
        "total_as_object",
        "wrong type: object for a number",
        _with("R05", total_amount={"v": 1}),
        "AMOUNT_INVALID",
    )
    add(
        "items_as_string",
        "wrong type: string for the items list",
        _with("R06", items="none"),
        "PAYLOAD_INVALID",
    )
    add(
        "quantity_as_words",
        "a string for a number",
        _with("R07", items__0__quantity="one"),
        "AMOUNT_INVALID",
    )
    add(
        "total_as_money_text",
        "a money string with letters",
        _with("R08", total_amount="150 dollars"),
        "AMOUNT_INVALID",
    )
    add("total_nan", "NaN as a string amount", _with("R09", total_amount="NaN"), "AMOUNT_INVALID")
    add(
        "total_infinity",
        "Infinity as a string amount",
        _with("R10", total_amount="Infinity"),
        "AMOUNT_INVALID",
    )
    add("total_huge", "a 400-digit amount", _with("R11", total_amount=10**400), "AMOUNT_INVALID")
    add(
        "total_negative",
        "a negative invoice total",
        _with("R12", total_amount=-150.00),
        "AMOUNT_INVALID",
    )
    add(
        "three_decimals",
        "an amount with three decimals",
        _with("R13", total_amount="150.005"),
        "MONEY_PRECISION",
    )
    add("bad_date", "a day-first date", _with("R14", invoice_date="30/07/2025"), "FIELD_INVALID")
    add(
        "ambiguous_date",
        "an ambiguous slash date",
        _with("R15", invoice_date="03/04/2025"),
        "FIELD_INVALID",
    )
    add(
        "impossible_date", "February 30th", _with("R16", invoice_date="2025-02-30"), "FIELD_INVALID"
    )
    add(
        "date_as_number",
        "a date given as an epoch number",
        _with("R17", invoice_date=1740787200),
        "FIELD_INVALID",
    )
    add(
        "updated_at_bad_zone",
        "an updated_at with an impossible offset",
        _with("R18", updated_at="2025-03-01T10:00:00+25:00"),
        "FIELD_INVALID",
    )
    add(
        "unknown_status",
        "a status word outside the contract",
        _with("R19", status="refunded"),
        "STATUS_UNMAPPED",
    )
    add("status_as_number", "a status as a number", _with("R20", status=3), "STATUS_UNMAPPED")
    add(
        "unknown_category",
        "an item category outside MediTrak's ten",
        _with("R21", items__0__category="miscellaneous", items__0__description="Misc"),
        "CATEGORY_UNMAPPED",
    )
    add(
        "item_total_mismatch",
        "an item whose total is not quantity x price",
        _with("R22", items__1__total=60.00),
        "ITEM_TOTAL_MISMATCH",
    )
    add(
        "invoice_total_mismatch",
        "items that do not add up to the total",
        _with("R23", total_amount=155.00),
        "INVOICE_TOTAL_MISMATCH",
    )
    add("empty_items", "no items at all", _with("R24", items=[], total_amount=0), "NO_ITEMS")
    add("item_not_object", "an item that is a number", _with("R25", items=[7]), "PAYLOAD_INVALID")
    add(
        "policy_unknown",
        "a policy number not in the registry",
        _with("R26", patient__policy_number="POL-999999"),
        "POLICY_UNKNOWN",
    )
    add(
        "policy_bad_format",
        "a policy number of the wrong shape",
        _with("R27", patient__policy_number="12-AB"),
        "POLICY_FORMAT",
    )
    add(
        "huge_string",
        "a 1 MB facility name (over the field length limit)",
        _with("R28", facility="x" * 1_000_000),
        "FIELD_INVALID",
    )
    add(
        "deeply_nested",
        "a 500-level nested object where text belongs",
        _with("R29", facility=_deep(500)),
        "FIELD_INVALID",
    )
    add(
        "control_characters",
        "NUL and control characters in the patient name",
        _with("R30", patient__name="John\x00Doe\x07\x1b[31m"),
        "FIELD_INVALID",
    )
    add(
        "unicode_text",
        "right-to-left marks, emoji and combining characters (valid text: stored)",
        _with("R31", facility="Clinique \u202eéé\u0301 🏥", patient__name="Zoë Ångström"),
        None,
    )
    add(
        "sql_injection_text",
        "SQL in a text field (stored verbatim, bound as a parameter)",
        _with("R32", facility="x'); DROP TABLE invoice; --"),
        None,
    )
    add(
        "html_injection_text",
        "HTML/script in a text field (stored verbatim)",
        _with("R33", facility="<script>alert(1)</script>"),
        None,
    )
    add(
        "path_traversal_id",
        "an id with path traversal (the detail URL quotes it; stored verbatim)",
        _with("../../etc/passwd", invoice_number="2025-TRAV"),
        None,
    )
    add(
        "id_as_object",
        "an id that is an object",
        _with("R35", id={"$gt": ""}),
        "FIELD_INVALID",
        key="",
    )
    add("missing_id", "no id at all", _with("R36", id=_DELETE), "FIELD_MISSING", key="")
    add(
        "record_not_object",
        "a list row that is a string",
        "not a record",
        "PAYLOAD_INVALID",
        key="",
    )
    add("record_null", "a list row that is null", None, "PAYLOAD_INVALID", key="")
    duplicate = valid_record("R39")
    add("duplicate_id_first", "an id listed twice: first copy", duplicate, None)
    add(
        "duplicate_id_second",
        "an id listed twice: second copy with other content (held for review)",
        _with("R39", facility="Other Clinic"),
        "DUPLICATE_IN_RUN",
        key="R39#duplicate",
    )
    return k


RECORD_KINDS: list[RecordKind] = _record_kinds()


@dataclass(frozen=True)
class PageKind:
    name: str
    description: str
    body: bytes
    content_type: str
    # Text the source's error must contain.
    error: str
    status: int = 200


def _page(records: list[Any]) -> bytes:
    import json

    return json.dumps({"data": records, "total": len(records), "page": 1}).encode()


def _page_kinds() -> list[PageKind]:
    ok = _page([valid_record("P1")])
    return [
        PageKind(
            "html_with_200",
            "an HTML error page with status 200",
            b"<html><body>Oops</body></html>",
            "text/html",
            "answered non-JSON",
        ),
        PageKind(
            "plain_text_200",
            "plain text with status 200",
            b"Service temporarily unavailable",
            "text/plain",
            "answered non-JSON",
        ),
        PageKind(
            "truncated_json",
            "a JSON body cut off mid-way",
            ok[: len(ok) // 2],
            "application/json",
            "answered non-JSON",
        ),
        PageKind(
            "empty_body",
            "an empty body with status 200",
            b"",
            "application/json",
            "answered non-JSON",
        ),
        PageKind(
            "json_array_body",
            "an array where the envelope object belongs",
            b"[1, 2, 3]",
            "application/json",
            "expected a list of records",
        ),
        PageKind(
            "records_not_list",
            "`data` is an object",
            b'{"data": {"id": 1}, "total": 1}',
            "application/json",
            "expected a list of records",
        ),
        PageKind(
            "negative_total_count",
            "a negative total",
            b'{"data": [], "total": -1}',
            "application/json",
            "non-negative integer total",
        ),
        PageKind(
            "total_as_string",
            "a total given as text",
            b'{"data": [], "total": "12"}',
            "application/json",
            "non-negative integer total",
        ),
        PageKind(
            "nan_literal",
            "a bare NaN literal (not JSON)",
            b'{"data": [{"total_amount": NaN}], "total": 1}',
            "application/json",
            "answered non-JSON",
        ),
        PageKind(
            "deep_nesting_body",
            "a body nested 100000 levels",
            b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
            "application/json",
            "answered non-JSON",
        ),
        PageKind(
            "html_error_500",
            "an HTML 500 page, every time",
            b"<html>Internal Server Error</html>",
            "text/html",
            "still failing after",
            status=500,
        ),
        PageKind(
            "not_found_404",
            "a 404 for the list path",
            b'{"detail": "Not Found"}',
            "application/json",
            "404",
            status=404,
        ),
    ]


PAGE_KINDS: list[PageKind] = _page_kinds()


def records_served() -> list[Any]:
    return [kind.record for kind in RECORD_KINDS]
