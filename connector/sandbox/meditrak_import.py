"""Sandbox dialect for a third-party system exposing the MediTrak import contract.

Serves the documented import record from a list endpoint (page/limit, updated_since, date range,
status) and a get-by-id endpoint, FastAPI style ({"detail": ...} errors). The list parameter
names are not documented by MediTrak, so the ones used here are the sandbox's choice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any, ClassVar

import orjson
from aiohttp import web

from ._dataset import SandboxInvoice
from ._dialect import (
    Dialect,
    ListShape,
    iso_z,
    json_response,
    money,
    parse_int,
    parse_iso_date,
    parse_iso_datetime,
)
from .meditrak import (
    MEDITRAK_DEFAULT_DEFECTS,
    MEDITRAK_DEFECTS,
    render_items,
    rendered_date,
    rendered_status,
    rendered_total,
)

_STATUSES = ("paid", "unpaid", "pending")


def _detail(status: int, message: str) -> web.Response:
    return json_response({"detail": message}, status=status)


class MediTrakImportDialect(Dialect):
    """List + get-by-id of MediTrak import records, line items included."""

    name: ClassVar[str] = "meditrak_import"
    api_root: ClassVar[str] = "/api/"
    list_shape: ClassVar[ListShape | None] = ListShape("/api/invoices", "data", "id", "total")
    default_token: ClassVar[str] = "sandbox-import-key"
    supported_defects: ClassVar[tuple[str, ...]] = MEDITRAK_DEFECTS
    default_defects: ClassVar[tuple[str, ...]] = MEDITRAK_DEFAULT_DEFECTS
    # The contract has no word for a voided invoice, so such invoices are never generated.
    generated_statuses: ClassVar[tuple[str, ...]] = _STATUSES

    max_limit: ClassVar[int] = 500
    default_limit: ClassVar[int] = 50

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/invoices", self.list_invoices)
        app.router.add_get("/api/invoices/{invoice_id}", self.get_invoice)

    def unauthorized(self) -> web.Response:
        return json_response(
            {"detail": "Not authenticated"}, status=401, headers={"WWW-Authenticate": "Bearer"}
        )

    def record(self, invoice: SandboxInvoice) -> dict[str, Any]:
        record: dict[str, Any] = {"id": invoice.id}
        if invoice.defect != "missing_invoice_number":
            record["invoice_number"] = invoice.number
        record.update(
            {
                "invoice_date": rendered_date(invoice),
                "total_amount": money(rendered_total(invoice)),
                "status": rendered_status(invoice),
                "facility": invoice.facility,
                "patient": {"name": invoice.patient_name, "policy_number": invoice.policy_number},
                "items": render_items(invoice),
                "updated_at": iso_z(invoice.updated_at),
            }
        )
        return record

    async def list_invoices(self, request: web.Request) -> web.Response:
        if not self.bearer_ok(request):
            return self.unauthorized()
        query = request.query
        page = parse_int(query.get("page"), 1)
        if page is None or page < 1:
            return _detail(400, "page must be a positive integer")
        limit = parse_int(query.get("limit"), self.default_limit)
        if limit is None or not 1 <= limit <= self.max_limit:
            return _detail(400, f"limit must be an integer between 1 and {self.max_limit}")
        status = query.get("status")
        if status is not None and status not in _STATUSES:
            return _detail(400, f"status must be one of {', '.join(_STATUSES)}")
        since: datetime | None = None
        if "updated_since" in query:
            since = parse_iso_datetime(query["updated_since"])
            if since is None:
                return _detail(400, "updated_since must be an ISO 8601 datetime")
        bounds: list[date | None] = []
        for key in ("date_from", "date_to"):
            text = query.get(key)
            parsed = parse_iso_date(text) if text is not None else None
            if text is not None and parsed is None:
                return _detail(400, f"{key} must be a date in YYYY-MM-DD format")
            bounds.append(parsed)
        date_from, date_to = bounds

        keep: Callable[[SandboxInvoice], bool] | None = None
        if status is not None or since is not None or date_from is not None or date_to is not None:

            def keep(invoice: SandboxInvoice) -> bool:
                if status is not None and rendered_status(invoice) != status:
                    return False
                if since is not None and invoice.updated_at < since:
                    return False
                if date_from is not None and invoice.invoice_date < date_from:
                    return False
                return date_to is None or invoice.invoice_date <= date_to

        start = (page - 1) * limit
        with self.dataset.lock:
            matches = self.view((status, since, date_from, date_to), keep)
            rows = [self.record(inv) for inv in matches[start : start + limit]]
            total = len(matches)
        return json_response({"data": rows, "total": total, "page": page, "limit": limit})

    async def get_invoice(self, request: web.Request) -> web.Response:
        if not self.bearer_ok(request):
            return self.unauthorized()
        with self.dataset.lock:
            invoice = self.dataset.get(request.match_info["invoice_id"])
            body = None if invoice is None else orjson.dumps(self.record(invoice))
        if body is None:
            return _detail(404, "Invoice not found")
        return web.Response(body=body, content_type="application/json")
