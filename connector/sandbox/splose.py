"""Sandbox dialect for Splose (`/v1/invoices`, `/v1/invoices/{id}`, `/v1/patients/{id}`): bearer
API key, newest-first keyset pages linked by root-relative `links.nextPage`, 400 for unknown
query parameters, and 60 requests per minute per key answered with 429 + Retry-After beyond.

How the truth is rendered (choices of this sandbox where Splose documents nothing):
- Ids are integers (the truth id's number); patients are `PAT-0007` → 7 with `{id, firstName,
  lastName}` at `/v1/patients/{id}`. `referenceNumbers` (Splose's provider numbers) holds the
  truth policy mostly as "Policy: POL-123456"; one invoice in ten carries only a Medicare
  number ("Medicare: 2123456701") and one in ten a Medicare number before its policy; one in
  ten "Insurance: POL-…" after a DVA number ("DVA: QX000017"); about one in thirteen no entry
  at all. A Medicare or DVA number is never the policy: invoices without a policy entry are
  billed through the patient's link (`connector sandbox` seeds the links), and without links
  they get POLICY_MISSING. `MEDICARE_ONLY` / `MEDICARE_BESIDE_POLICY` name the shapes.
- An `unregistered_policy` invoice belongs to a patient of its own (`UNLINKED_PATIENT_BASE` +
  the invoice number), never linked, so its unknown "Policy:" entry is the only candidate: a
  patient's registered link would rightly win over it (docs/sources.md, policy resolution).
- Items are billed from a price list: `code` identifies the service (`ITEM_CODES` maps each
  code to its MediTrak category), `type` is appointment / product / service, and products carry
  10 % GST while services are GST-free (`taxRate` 0).
- `taxStatus` varies by invoice. Every line's net amount (see mappings/splose.py: gross rounded
  half-up per line, less discount, plus tax when "excluding") equals the truth item total, so
  `total` equals the truth total: discounted lines raise the unit price by $5.00 and discount
  "$5.00 x quantity"; taxed "excluding" lines are priced ex-tax (a GST-free line when no ex-tax
  cent amount reaches the truth amount); some lines bill half quantities at twice the price.
  `subtotal` is the ex-tax amount after discounts, `tax` the GST (added or included).
- Dates come in all three documented forms across records; `updatedAt` keeps whole seconds.
- Defects: `total` + $0.005 (MONEY_PRECISION) or + $5.00 (INVOICE_TOTAL_MISMATCH), no items,
  null `invoiceNumber`, issueDate "30/07/2025", status "Written Off", an unknown item code, an
  unregistered policy, a fee line (`SPLOSE_FEES`: its own code and wording, GST-free). Splose
  items carry no line total, so `item_total_mismatch` cannot exist.
- Errors are `{"error", "message"}` bodies (Splose documents only the status codes).
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left, bisect_right
from collections import deque
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, ClassVar
from urllib.parse import urlencode

from aiohttp import web

from ._dataset import (
    CATEGORIES,
    EXPECTED_REASON,
    FACILITIES,
    UNCATEGORISABLE_DESCRIPTION,
    Dataset,
    SandboxInvoice,
    SandboxItem,
    fee_wording,
)
from ._dialect import Dialect, ListShape, json_response, money, parse_iso_datetime

_CENT = Decimal("0.01")
_FIVE = Decimal("5.00")
_HALF_CENT = Decimal("0.005")
_GST = Decimal(10)
_HUNDRED = Decimal(100)

SPLOSE_DEFECTS: tuple[str, ...] = tuple(k for k in EXPECTED_REASON if k != "item_total_mismatch")
SPLOSE_DEFAULT_DEFECTS: tuple[str, ...] = tuple(
    k for k in SPLOSE_DEFECTS if k != "unregistered_policy"
)
STATUS_WORDS: dict[str, str] = {"paid": "Paid", "unpaid": "Awaiting Payment", "pending": "Draft"}
QUERY_PARAMETERS = frozenset({"id_gt", "id_lt", "update_gt", "update_lt", "include_archived"})
# Goods attract GST; clinical services are GST-free.
_PRODUCT_CATEGORIES = frozenset({"pharmacy", "optical"})
_APPOINTMENT_CATEGORIES = frozenset({"consultation", "physiotherapy"})
UNKNOWN_ITEM_CODE = 99999
# Patients of `unregistered_policy` invoices: this plus the invoice number (above any real one).
UNLINKED_PATIENT_BASE = 1_000_000
# Reference shapes by invoice number modulo 10 (see the module doc).
MEDICARE_ONLY = 3
MEDICARE_BESIDE_POLICY = 9
DVA_BESIDE_INSURANCE = 7


def medicare_number(number: int) -> str:
    """A ten-digit Medicare-style number (card number + issue digit) for invoice `number`:
    never in the registry's policy format."""
    return f"2{number * 7919 % 10**8:08d}1"


