"""Sandbox dialect for the FastAPI-style "Invoice API": OAuth2 password login, `GET /invoice/`
with offset/limit and a `{total, offset, limit, data}` envelope, UUID ids, naive datetimes and
FastAPI error bodies (`{"detail": "..."}` or a 422 list of `{loc, msg, type}`).

The vendor does not document line items or patients; the sandbox's choices are items
`{id, name, description, quantity, unit_price, discount_amount, total, category}` and
`GET /patient/{id}` answering `{id, first_name, last_name, insurance_policy_number}`.

How the truth is rendered so that the vendor's arithmetic holds and still nets to the truth total
to the cent (chosen per invoice from a CRC of its truth id, so every render agrees):
- plain lines: the truth quantity and unit price, `discount_amount` 0, `total` = q x price;
- line discounts: a list price above the truth price and `discount_amount` = q x the markup, so
  the line's `total` is the truth line total;
- an invoice-level discount (10 % or a fixed 5.00): lines are marked up by the discount split
  in proportion to the truth line totals, `subtotal` = truth total + discount and
  `total_amount` = `subtotal` - `discount_amount` = the truth total. The connector allocates
  the discount back over the lines, so its lines may differ from the truth lines by a cent
  while the invoice total agrees exactly.
`paid_amount` is the total for PAID, half of it (rounded down) for PARTIALY_PAID, else 0.
"""

from __future__ import annotations

import threading
import uuid
import zlib
from collections.abc import Callable, Hashable
from datetime import UTC, datetime, time, timedelta
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Any, ClassVar

import orjson
from aiohttp import web

from ._dataset import (
    EXPECTED_REASON,
    UNCATEGORISABLE_DESCRIPTION,
    Dataset,
    SandboxInvoice,
    fee_wording,
    item_total,
)
from ._dialect import Dialect, ListShape, json_response, money, parse_int

# The department / item-type word the vendor shows for each truth category. Several are not
# MediTrak category names on purpose: those need the category rules to be mapped.
CATEGORY_WORDS: dict[str, str] = {
    "consultation": "CONSULTATION",
    "laboratory": "LAB",
    "radiology": "IMAGING",
    "pharmacy": "MEDICATION",
    "emergency": "EMERGENCY",
    "surgery": "PROCEDURE",
    "dental": "DENTAL",
    "physiotherapy": "PHYSIO",
    "obstetrics": "MATERNITY",
    "optical": "OPTICAL",
}
UNKNOWN_CATEGORY_WORD = "MISC"
# Fee lines (`non_clinical_line`): the vendor's category word for the charge (none of the ten,
# and in no source map) and the names clinics give it.
INVOICE_API_FEES: dict[str, tuple[str, tuple[str, ...]]] = {
    "cancellation": ("FEE", ("Late cancellation fee", "Cancellation fee (less than 24h notice)")),
    "missed_appointment": ("FEE", ("No-show fee", "Missed appointment")),
    "surcharge": ("SURCHARGE", ("Card processing surcharge", "Weekend surcharge")),
    "gift_voucher": ("VOUCHER", ("Gift voucher", "Gift card")),
    "admin": ("ADMIN", ("Administration fee", "Paperwork fee")),
    "report_writing": ("ADMIN", ("Medical report writing", "Insurance report")),
}
UNKNOWN_STATUS_WORD = "REFUNDED"
STATUS_WORDS: tuple[str, ...] = ("DRAFT", "ISSUED", "PARTIALY_PAID", "PAID", "VOID", "WRITTEN_OFF")
ORDER_FIELDS: tuple[str, ...] = ("created_at", "issue_date", "updated_at", "reg_number")
USERNAME = "sandbox-clinic"

_CENT = Decimal("0.01")
_TEN = Decimal("10.00")
_FIVE = Decimal("5.00")
_HALF_CENT = Decimal("0.005")
_PERCENT = Decimal(10)
_FIXED_DISCOUNT = Decimal("5.00")
_NAMESPACE = uuid.UUID("6f1d3c52-8c1e-4d0b-9a4e-2f7b5b1c9e10")
_VIEW_CACHE_SIZE = 32
_MAX_LIMIT = 1000


