"""Sandbox dialect for MediTrak's own API v1 (/api/v1/invoices/, Django style, Bearer API key).

It also holds the defect-aware rendering of the MediTrak record shape that `meditrak_import`
reuses.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from datetime import date
from decimal import Decimal
from typing import Any, ClassVar

import orjson
from aiohttp import web

from ._dataset import EXPECTED_REASON, SandboxInvoice, item_total
from ._dialect import Dialect, ListShape, iso_z, json_response, money, parse_int, parse_iso_date

MEDITRAK_DEFECTS: tuple[str, ...] = tuple(EXPECTED_REASON)
MEDITRAK_DEFAULT_DEFECTS: tuple[str, ...] = tuple(
    kind for kind in EXPECTED_REASON if kind != "unregistered_policy"
)

# What a system speaking the MediTrak contract sends as the category of a fee line: MediTrak has
# no category for it, so the vendor's own word for the charge, which is none of the ten. The
# connector does not guess for these sources (their category word is the vendor's decision):
# the line is CATEGORY_UNMAPPED (docs/sources.md, "Sandbox seeded defects").
MEDITRAK_FEE_WORDS: dict[str, str] = {
    "cancellation": "fee",
    "missed_appointment": "fee",
    "surcharge": "surcharge",
    "gift_voucher": "voucher",
    "admin": "admin",
    "report_writing": "admin",
}

_TEN = Decimal("10.00")
_FIVE = Decimal("5.00")
_HALF_CENT = Decimal("0.005")

# --- MediTrak record rendering (shared with the import-contract dialect) -------------------


def render_items(invoice: SandboxInvoice) -> list[dict[str, Any]]:
    """Items in the MediTrak record shape, with item-level defects applied."""
    defect = invoice.defect
    if defect == "no_items":
        return []
    rows: list[dict[str, Any]] = []
    for index, item in enumerate(invoice.items):
        total = item_total(item)
        category = item.category if item.fee is None else MEDITRAK_FEE_WORDS[item.fee]
        if index == 0:
            if defect == "unknown_category":
                category = "miscellaneous"
            elif defect == "item_total_mismatch":
                total += _TEN
        rows.append(
            {
                "category": category,
                "description": item.description,
                "quantity": money(item.quantity),
                "unit_price": money(item.unit_price),
                "total": money(total),
            }
        )
    return rows


def rendered_total(invoice: SandboxInvoice) -> Decimal:
    total = invoice.total
    if invoice.defect == "three_decimal_amount":
        return total + _HALF_CENT
    if invoice.defect == "invoice_total_mismatch":
        return total + _FIVE
    return total


def rendered_date(invoice: SandboxInvoice) -> str:
    if invoice.defect == "bad_date":
        return invoice.invoice_date.strftime("%d/%m/%Y")
    return invoice.invoice_date.isoformat()


def rendered_status(invoice: SandboxInvoice, words: dict[str, str] | None = None) -> str:
    """The vendor's status word; `words` maps canonical statuses when the vendor renames them."""
    if invoice.defect == "unknown_status":
        return "refunded"
    return words.get(invoice.status, invoice.status) if words else invoice.status


# --- the MediTrak API v1 dialect ----------------------------------------------------------

_STATUS_WORDS = ("draft", "submitted", "approved", "rejected", "paid")
_CANONICAL_TO_WORD = {
    "paid": "paid",
    "unpaid": "approved",
    "pending": "submitted",
    "void": "rejected",
}


def meditrak_status(invoice: SandboxInvoice) -> str:
    """MediTrak's word for the invoice status; some pending invoices are still drafts."""
    if invoice.defect == "unknown_status":
        return "refunded"
    # Deterministic per id so that list, detail and stats always agree.
    if invoice.status == "pending" and invoice.id[-1] in "0369":
        return "draft"
    return _CANONICAL_TO_WORD[invoice.status]


def _error(status: int, message: str, code: str) -> web.Response:
    return json_response({"success": False, "error": message, "code": code}, status=status)