def _item_codes() -> dict[tuple[str, str], int]:
    codes: dict[tuple[str, str], int] = {}
    for c_index, (category, (descriptions, _low, _high)) in enumerate(CATEGORIES.items()):
        for d_index, description in enumerate(descriptions):
            codes[(category, description)] = 10000 + 1000 * c_index + d_index + 1
    return codes


_CODES = _item_codes()
# Item code → MediTrak category, for tests that categorise Splose lines like a rules table.
ITEM_CODES: dict[int, str] = {code: category for (category, _), code in _CODES.items()}

# Fee lines (`non_clinical_line`), as an Australian allied-health practice words them: item
# code, Splose item type and the wordings. Cancellations and no-shows are billed against the
# appointment, so they carry its date and time as Splose's appointment lines do.
SPLOSE_FEES: dict[str, tuple[int, str, tuple[str, ...]]] = {
    "cancellation": (90001, "appointment", ("Late Cancellation Fee", "Cancellation < 24hrs")),
    "missed_appointment": (
        90002,
        "appointment",
        ("Missed Appointment Fee", "Failure to Attend Fee", "DNA - Did Not Attend"),
    ),
    "surcharge": (90003, "service", ("Credit Card Surcharge", "Card Payment Surcharge 1.9%")),
    "gift_voucher": (90004, "product", ("Gift Voucher", "Gift Certificate")),
    "admin": (90005, "service", ("Admin Fee", "Account Keeping Fee")),
    "report_writing": (90006, "service", ("Report Writing", "NDIS Progress Report")),
}


def _cents(value: Decimal) -> Decimal:
    return value.quantize(_CENT, rounding=ROUND_HALF_UP)


def _ex_tax_amount(total: Decimal, rate: Decimal) -> Decimal | None:
    """An ex-tax amount that, plus its tax rounded half-up, makes `total` (None if none does)."""
    guess = _cents(total * _HUNDRED / (_HUNDRED + rate))
    for step in (0, -1, 1, -2, 2):
        amount = guess + step * _CENT
        if amount >= 0 and amount + _cents(amount * rate / _HUNDRED) == total:
            return amount
    return None


def _type_and_rate(category: str) -> tuple[str, Decimal]:
    """Splose's item type for a truth category, and its GST rate in percent."""
    if category in _PRODUCT_CATEGORIES:
        return "product", _GST
    if category in _APPOINTMENT_CATEGORIES:
        return "appointment", Decimal(0)
    return "service", Decimal(0)