def sandbox_uuid(kind: str, key: str) -> str:
    """A stable UUID for a truth key, so ids survive restarts with the same seed."""
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{key}"))


def _crc(invoice: SandboxInvoice) -> int:
    return zlib.crc32(invoice.id.encode())


def _cents(value: Decimal) -> Decimal:
    return value.quantize(_CENT, rounding=ROUND_HALF_UP)


def _naive(moment: datetime) -> str:
    """FastAPI/SQLAlchemy style: a naive UTC timestamp with microseconds."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def created_at(invoice: SandboxInvoice, id_prefix: str) -> datetime:
    """Creation time: office hours on the invoice date, the id number as microseconds, so that
    creation order is id order (the truth numbers invoices in date order)."""
    digits = invoice.id.removeprefix(id_prefix)
    number = int(digits) if digits.isdigit() else 0
    start = datetime.combine(invoice.invoice_date, time(8), tzinfo=UTC)
    return start + timedelta(microseconds=number % 1_000_000)


def _split(amount: Decimal, weights: list[Decimal]) -> list[Decimal]:
    """`amount` in proportion to `weights`, rounded per share, the remainder on the last."""
    whole = sum(weights, Decimal(0))
    shares = [_cents(amount * w / whole) for w in weights[:-1]]
    return [*shares, amount - sum(shares, Decimal(0))]


def _subtotal_for_percent(total: Decimal, percent: Decimal) -> Decimal:
    """The subtotal S with S - round(S x percent) == total: S minus its rounded discount never
    drops as S grows by a cent and moves by at most one cent, so a search hits every total."""
    guess = (total / (1 - percent / 100)).quantize(_CENT, rounding=ROUND_DOWN)
    candidate = guess - Decimal("0.05")
    while candidate - _cents(candidate * percent / 100) < total:
        candidate += _CENT
    return candidate


class _Lines:
    """The vendor's rendering of one invoice's lines and invoice-level discount."""

    def __init__(self, invoice: SandboxInvoice) -> None:
        self.rows: list[dict[str, Any]] = []
        self.discount_amount = Decimal("0.00")
        self.discount_percent = Decimal(0)
        truth = [item_total(item) for item in invoice.items]
        variant = _crc(invoice) % 10
        markups = [Decimal("0.00")] * len(truth)
        if truth and variant >= 8:
            target = invoice.total
            if variant == 8 or target < 2 * _FIXED_DISCOUNT:
                self.discount_percent = _PERCENT
                self.discount_amount = _subtotal_for_percent(target, _PERCENT) - target
            else:
                self.discount_amount = _FIXED_DISCOUNT
            markups = _split(self.discount_amount, truth)
        for index, item in enumerate(invoice.items):
            quantity, price = item.quantity, item.unit_price
            line_discount = Decimal("0.00")
            line_total = truth[index] + markups[index]
            if markups[index]:
                # A list price per unit that covers the marked-up line; the odd cents left over
                # become a small line discount so that the vendor's arithmetic stays exact.
                price = (line_total / quantity).quantize(_CENT, rounding=ROUND_CEILING)
                line_discount = _cents(quantity * price) - line_total
            elif variant in (6, 7) and index % 2 == 0:
                markup = max(_CENT, _cents(price / 10))
                price += markup
                line_discount = _cents(quantity * markup)
            if item.fee is not None:
                category, wordings = INVOICE_API_FEES[item.fee]
                name = fee_wording(wordings, invoice.id)
            else:
                category, name = CATEGORY_WORDS[item.category], item.description
            if index == 0 and invoice.defect == "unknown_category":
                category = UNKNOWN_CATEGORY_WORD
                name = UNCATEGORISABLE_DESCRIPTION
            if index == 0 and invoice.defect == "item_total_mismatch":
                line_total += _TEN
            self.rows.append(
                {
                    "id": sandbox_uuid("item", f"{invoice.id}:{index}"),
                    "name": name,
                    "description": None,
                    "category": category,
                    "quantity": money(quantity),
                    "unit_price": money(price),
                    "discount_amount": money(line_discount),
                    "total": money(line_total),
                }
            )
        # The vendor's subtotal is the sum of its (correct) line totals.
        self.subtotal = sum(truth, Decimal("0.00")) + sum(markups, Decimal("0.00"))


def _detail(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"detail": message}, status=status, headers=headers)


def _unprocessable(location: list[str], message: str, kind: str) -> web.Response:
    """FastAPI's request validation error body."""
    return json_response({"detail": [{"loc": location, "msg": message, "type": kind}]}, status=422)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