def _invalid(message: str) -> web.Response:
    return _error(400, message, "INVALID_PARAMETER")


class MediTrakDialect(Dialect):
    """MediTrak API v1: paged summaries, a detail call per invoice, statistics, bulk export.

    The detail schema is undocumented by MediTrak; the one served here is the sandbox's choice,
    modelled on the import record (plus `updated_at` and `currency`).
    """

    name: ClassVar[str] = "meditrak"
    api_root: ClassVar[str] = "/api/v1/"
    list_shape: ClassVar[ListShape | None] = ListShape(
        "/api/v1/invoices/", "invoices", "invoice_id", "pagination.total_count"
    )
    default_token: ClassVar[str] = "sandbox-meditrak-key"
    supported_defects: ClassVar[tuple[str, ...]] = MEDITRAK_DEFECTS
    default_defects: ClassVar[tuple[str, ...]] = MEDITRAK_DEFAULT_DEFECTS

    max_limit: ClassVar[int] = 100
    default_limit: ClassVar[int] = 50
    bulk_export_max: ClassVar[int] = 1000

    def add_routes(self, app: web.Application) -> None:
        root = "/api/v1/invoices"
        app.router.add_get(f"{root}/", self.list_invoices)
        app.router.add_get(f"{root}/stats/", self.statistics)
        app.router.add_post(f"{root}/export/bulk/", self.bulk_export)
        app.router.add_get(f"{root}/{{invoice_id}}/", self.get_invoice)
        # Django's APPEND_SLASH: the slash-less spelling is answered with a permanent redirect.
        app.router.add_get(root, self.append_slash)
        app.router.add_get(f"{root}/{{invoice_id}}", self.append_slash)

    def unauthorized(self) -> web.Response:
        return _error(401, "Invalid or expired API key", "INVALID_API_KEY")

    async def append_slash(self, request: web.Request) -> web.Response:
        location = request.path + "/"
        if request.query_string:
            location += "?" + request.query_string
        raise web.HTTPMovedPermanently(location)

    # -- rendering --

    def summary(self, invoice: SandboxInvoice) -> dict[str, Any]:
        return {
            "invoice_id": invoice.id,
            "patient_name": invoice.patient_name,
            "total_amount": money(rendered_total(invoice)),
            "status": meditrak_status(invoice),
            "service_date": rendered_date(invoice),
        }

    def detail(self, invoice: SandboxInvoice) -> dict[str, Any]:
        record: dict[str, Any] = {"invoice_id": invoice.id}
        if invoice.defect != "missing_invoice_number":
            record["invoice_number"] = invoice.number
        record.update(
            {
                "service_date": rendered_date(invoice),
                "updated_at": iso_z(invoice.updated_at),
                "status": meditrak_status(invoice),
                "total_amount": money(rendered_total(invoice)),
                "currency": self.dataset.currency,
                "facility": invoice.facility,
                "patient": {"name": invoice.patient_name, "policy_number": invoice.policy_number},
                "items": render_items(invoice),
            }
        )
        return record

    # -- filters --

    def _filters(
        self, query: dict[str, str]
    ) -> tuple[Hashable, Callable[[SandboxInvoice], bool] | None] | web.Response:
        """(cache key, predicate) for the status/date query, or a 400 response."""
        status = query.get("status")
        if status is not None and status not in _STATUS_WORDS:
            return _invalid(f"Invalid status: must be one of {', '.join(_STATUS_WORDS)}")
        bounds: list[date | None] = []
        for key in ("date_from", "date_to"):
            text = query.get(key)
            parsed = parse_iso_date(text) if text is not None else None
            if text is not None and parsed is None:
                return _invalid("Invalid date format")
            bounds.append(parsed)
        date_from, date_to = bounds
        if status is None and date_from is None and date_to is None:
            return None, None

        def keep(invoice: SandboxInvoice) -> bool:
            if status is not None and meditrak_status(invoice) != status:
                return False
            if date_from is not None and invoice.invoice_date < date_from:
                return False
            return date_to is None or invoice.invoice_date <= date_to

        return ("list", status, date_from, date_to), keep

    # -- handlers --

    async def list_invoices(self, request: web.Request) -> web.Response:
        if not self.bearer_ok(request):
            return self.unauthorized()
        query = dict(request.query)
        page = parse_int(query.get("page"), 1)
        if page is None or page < 1:
            return _invalid("Invalid page: must be a positive integer")
        limit = parse_int(query.get("limit"), self.default_limit)
        if limit is None or not 1 <= limit <= self.max_limit:
            return _invalid(f"Invalid limit: must be an integer between 1 and {self.max_limit}")
        filters = self._filters(query)
        if isinstance(filters, web.Response):
            return filters
        start = (page - 1) * limit
        with self.dataset.lock:
            matches = self.view(*filters)
            rows = [self.summary(inv) for inv in matches[start : start + limit]]
            total = len(matches)
        return json_response(
            {"success": True, "invoices": rows, "pagination": {"page": page, "total_count": total}}
        )

    async def get_invoice(self, request: web.Request) -> web.Response:
        if not self.bearer_ok(request):
            return self.unauthorized()
        with self.dataset.lock:
            invoice = self.dataset.get(request.match_info["invoice_id"])
            body = (
                None
                if invoice is None
                else orjson.dumps({"success": True, "invoice": self.detail(invoice)})
            )
        if body is None:
            return _error(404, "Invoice not found", "INVOICE_NOT_FOUND")
        return web.Response(body=body, content_type="application/json")

    async def statistics(self, request: web.Request) -> web.Response:
        if not self.bearer_ok(request):
            return self.unauthorized()
        query = {k: v for k, v in request.query.items() if k in ("date_from", "date_to")}
        filters = self._filters(query)
        if isinstance(filters, web.Response):
            return filters
        by_status: dict[str, list[Any]] = {}
        grand_total = Decimal("0.00")
        with self.dataset.lock:
            matches = self.view(*filters)
            for invoice in matches:
                amount = invoice.total
                grand_total += amount
                entry = by_status.setdefault(meditrak_status(invoice), [0, Decimal("0.00")])
                entry[0] += 1
                entry[1] += amount
            count = len(matches)
        average = (grand_total / count).quantize(Decimal("0.01")) if count else Decimal("0.00")
        return json_response(
            {
                "success": True,
                "statistics": {
                    "total_invoices": count,
                    "total_amount": money(grand_total),
                    "average_amount": money(average),
                    "by_status": {
                        word: {"count": n, "amount": money(amount)}
                        for word, (n, amount) in sorted(by_status.items())
                    },
                },
            }
        )

    async def bulk_export(self, request: web.Request) -> web.Response:
        """POST export/bulk/: details of the selected invoices, at most 1000.

        MediTrak documents the request but not the response; this shape is the sandbox's own.
        """
        if not self.bearer_ok(request):
            return self.unauthorized()
        try:
            body = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError:
            return _invalid("Invalid JSON body")
        if not isinstance(body, dict):
            return _invalid("Invalid JSON body")
        wanted = body.get("invoice_ids")
        if wanted is not None and not (
            isinstance(wanted, list) and all(isinstance(i, str) for i in wanted)
        ):
            return _invalid("Invalid invoice_ids: must be a list of strings")
        query = {k: v for k, v in body.items() if k in ("status", "date_from", "date_to")}
        if any(not isinstance(v, str) for v in query.values()):
            return _invalid("Invalid filter value")
        filters = self._filters(query)
        if isinstance(filters, web.Response):
            return filters
        with self.dataset.lock:
            matches = self.view(*filters)
            if wanted is not None:
                wanted_set = set(wanted)
                matches = [inv for inv in matches if inv.id in wanted_set]
            rows = [self.detail(inv) for inv in matches[: self.bulk_export_max]]
        return json_response({"success": True, "count": len(rows), "invoices": rows})