def _error(
    status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response({"error": error, "message": message}, status=status, headers=headers)


def _bad_request(message: str) -> web.Response:
    return _error(400, "Bad Request", message)


def _timestamp(moment: datetime, form: int) -> str:
    """One of Splose's three forms: date only, seconds with Z, milliseconds with Z."""
    if form == 0:
        return moment.date().isoformat()
    if form == 1:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class SploseDialect(Dialect):
    """Splose's invoice list and detail, its patient resource, and its per-key rate limit.

    `page_size`, `rate_limit` and `rate_window_s` are instance settings that tests may change
    on a running server; `archived` holds truth ids rendered with `isArchived: true` (hidden
    unless `include_archived=true`).
    """

    name: ClassVar[str] = "splose"
    api_root: ClassVar[str] = "/v1/"
    list_shape: ClassVar[ListShape | None] = ListShape(
        "/v1/invoices", "data", "id", next_link="links.nextPage", style="link"
    )
    default_token: ClassVar[str] = "sandbox-splose-key"
    currency: ClassVar[str] = "AUD"
    id_prefix: ClassVar[str] = "SPL-"
    supported_defects: ClassVar[tuple[str, ...]] = SPLOSE_DEFECTS
    default_defects: ClassVar[tuple[str, ...]] = SPLOSE_DEFAULT_DEFECTS
    # Splose has no word for a voided invoice.
    generated_statuses: ClassVar[tuple[str, ...]] = tuple(STATUS_WORDS)

    def vendor_patient_ref(self, invoice: SandboxInvoice) -> str:
        if invoice.defect == "unregistered_policy":
            return str(UNLINKED_PATIENT_BASE + self.number(invoice))
        return str(int(invoice.patient_ref.removeprefix("PAT-")))

    def __init__(self, dataset: Dataset, token: str) -> None:
        super().__init__(dataset, token)
        # Generated patients never change after generation (new invoices reuse them).
        self._patients = {int(p.ref.removeprefix("PAT-")): p.name for p in dataset.patients}
        self.page_size = 50
        self.rate_limit = 60
        self.rate_window_s = 60.0
        self.archived: set[str] = set()
        self._admitted: dict[str, deque[float]] = {}
        self._rate_lock = threading.Lock()

    # -- hooks --

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/invoices", self.list_invoices)
        app.router.add_get("/v1/invoices/{invoice_id}", self.get_invoice)
        app.router.add_get("/v1/patients/{patient_id}", self.get_patient)

    def unauthorized(self) -> web.Response:
        return _error(401, "Unauthorized", "Invalid or missing API key")

    def fault_response(self, status: int, retry_after_s: int) -> web.Response:
        if status == 429:
            headers = {"Retry-After": str(retry_after_s)}
            return _error(429, "Too Many Requests", "Rate limit exceeded", headers)
        return _error(status, "Internal Server Error", "Something went wrong")

    def connector_source(self, api_url: str) -> dict[str, Any]:
        return {**super().connector_source(api_url), "currency": self.currency}

    def vendor_id(self, invoice: SandboxInvoice) -> str:
        return str(self.number(invoice))

    def number(self, invoice: SandboxInvoice) -> int:
        return int(invoice.id.removeprefix(self.dataset.id_prefix))

    # -- rate limit --

    def _over_limit(self, request: web.Request) -> web.Response | None:
        """429 + Retry-After when this key already made `rate_limit` requests in the window."""
        credential = self.credential_of(request) or ""
        now = time.monotonic()
        with self._rate_lock:
            window = self._admitted.setdefault(credential, deque())
            while window and window[0] <= now - self.rate_window_s:
                window.popleft()
            if len(window) < self.rate_limit:
                window.append(now)
                return None
            wait = window[0] + self.rate_window_s - now
        return _error(
            429,
            "Too Many Requests",
            f"Rate limit of {self.rate_limit} requests per minute exceeded",
            {"Retry-After": str(max(1, math.ceil(wait)))},
        )

    def _gate(self, request: web.Request) -> web.Response | None:
        return self._over_limit(request) or (
            None if self.bearer_ok(request) else self.unauthorized()
        )

    # -- rendering --

    def _tax_status(self, number: int) -> str:
        return ("including", "excluding", "no tax", "no tax", "no tax")[number % 5]

    def _render_item(
        self, invoice: SandboxInvoice, number: int, index: int, item: SandboxItem, tax_status: str
    ) -> tuple[dict[str, Any], Decimal, Decimal]:
        """(item row, ex-tax amount after discount, tax) for one truth item."""
        total = (item.quantity * item.unit_price).quantize(_CENT)
        if item.fee is not None:
            code, kind, wordings = SPLOSE_FEES[item.fee]
            description = fee_wording(wordings, invoice.id)
            if kind == "appointment":
                description = f"{invoice.invoice_date:%a %d %b %Y}, 09:00am - {description}"
            # Charges of a health practice stay GST-free.
            rate = Decimal(0)
        else:
            code, description = _CODES[(item.category, item.description)], item.description
            kind, rate = _type_and_rate(item.category)
        if index == 0 and invoice.defect == "unknown_category":
            code, description = UNKNOWN_ITEM_CODE, UNCATEGORISABLE_DESCRIPTION
        quantity, unit_price, discount = item.quantity, item.unit_price, Decimal("0.00")
        variant = (number + index) % 6
        tax = Decimal("0.00")
        ex_tax = total
        if tax_status == "excluding" and rate:
            amount = _ex_tax_amount(total, rate)
            if amount is None:
                rate = Decimal(0)
            else:
                ex_tax, tax = amount, total - amount
                per_unit = amount / quantity
                if per_unit != per_unit.quantize(_CENT):
                    quantity, per_unit = Decimal(1), amount
                unit_price = per_unit.quantize(_CENT)
        elif variant == 1:
            # A discounted line: $5.00 more per unit, $5.00 per unit off.
            unit_price = item.unit_price + _FIVE
            discount = _FIVE * quantity
        elif variant == 2 and quantity in (1, 3):
            # Half units at twice the price ("0.5 hours of therapy").
            quantity, unit_price = quantity / 2, item.unit_price * 2
        if tax_status == "including" and rate:
            tax = _cents(total * rate / (_HUNDRED + rate))
            ex_tax = total - tax
        if tax_status == "no tax":
            tax, ex_tax = Decimal("0.00"), total
        row = {
            "id": number * 10 + index,
            "type": kind,
            "typeId": code % 1000,
            "code": code,
            "description": description,
            "unitPrice": money(unit_price),
            "quantity": money(quantity),
            "discount": f"${discount:.2f}" if (discount or index % 2 == 0) else None,
            "taxType": "GST" if rate else "GST_FREE",
            "taxRate": int(rate),
        }
        return row, ex_tax, tax

    def _references(self, invoice: SandboxInvoice, number: int) -> list[str] | None:
        policy = invoice.policy_number
        shape = number % 10
        if invoice.defect == "unregistered_policy":
            # The unknown policy must stay visible: always under a policy label.
            if shape in (MEDICARE_ONLY, MEDICARE_BESIDE_POLICY):
                return [f"Medicare: {medicare_number(number)}", f"Policy: {policy}"]
            return [f"Policy: {policy}"]
        if number % 13 == 0:
            return None if number % 26 == 0 else []
        if shape == MEDICARE_ONLY:
            return [f"Medicare: {medicare_number(number)}"]
        if shape == MEDICARE_BESIDE_POLICY:
            return [f"Medicare: {medicare_number(number)}", f"Policy: {policy}"]
        if shape == DVA_BESIDE_INSURANCE:
            return [f"DVA: QX{number:06d}", f"Insurance: {policy}"]
        return [f"Policy: {policy}"]

    def invoice_body(self, invoice: SandboxInvoice) -> dict[str, Any]:
        number = self.number(invoice)
        tax_status = self._tax_status(number)
        rows: list[dict[str, Any]] = []
        subtotal = tax = Decimal("0.00")
        for index, item in enumerate(invoice.items):
            row, ex_tax, item_tax = self._render_item(invoice, number, index, item, tax_status)
            rows.append(row)
            subtotal += ex_tax
            tax += item_tax
        total = invoice.total
        if invoice.defect == "no_items":
            rows = []
        elif invoice.defect == "three_decimal_amount":
            total += _HALF_CENT
        elif invoice.defect == "invoice_total_mismatch":
            total += _FIVE
        status = STATUS_WORDS[invoice.status]
        paid = Decimal("0.00")
        if invoice.status == "paid":
            paid = invoice.total
        elif invoice.status == "unpaid" and number % 4 == 0:
            paid = _cents(invoice.total / 2)
        if invoice.defect == "unknown_status":
            status = "Written Off"
        form = number % 3
        # Some issue times are late in the UTC day (the next morning in Australia): Splose
        # writes UTC, and the canonical invoice date is the UTC date, as in the truth.
        midnight = datetime.combine(invoice.invoice_date, datetime.min.time(), tzinfo=UTC)
        issued = midnight + timedelta(hours=22 if number % 2 else 9)
        issue_date = _timestamp(issued, form)
        if invoice.defect == "bad_date":
            issue_date = invoice.invoice_date.strftime("%d/%m/%Y")
        created = min(issued, invoice.updated_at)
        return {
            "id": number,
            "invoiceNumber": None if invoice.defect == "missing_invoice_number" else invoice.number,
            "issueDate": issue_date,
            "dueDate": _timestamp(issued + timedelta(days=14), form),
            "patientId": int(self.vendor_patient_ref(invoice)),
            "locationId": FACILITIES.index(invoice.facility) + 1,
            "practitionerId": number % 7 + 1 if number % 5 else None,
            "extraBillingInfo": None,
            "subtotal": money(subtotal),
            "taxStatus": tax_status,
            "tax": money(tax),
            "total": money(total),
            "paidAmount": money(paid),
            "status": status,
            "invoiceItems": rows,
            "paymentIds": [number * 10] if paid else [],
            "referenceNumbers": self._references(invoice, number),
            "isArchived": invoice.id in self.archived,
            "reference": None,
            "description": None,
            "createdAt": _timestamp(created, form),
            "updatedAt": _timestamp(invoice.updated_at, 1 + number % 2),
        }

    # -- handlers --

    def _link(self, query: dict[str, str], **changes: str | None) -> str:
        params = {**query, **changes}
        kept = {k: v for k, v in params.items() if v is not None}
        return "/v1/invoices" + (f"?{urlencode(kept)}" if kept else "")

    async def list_invoices(self, request: web.Request) -> web.Response:
        if (refused := self._gate(request)) is not None:
            return refused
        query = dict(request.query)
        unknown = sorted(set(query) - QUERY_PARAMETERS)
        if unknown:
            return _bad_request(f"Unknown query parameter(s): {', '.join(unknown)}")
        bounds: dict[str, int] = {}
        for key in ("id_gt", "id_lt"):
            if key in query:
                text = query[key].strip()
                if not text.isdigit():
                    return _bad_request(f"{key} must be a non-negative integer")
                bounds[key] = int(text)
        moments: dict[str, datetime] = {}
        for key in ("update_gt", "update_lt"):
            if key in query:
                parsed = parse_iso_datetime(query[key])
                if parsed is None:
                    return _bad_request(f"{key} must be an ISO 8601 date or datetime")
                moments[key] = parsed
        archived_text = query.get("include_archived", "false").lower()
        if archived_text not in ("true", "false"):
            return _bad_request("include_archived must be true or false")
        include_archived = archived_text == "true"
        after, before = moments.get("update_gt"), moments.get("update_lt")

        def keep(invoice: SandboxInvoice) -> bool:
            if not include_archived and invoice.id in self.archived:
                return False
            if after is not None and invoice.updated_at <= after:
                return False
            return before is None or invoice.updated_at < before

        filtered = after is not None or before is not None or bool(self.archived)
        view_key = (after, before, include_archived, frozenset(self.archived))
        with self.dataset.lock:
            matches = self.view(view_key, keep if filtered else None)
            low = bisect_right(matches, bounds.get("id_gt", 0), key=self.number)
            high = (
                bisect_left(matches, bounds["id_lt"], key=self.number)
                if "id_lt" in bounds
                else len(matches)
            )
            start = max(low, high - self.page_size)
            page = matches[start:high][::-1]
            rows = [self.invoice_body(inv) for inv in page]
        next_page = (
            self._link(query, id_lt=str(self.number(page[-1]))) if page and start > low else None
        )
        previous_page = (
            self._link(query, id_lt=None, id_gt=str(self.number(page[0])))
            if page and "id_lt" in query
            else None
        )
        return json_response(
            {"data": rows, "links": {"previousPage": previous_page, "nextPage": next_page}}
        )

    async def get_invoice(self, request: web.Request) -> web.Response:
        if (refused := self._gate(request)) is not None:
            return refused
        text = request.match_info["invoice_id"]
        if not text.isdigit() or int(text) < 1:
            return _bad_request("id must be a positive integer")
        truth_id = f"{self.dataset.id_prefix}{int(text):0{self.dataset.id_width}d}"
        with self.dataset.lock:
            invoice = self.dataset.get(truth_id)
            body = None if invoice is None else self.invoice_body(invoice)
        if body is None:
            return _error(404, "Not Found", "Invoice not found")
        return json_response(body)

    def _unlinked_patient(self, number: int) -> str | None:
        """The name of the own patient of an `unregistered_policy` invoice, if there is one."""
        truth_id = f"{self.dataset.id_prefix}{number:0{self.dataset.id_width}d}"
        with self.dataset.lock:
            invoice = self.dataset.get(truth_id)
        if invoice is None or invoice.defect != "unregistered_policy":
            return None
        return invoice.patient_name

    async def get_patient(self, request: web.Request) -> web.Response:
        if (refused := self._gate(request)) is not None:
            return refused
        text = request.match_info["patient_id"]
        if not text.isdigit() or int(text) < 1:
            return _bad_request("id must be a positive integer")
        wanted = int(text)
        name = self._patients.get(wanted)
        if name is None and wanted > UNLINKED_PATIENT_BASE:
            name = self._unlinked_patient(wanted - UNLINKED_PATIENT_BASE)
        if name is None:
            return _error(404, "Not Found", "Patient not found")
        first, _, last = name.partition(" ")
        return json_response({"id": wanted, "firstName": first, "lastName": last})
