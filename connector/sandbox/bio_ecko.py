"""Sandbox dialect for the Bio Ecko Billing API: OAuth2 client credentials, paged invoice
summaries, and a detail call per invoice with GST-taxed, discounted line items in decimal INR.

The vendor documents fields in prose only; the JSON keys, the `{"data", "meta"}` envelope and
the `{"error": {"code", "message"}}` error body served here are the sandbox's reading of it.
"""

from __future__ import annotations

import secrets
import threading
import time
import zlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from datetime import date, timedelta, timezone
from decimal import Decimal
from typing import Any, ClassVar

from aiohttp import web

from ._dataset import (
    FACILITIES,
    UNCATEGORISABLE_DESCRIPTION,
    Dataset,
    SandboxInvoice,
    SandboxItem,
    fee_wording,
    item_total,
)
from ._dialect import Dialect, json_response, money, parse_int, parse_iso_date
from ._webhooks import WebhookSender

CLIENT_ID = "sandbox-bio-ecko-client"
REQUIRED_SCOPE = "billing:read"
# What the sandbox client may be granted; an empty scope request gets all of them.
CLIENT_SCOPES: tuple[str, ...] = ("billing:read", "appointments:read", "patients:read")
STATUS_WORDS: tuple[str, ...] = ("draft", "finalized", "paid", "partially_paid", "cancelled")
IST = timezone(timedelta(hours=5, minutes=30), "IST")

# The department Bio Ecko files each truth category under; a rules engine maps them back.
DEPARTMENTS: dict[str, str] = {
    "consultation": "General Medicine",
    "laboratory": "Pathology",
    "radiology": "Radiology",
    "pharmacy": "Pharmacy",
    "emergency": "Emergency",
    "surgery": "Surgery",
    "dental": "Dental",
    "physiotherapy": "Physiotherapy",
    "obstetrics": "Obstetrics & Gynaecology",
    "optical": "Ophthalmology",
}
# Fee lines (`non_clinical_line`) as an Indian hospital bills them: the desk that raises the
# charge and the service names it uses. None of these departments is a clinical one.
BIO_ECKO_FEES: dict[str, tuple[str, tuple[str, ...]]] = {
    "cancellation": ("Front Office", ("Appointment Cancellation Charges", "Cancellation Charges")),
    "missed_appointment": ("Front Office", ("No Show Charges", "Missed Appointment Charges")),
    "surcharge": ("Accounts", ("Card Payment Surcharge", "Convenience Fee")),
    "gift_voucher": ("Accounts", ("Gift Voucher", "Health Check Gift Voucher")),
    "admin": ("Front Office", ("Administrative Charges", "Medical Records Copy Charges")),
    "report_writing": ("Medical Records", ("Medical Report Charges", "Medical Certificate Fee")),
}
BRANCH_IDS: dict[str, str] = {name: f"BR-{i + 1:02d}" for i, name in enumerate(FACILITIES)}
_PAYMENT_MODES = ("cash", "card", "upi", "neft", "cheque", "online", "insurance")

# Line plans, by a stable hash of (invoice id, line index) in 0..99: below _TAXED the line
# carries 18 % GST, below _DISCOUNTED_AND_TAXED it also has a discount, below _DISCOUNTED
# (and not taxed) it has a discount only; the rest are plain exempt lines.
_DISCOUNTED_AND_TAXED = 10
_TAXED = 35
_DISCOUNTED = 45
GST_RATE_PERCENT = 18


def _cents(value: Decimal) -> int:
    return int((value * 100).to_integral_value())