class InvoiceApiDialect(Dialect):
    """The Invoice API over the shared dataset; `token` is the password of `USERNAME`."""

    name: ClassVar[str] = "invoice_api"
    api_root: ClassVar[str] = "/api/v1/"
    list_shape: ClassVar[ListShape | None] = ListShape(
        "/api/v1/invoice/", "data", "id", "total", style="offset"
    )
    default_token: ClassVar[str] = "sandbox-invoice-api-password"
    supported_defects: ClassVar[tuple[str, ...]] = tuple(EXPECTED_REASON)
    # An unregistered policy is only visible with a policy registry check.
    default_defects: ClassVar[tuple[str, ...]] = tuple(
        kind for kind in EXPECTED_REASON if kind != "unregistered_policy"
    )
    id_prefix: ClassVar[str] = "IAP-"

    def __init__(self, dataset: Dataset, token: str) -> None:
        super().__init__(dataset, token)
        # Tokens are issued on the server loop and expired from test threads.
        self._tokens_lock = threading.Lock()
        self._issued: set[str] = set()
        self._sorted: dict[Hashable, tuple[int, list[SandboxInvoice]]] = {}
        self._patients: tuple[int, dict[str, dict[str, Any]]] = (-1, {})
        self._by_vendor_id: tuple[int, dict[str, SandboxInvoice]] = (-1, {})

    # -- hooks used by the connector configs and the contract tests --

    def credentials(self) -> dict[str, str]:
        return {"username": USERNAME, "password": self.token}

    def connector_source(self, api_url: str) -> dict[str, Any]:
        return {
            "type": self.name,
            "name": self.name,
            "base_url": api_url,
            "token_path": "token",
            **self.credentials(),
        }

    def vendor_id(self, invoice: SandboxInvoice) -> str:
        return sandbox_uuid("invoice", invoice.id)

    def vendor_patient_ref(self, invoice: SandboxInvoice) -> str:
        return self.patient_id(invoice)

    def patient_id(self, invoice: SandboxInvoice) -> str:
        # An invoice with an unregistered policy belongs to its own patient record, because a
        # patient resource carries one policy number.
        if invoice.defect == "unregistered_policy":
            return sandbox_uuid("patient", f"{invoice.patient_ref}:{invoice.id}")
        return sandbox_uuid("patient", invoice.patient_ref)

    def expire_tokens(self) -> None:
        with self._tokens_lock:
            self._issued.clear()

    # -- routing and auth --

    def add_routes(self, app: web.Application) -> None:
        root = self.api_root.rstrip("/")
        app.router.add_post(f"{root}/token", self.issue_token)
        app.router.add_get(f"{root}/invoice/", self.list_invoices)
        # FastAPI's redirect_slashes answers the slash-less spelling with a 307.
        app.router.add_get(f"{root}/invoice", self.add_slash)
        app.router.add_get(f"{root}/invoice/{{invoice_id}}", self.get_invoice)
        app.router.add_get(f"{root}/patient/{{patient_id}}", self.get_patient)

    def unauthorized(self) -> web.Response:
        return _detail(401, "Not authenticated", {"WWW-Authenticate": "Bearer"})

    def fault_response(self, status: int, retry_after_s: int) -> web.Response:
        if status == 429:
            return _detail(429, "Too Many Requests", {"Retry-After": str(retry_after_s)})
        return _detail(status, "Service Unavailable")

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        with self._tokens_lock:
            return scheme.lower() == "bearer" and value.strip() in self._issued

    async def add_slash(self, request: web.Request) -> web.Response:
        location = request.path + "/"
        if request.query_string:
            location += "?" + request.query_string
        raise web.HTTPTemporaryRedirect(location)

    async def issue_token(self, request: web.Request) -> web.Response:
        """OAuth2PasswordRequestForm: form-encoded grant_type=password, username, password."""
        if request.content_type != "application/x-www-form-urlencoded":
            return _unprocessable(["body", "username"], "Field required", "missing")
        form = await request.post()
        missing = [k for k in ("username", "password") if not isinstance(form.get(k), str)]
        if missing:
            return json_response(
                {
                    "detail": [
                        {"loc": ["body", k], "msg": "Field required", "type": "missing"}
                        for k in missing
                    ]
                },
                status=422,
            )
        if form.get("grant_type", "password") != "password":
            return _unprocessable(
                ["body", "grant_type"], "String should match pattern '^password$'", "string"
            )
        if form.get("username") != USERNAME or form.get("password") != self.token:
            return _detail(401, "Incorrect username or password", {"WWW-Authenticate": "Bearer"})
        access = f"iapi-{uuid.uuid4().hex}"
        with self._tokens_lock:
            self._issued.add(access)
        return json_response({"access_token": access, "token_type": "bearer"})

    # -- rendering --

    def render(self, invoice: SandboxInvoice) -> dict[str, Any]:
        lines = _Lines(invoice)
        total = lines.subtotal - lines.discount_amount
        if invoice.defect == "three_decimal_amount":
            total += _HALF_CENT
        elif invoice.defect == "invoice_total_mismatch":
            total += _FIVE
        status = self.status_word(invoice)
        if status == "PAID":
            paid = total
        elif status == "PARTIALY_PAID":
            paid = (total / 2).quantize(_CENT, rounding=ROUND_DOWN)
        else:
            paid = Decimal("0.00")
        created = created_at(invoice, self.id_prefix)
        if invoice.defect == "bad_date":
            issue_date = invoice.invoice_date.strftime("%d/%m/%Y 08:00")
        else:
            issue_date = _naive(created)
        return {
            "issue_date": issue_date,
            "due_date": (created + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "status": status,
            "discount_amount": money(lines.discount_amount),
            "discount_percent": money(lines.discount_percent),
            "paid_amount": money(paid),
            "appointment_id": None,
            "patient_id": self.patient_id(invoice),
            "id": self.vendor_id(invoice),
            "subtotal": money(lines.subtotal),
            "remaining_amount": money(total - paid),
            "total_amount": money(total),
            "reg_number": None if invoice.defect == "missing_invoice_number" else invoice.number,
            "items": [] if invoice.defect == "no_items" else lines.rows,
            "created_at": _naive(created),
            "updated_at": _naive(invoice.updated_at),
        }

    def status_word(self, invoice: SandboxInvoice) -> str:
        if invoice.defect == "unknown_status":
            return UNKNOWN_STATUS_WORD
        crc = _crc(invoice)
        if invoice.status == "paid":
            return "PAID"
        if invoice.status == "unpaid":
            return "PARTIALY_PAID" if crc % 3 == 0 else "ISSUED"
        if invoice.status == "pending":
            return "DRAFT"
        return "WRITTEN_OFF" if crc % 2 else "VOID"

    # -- list, filters and order --

    def _sort_key(self, field: str) -> Callable[[SandboxInvoice], Any]:
        if field in ("created_at", "issue_date"):
            return lambda inv: (created_at(inv, self.id_prefix), inv.id)
        if field == "updated_at":
            return lambda inv: (inv.updated_at, inv.id)
        return lambda inv: (inv.number, inv.id)

    def ordered(self, filters: Hashable, keep: Any, order_by: str) -> list[SandboxInvoice]:
        """The filtered invoices in the requested order; call with `dataset.lock` held.

        Cached per dataset version: offset pages over 100k invoices must not re-sort each time.
        """
        key = (filters, order_by)
        version = self.dataset.version
        cached = self._sorted.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        descending = order_by.startswith("-")
        matches = sorted(
            self.view(filters, keep),
            key=self._sort_key(order_by.lstrip("-")),
            reverse=descending,
        )
        if len(self._sorted) >= _VIEW_CACHE_SIZE:
            self._sorted.clear()
        self._sorted[key] = (version, matches)
        return matches

    async def list_invoices(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self.unauthorized()
        query = request.query
        limit = parse_int(query.get("limit"), 100)
        if limit is None or not 1 <= limit <= _MAX_LIMIT:
            return _unprocessable(
                ["query", "limit"],
                f"Input should be between 1 and {_MAX_LIMIT}",
                "less_than_equal",
            )
        offset = parse_int(query.get("offset"), 0)
        if offset is None or offset < 0:
            return _unprocessable(
                ["query", "offset"], "Input should be greater than or equal to 0", "greater_than"
            )
        order_by = query.get("order_by", "created_at")
        if order_by.lstrip("-") not in ORDER_FIELDS:
            return _unprocessable(
                ["query", "order_by"],
                f"Input should be one of {', '.join(ORDER_FIELDS)} (prefix - for descending)",
                "enum",
            )
        status = query.get("status")
        if status is not None and status not in STATUS_WORDS:
            return _unprocessable(
                ["query", "status"], f"Input should be one of {', '.join(STATUS_WORDS)}", "enum"
            )
        for name in ("patient_id", "appointment_id"):
            if name in query and not _is_uuid(query[name]):
                return _unprocessable(["query", name], "Input should be a valid UUID", "uuid")
        patient = query.get("patient_id")
        search = query.get("search", "").strip().lower() or None
        # No sandbox invoice has tags or an appointment: filtering by one matches nothing.
        nothing = bool(query.getall("tags", [])) or "appointment_id" in query
        keep: Callable[[SandboxInvoice], bool] | None = None
        if status or patient or search or nothing:

            def keep(invoice: SandboxInvoice) -> bool:
                if nothing:
                    return False
                if status is not None and self.status_word(invoice) != status:
                    return False
                if patient is not None and self.patient_id(invoice) != patient:
                    return False
                return search is None or search in invoice.number.lower()

        filters = ("list", status, patient, search, nothing)
        with self.dataset.lock:
            matches = self.ordered(filters, keep, order_by)
            rows = [self.render(inv) for inv in matches[offset : offset + limit]]
            total = len(matches)
        return json_response({"total": total, "offset": offset, "limit": limit, "data": rows})

    async def get_invoice(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self.unauthorized()
        wanted = request.match_info["invoice_id"]
        if not _is_uuid(wanted):
            return _unprocessable(["path", "id"], "Input should be a valid UUID", "uuid_parsing")
        with self.dataset.lock:
            version, index = self._by_vendor_id
            if version != self.dataset.version:
                # Rebuilt per dataset version: a UUID per truth id is too slow to scan for.
                index = {self.vendor_id(inv): inv for inv in self.dataset.invoices}
                self._by_vendor_id = (self.dataset.version, index)
            invoice = index.get(wanted)
            body = None if invoice is None else orjson.dumps(self.render(invoice))
        if body is None:
            return _detail(404, "Invoice not found")
        return web.Response(body=body, content_type="application/json")

    # -- patients --

    def patients(self) -> dict[str, dict[str, Any]]:
        """Patient resources by id; call with `dataset.lock` held."""
        version, known = self._patients
        if version == self.dataset.version:
            return known
        known = {}
        for patient in self.dataset.patients:
            known[sandbox_uuid("patient", patient.ref)] = self._patient(
                patient.ref, patient.name, patient.policy_number
            )
        for invoice in self.dataset.invoices:
            if invoice.defect == "unregistered_policy":
                known[self.patient_id(invoice)] = self._patient(
                    f"{invoice.patient_ref}:{invoice.id}",
                    invoice.patient_name,
                    invoice.policy_number,
                )
        self._patients = (self.dataset.version, known)
        return known

    @staticmethod
    def _patient(ref: str, name: str, policy: str) -> dict[str, Any]:
        first, _, last = name.partition(" ")
        return {
            "id": sandbox_uuid("patient", ref),
            "first_name": first,
            "last_name": last,
            "insurance_policy_number": policy,
        }

    async def get_patient(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self.unauthorized()
        wanted = request.match_info["patient_id"]
        if not _is_uuid(wanted):
            return _unprocessable(["path", "id"], "Input should be a valid UUID", "uuid_parsing")
        with self.dataset.lock:
            patient = self.patients().get(wanted)
        if patient is None:
            return _detail(404, "Patient not found")
        return json_response(patient)