def _amount(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


def _stable(*parts: str) -> int:
    return zlib.crc32(":".join(parts).encode())


def _gst(taxable: int, inter_state: bool) -> tuple[int, int, int]:
    """(cgst, sgst, igst) in cents on a taxable value: intra-state supplies split 18 % into
    CGST 9 % + SGST 9 % (each rounded half up), inter-state supplies pay IGST 18 %."""
    if inter_state:
        return 0, 0, (taxable * 18 + 50) // 100
    half = (taxable * 9 + 50) // 100
    return half, half, 0


def _taxable_value(total: int, inter_state: bool) -> int | None:
    """The taxable value whose value + GST is exactly `total` cents, or None if rounding makes
    that total unreachable (the line is then billed as exempt)."""
    guess = total * 100 // 118
    for taxable in range(max(1, guess - 3), guess + 4):
        if taxable + sum(_gst(taxable, inter_state)) == total:
            return taxable
    return None


@dataclass(frozen=True, slots=True)
class RenderedLine:
    """One Bio Ecko line in cents; `amount` equals the truth item total unless a defect says
    otherwise."""

    service_name: str
    department: str
    quantity: Decimal
    rate: int
    discount: int
    cgst: int
    sgst: int
    igst: int
    amount: int

    @property
    def tax(self) -> int:
        return self.cgst + self.sgst + self.igst

    def as_json(self) -> dict[str, Any]:
        return {
            "service_name": self.service_name,
            "department": self.department,
            "quantity": money(self.quantity),
            "rate": money(_amount(self.rate)),
            "discount": money(_amount(self.discount)),
            "tax_rate": GST_RATE_PERCENT if self.tax else 0,
            "tax": money(_amount(self.tax)),
            "amount": money(_amount(self.amount)),
        }


def render_line(invoice_id: str, index: int, item: SandboxItem, inter_state: bool) -> RenderedLine:
    """A truth item as a Bio Ecko line whose amount (after discount, with GST on top) is the
    truth item total to the cent.

    Plain lines keep the truth quantity and unit price. Adjusted lines start from the total,
    find the taxable value for it, then choose a discount and a per-unit rate so that
    quantity × rate - discount is that taxable value (the discount absorbs the cents a rate
    could not divide evenly).
    """
    total = _cents(item_total(item))
    quantity = item.quantity
    plan = _stable(invoice_id, str(index)) % 100
    if item.fee is not None:
        department, wordings = BIO_ECKO_FEES[item.fee]
        name = fee_wording(wordings, invoice_id)
    else:
        department, name = DEPARTMENTS[item.category], item.description
    taxable: int | None = total
    if plan < _TAXED:
        taxable = _taxable_value(total, inter_state)
    taxed = plan < _TAXED and taxable is not None
    if taxable is None:
        taxable = total
    discounted = plan < _DISCOUNTED_AND_TAXED or (_TAXED <= plan < _DISCOUNTED)
    if not taxed and not discounted:
        return RenderedLine(name, department, quantity, _cents(item.unit_price), 0, 0, 0, 0, total)
    # About a tenth of the gross price, in whole rupees.
    discount = (taxable // 9) // 100 * 100 if discounted else 0
    units = int(quantity)
    if units != quantity or units < 1:  # a fractional quantity: bill it as one unit instead
        units, quantity = 1, Decimal(1)
    discount += (-(taxable + discount)) % units
    rate = (taxable + discount) // units
    cgst, sgst, igst = _gst(taxable, inter_state) if taxed else (0, 0, 0)
    return RenderedLine(name, department, quantity, rate, discount, cgst, sgst, igst, total)


def is_inter_state(invoice: SandboxInvoice) -> bool:
    """One invoice in five is billed to a patient from another state (IGST instead of CGST+SGST)."""
    return _stable(invoice.id, "supply") % 5 == 0


def bio_ecko_status(invoice: SandboxInvoice) -> str:
    """Bio Ecko's word for the truth status; a third of unpaid invoices are part-paid."""
    if invoice.defect == "unknown_status":
        return "refunded"
    if invoice.status == "unpaid":
        return "partially_paid" if _stable(invoice.id, "part") % 3 == 0 else "finalized"
    return {"paid": "paid", "pending": "draft", "void": "cancelled"}[invoice.status]


@dataclass(frozen=True, slots=True)
class RenderedInvoice:
    lines: list[RenderedLine]
    grand_total: int
    payments: list[dict[str, Any]]
    paid: int
    status: str
    inter_state: bool

    @property
    def balance(self) -> int:
        return self.grand_total - self.paid


def _payments(invoice: SandboxInvoice, status: str, total: int) -> list[tuple[int, str, date]]:
    """(amount, mode, date) of the payments received: paid invoices in full (sometimes in two
    instalments), part-paid ones about 40 %, in whole rupees."""
    key = _stable(invoice.id, "pay")
    mode = _PAYMENT_MODES[key % len(_PAYMENT_MODES)]
    day = invoice.invoice_date
    if status == "paid":
        if key % 4 == 0 and total >= 200:
            first = total * 6 // 10 // 100 * 100
            later = day + timedelta(days=1 + key % 9)
            return [
                (first, mode, day),
                (total - first, _PAYMENT_MODES[(key >> 3) % len(_PAYMENT_MODES)], later),
            ]
        return [(total, mode, day)]
    if status == "partially_paid":
        part = max(100, total * 4 // 10 // 100 * 100)
        return [(min(part, total - 1), mode, day)] if total > 1 else []
    return []


def render_invoice(invoice: SandboxInvoice) -> RenderedInvoice:
    """The vendor's view of one truth invoice, with its defect applied."""
    defect = invoice.defect
    inter_state = is_inter_state(invoice)
    lines = [
        render_line(invoice.id, index, item, inter_state)
        for index, item in enumerate(invoice.items)
    ]
    if lines and defect == "unknown_category":
        lines[0] = replace(
            lines[0], department="Miscellaneous", service_name=UNCATEGORISABLE_DESCRIPTION
        )
    elif lines and defect == "item_total_mismatch":
        # The line claims 10 rupees more than its parts; the invoice sums the lines as stated.
        lines[0] = replace(lines[0], amount=lines[0].amount + 1000)
    if defect == "no_items":
        lines = []
    grand_total = sum(line.amount for line in lines) if lines else _cents(invoice.total)
    if defect == "invoice_total_mismatch":
        grand_total += 500
    status = bio_ecko_status(invoice)
    received = _payments(invoice, status, _cents(invoice.total))
    payments = []
    for number, (amount, mode, day) in enumerate(received, 1):
        payments.append(
            {
                "id": f"PAY-{invoice.id}-{number}",
                "amount": money(_amount(amount)),
                "payment_mode": mode,
                "reference": f"{mode.upper()}-TXN-{_stable(invoice.id, str(number)) % 1000000:06d}",
                "payment_date": day.isoformat(),
            }
        )
    paid = sum(amount for amount, _, _ in received)
    return RenderedInvoice(lines, grand_total, payments, paid, status, inter_state)


def _money_text(cents: int, defect: str | None) -> Any:
    """A header amount; the three-decimal defect adds half a paisa to it."""
    if defect == "three_decimal_amount":
        return money(_amount(cents) + Decimal("0.005"))
    return money(_amount(cents))


def rendered_date(invoice: SandboxInvoice) -> str:
    # Indian day-first dates are what a hand-edited record would carry.
    if invoice.defect == "bad_date":
        return invoice.invoice_date.strftime("%d-%m-%Y")
    return invoice.invoice_date.isoformat()


def error_response(status: int, code: str, message: str, **headers: str) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status, headers or None)


def _invalid(message: str) -> web.Response:
    return error_response(400, "invalid_parameter", message)


@dataclass(frozen=True, slots=True)
class _Grant:
    expires_at: float
    scopes: frozenset[str]


class BioEckoDialect(Dialect):
    """Bio Ecko Billing API v1 with an OAuth2 token endpoint.

    `token` is the client secret. Tokens live `token_lifetime_s` (3600 s, as documented);
    `bare_array = True` serves the list as a plain JSON array (the doc's literal "Array of
    invoice summaries") instead of the `{"data", "meta"}` envelope.
    """

    name: ClassVar[str] = "bio_ecko"
    api_root: ClassVar[str] = "/api/v1/"
    default_token: ClassVar[str] = "sandbox-bio-ecko-secret"
    supported_defects: ClassVar[tuple[str, ...]] = (
        "unknown_category",
        "item_total_mismatch",
        "no_items",
        "three_decimal_amount",
        "missing_invoice_number",
        "bad_date",
        "unknown_status",
        "invoice_total_mismatch",
        "unregistered_policy",
        "non_clinical_line",
    )
    # A policy unknown to the registry only shows with a registry check, as for MediTrak.
    default_defects: ClassVar[tuple[str, ...]] = tuple(
        kind for kind in supported_defects if kind != "unregistered_policy"
    )
    currency: ClassVar[str] = "INR"
    id_prefix: ClassVar[str] = "BEI-"

    default_per_page: ClassVar[int] = 20
    max_per_page: ClassVar[int] = 100

    def __init__(self, dataset: Dataset, token: str) -> None:
        super().__init__(dataset, token)
        self.client_id = CLIENT_ID
        self.token_lifetime_s: float = 3600
        self.bare_array = False
        self._grants: dict[str, _Grant] = {}
        self._grants_lock = threading.Lock()
        # Signed webhooks to a subscriber (`/_sandbox/webhooks`, see `._webhooks`); the event
        # data is the invoice's summary row, patient name included, as a vendor would send.
        self.webhooks = WebhookSender(
            dataset, lambda inv: {"invoice_id": inv.id, **self.summary(inv)}, bio_ecko_status
        )

    # -- hooks --

    def credentials(self) -> dict[str, str]:
        return {"client_id": self.client_id, "client_secret": self.token}

    def vendor_patient_ref(self, invoice: SandboxInvoice) -> str:
        # An unregistered policy belongs to a patient record of its own, never linked: the
        # patient's registered link would rightly win over it (docs/sources.md).
        if invoice.defect == "unregistered_policy":
            return f"{invoice.patient_ref}-{invoice.id}"
        return invoice.patient_ref

    def expire_tokens(self) -> None:
        with self._grants_lock:
            self._grants.clear()

    def issued_tokens(self) -> int:
        with self._grants_lock:
            return len(self._grants)

    def unauthorized(self) -> web.Response:
        return error_response(
            401,
            "unauthorized",
            "Missing or invalid access token",
            **{"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )

    def fault_response(self, status: int, retry_after_s: int) -> web.Response:
        if status == 429:
            return error_response(
                429,
                "rate_limited",
                "Too many requests, slow down",
                **{"Retry-After": str(retry_after_s)},
            )
        return error_response(status, "service_unavailable", "Billing service is unavailable")

    def add_routes(self, app: web.Application) -> None:
        root = "/api/v1"
        app.router.add_post(f"{root}/auth/token", self.issue_token)
        app.router.add_get(f"{root}/billing/invoices", self.list_invoices)
        app.router.add_get(f"{root}/billing/invoices/{{invoice_id}}", self.get_invoice)
        app.router.add_get(f"{root}/billing/summary", self.summary_report)
        self.webhooks.add_routes(app)

    # -- auth --

    async def issue_token(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return error_response(
                400, "invalid_request", "Token requests must be form-encoded (RFC 6749)"
            )
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return error_response(
                400, "unsupported_grant_type", "Only grant_type=client_credentials is supported"
            )
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if not (
            isinstance(client_id, str)
            and isinstance(client_secret, str)
            and secrets.compare_digest(client_id, self.client_id)
            and secrets.compare_digest(client_secret, self.token)
        ):
            return error_response(401, "invalid_client", "Client authentication failed")
        asked = form.get("scope")
        requested = set(asked.split()) if isinstance(asked, str) else set()
        granted = frozenset(requested & set(CLIENT_SCOPES) if requested else CLIENT_SCOPES)
        if not granted:
            return error_response(
                400, "invalid_scope", f"None of the requested scopes are allowed: {asked!s}"
            )
        access_token = secrets.token_urlsafe(24)
        lifetime = self.token_lifetime_s
        with self._grants_lock:
            now = time.monotonic()
            # Forget dead grants so that a long benchmark does not grow the table forever.
            self._grants = {t: g for t, g in self._grants.items() if g.expires_at > now}
            self._grants[access_token] = _Grant(now + lifetime, granted)
        return json_response(
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": int(lifetime) if lifetime == int(lifetime) else lifetime,
                "scope": " ".join(s for s in CLIENT_SCOPES if s in granted),
            }
        )

    def _authorize(self, request: web.Request) -> web.Response | None:
        """None when the request carries a live token with billing:read, else the refusal."""
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return self.unauthorized()
        with self._grants_lock:
            grant = self._grants.get(value.strip())
        if grant is None:
            return self.unauthorized()
        if time.monotonic() >= grant.expires_at:
            return error_response(
                401,
                "token_expired",
                "Access token has expired",
                **{"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if REQUIRED_SCOPE not in grant.scopes:
            return error_response(
                403, "insufficient_scope", f"This endpoint requires the {REQUIRED_SCOPE} scope"
            )
        return None

    # -- rendering --

    def summary(self, invoice: SandboxInvoice) -> dict[str, Any]:
        view = render_invoice(invoice)
        row: dict[str, Any] = {"id": invoice.id}
        if invoice.defect != "missing_invoice_number":
            row["invoice_number"] = invoice.number
        row.update(
            {
                "patient_name": invoice.patient_name,
                "total": _money_text(view.grand_total, invoice.defect),
                "paid": money(_amount(view.paid)),
                "balance": _money_text(view.balance, invoice.defect),
                "status": view.status,
                "date": rendered_date(invoice),
            }
        )
        return row

    def detail(self, invoice: SandboxInvoice) -> dict[str, Any]:
        view = render_invoice(invoice)
        defect = invoice.defect
        sub_total = sum(_cents(line.quantity * _amount(line.rate)) for line in view.lines)
        record: dict[str, Any] = {"id": invoice.id}
        if defect != "missing_invoice_number":
            record["invoice_number"] = invoice.number
        record.update(
            {
                "date": rendered_date(invoice),
                "status": view.status,
                "supply_type": "inter_state" if view.inter_state else "intra_state",
                "patient": {
                    "id": self.vendor_patient_ref(invoice),
                    "name": invoice.patient_name,
                    "insurance": {
                        "provider": "Star Health",
                        "policy_number": invoice.policy_number,
                    },
                },
                "branch": {"id": BRANCH_IDS[invoice.facility], "name": invoice.facility},
                "line_items": [line.as_json() for line in view.lines],
                "totals": {
                    "sub_total": money(_amount(sub_total)),
                    "discount": money(_amount(sum(line.discount for line in view.lines))),
                    "tax": {
                        "cgst": money(_amount(sum(line.cgst for line in view.lines))),
                        "sgst": money(_amount(sum(line.sgst for line in view.lines))),
                        "igst": money(_amount(sum(line.igst for line in view.lines))),
                    },
                    "grand_total": _money_text(view.grand_total, defect),
                },
                "payments": view.payments,
                "balance": _money_text(view.balance, defect),
                "updated_at": invoice.updated_at.astimezone(IST).isoformat(),
            }
        )
        return record

    # -- filters --

    def _filters(
        self, query: dict[str, str]
    ) -> tuple[Hashable, Callable[[SandboxInvoice], bool] | None] | web.Response:
        status = query.get("status")
        if status is not None and status not in STATUS_WORDS:
            return _invalid(f"status must be one of: {', '.join(STATUS_WORDS)}")
        bounds: list[date | None] = []
        for key in ("date_from", "date_to"):
            text = query.get(key)
            parsed = parse_iso_date(text) if text is not None else None
            if text is not None and parsed is None:
                return _invalid(f"{key} must be a date in YYYY-MM-DD format")
            bounds.append(parsed)
        date_from, date_to = bounds
        branch_id = query.get("branch_id")
        patient_id = query.get("patient_id")
        if all(v is None for v in (status, date_from, date_to, branch_id, patient_id)):
            return None, None

        def keep(invoice: SandboxInvoice) -> bool:
            if status is not None and bio_ecko_status(invoice) != status:
                return False
            if date_from is not None and invoice.invoice_date < date_from:
                return False
            if date_to is not None and invoice.invoice_date > date_to:
                return False
            if branch_id is not None and BRANCH_IDS[invoice.facility] != branch_id:
                return False
            return patient_id is None or self.vendor_patient_ref(invoice) == patient_id

        return ("list", status, date_from, date_to, branch_id, patient_id), keep

    # -- handlers --

    async def list_invoices(self, request: web.Request) -> web.Response:
        refusal = self._authorize(request)
        if refusal is not None:
            return refusal
        query = dict(request.query)
        page = parse_int(query.get("page"), 1)
        if page is None or page < 1:
            return _invalid("page must be a positive integer")
        per_page = parse_int(query.get("per_page"), self.default_per_page)
        if per_page is None or not 1 <= per_page <= self.max_per_page:
            return _invalid(f"per_page must be an integer between 1 and {self.max_per_page}")
        filters = self._filters(query)
        if isinstance(filters, web.Response):
            return filters
        start = (page - 1) * per_page
        with self.dataset.lock:
            matches = self.view(*filters)
            rows = [self.summary(inv) for inv in matches[start : start + per_page]]
            total = len(matches)
        if self.bare_array:
            return json_response(rows)
        return json_response(
            {"data": rows, "meta": {"page": page, "per_page": per_page, "total": total}}
        )

    async def get_invoice(self, request: web.Request) -> web.Response:
        refusal = self._authorize(request)
        if refusal is not None:
            return refusal
        with self.dataset.lock:
            invoice = self.dataset.get(request.match_info["invoice_id"])
            body = None if invoice is None else {"data": self.detail(invoice)}
        if body is None:
            return error_response(404, "not_found", "Invoice not found")
        return json_response(body)

    async def summary_report(self, request: web.Request) -> web.Response:
        """GET billing/summary: billed, collected and outstanding totals for a date window."""
        refusal = self._authorize(request)
        if refusal is not None:
            return refusal
        query = {k: v for k, v in request.query.items() if k in ("date_from", "date_to")}
        if "branch_id" in request.query:
            query["branch_id"] = request.query["branch_id"]
        filters = self._filters(query)
        if isinstance(filters, web.Response):
            return filters
        billed = collected = 0
        by_mode: dict[str, int] = {}
        by_department: dict[str, int] = {}
        with self.dataset.lock:
            for invoice in self.view(*filters):
                view = render_invoice(invoice)
                if view.status in ("draft", "cancelled"):
                    continue
                billed += view.grand_total
                for amount, mode, _ in _payments(invoice, view.status, _cents(invoice.total)):
                    collected += amount
                    by_mode[mode] = by_mode.get(mode, 0) + amount
                for line in view.lines:
                    by_department[line.department] = (
                        by_department.get(line.department, 0) + line.amount
                    )
        return json_response(
            {
                "total_billed": money(_amount(billed)),
                "total_collected": money(_amount(collected)),
                "total_outstanding": money(_amount(billed - collected)),
                "collection_by_mode": {k: money(_amount(v)) for k, v in sorted(by_mode.items())},
                "revenue_by_department": {
                    k: money(_amount(v)) for k, v in sorted(by_department.items())
                },
            }
        )
