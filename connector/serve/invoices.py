"""The MediTrak import contract over the store: `GET /api/v1/invoices` (filtered, paged, with
a total) and `GET /api/v1/invoices/{id}` (one import record), behind per-consumer API keys.

Parameter and envelope names are the ones the connector's own `meditrak_import` source reads
by default (page/limit, date_from/date_to, updated_since; records under `data`, the count
under `total`), so a connector can import from another one with no extra settings.
"""

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from connector.serve.auth import Consumer, KeyRing, bearer_key
from connector.serve.errors import (
    INVALID_API_KEY,
    INVOICE_NOT_FOUND,
    SOURCE_FORBIDDEN,
    ApiError,
    bad_parameter,
    error_response,
)
from connector.serve.records import (
    ErrorModel,
    ImportRecordModel,
    InvoiceListModel,
    iso_utc,
    record,
    split_id,
)
from connector.settings import SOURCE_NAME, ServeSettings
from connector.store.serving import ServeFilters, ServingReads

API_PREFIX = "/api/v1"
MAX_PAGE = 1_000_000
_DATE = r"^\d{4}-\d{2}-\d{2}$"
_STATUSES = Literal["paid", "unpaid", "pending", "void"]
_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorModel, "description": text}
    for status, text in (
        (400, "A malformed parameter (INVALID_PARAMETER)."),
        (401, "No key, or not a known one (INVALID_API_KEY)."),
        (403, "A `source` this key may not read (SOURCE_FORBIDDEN)."),
        (404, "No such invoice, or not one this key may read (INVOICE_NOT_FOUND)."),
        (503, "The store cannot be read right now (STORE_UNAVAILABLE)."),
    )
}
# Both contract endpoints want `Authorization: Bearer <key>` (scheme: `app.BEARER_SCHEME`).
BEARER: dict[str, Any] = {"security": [{"HTTPBearer": []}]}


def _json(payload: object) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


def _date(name: str, text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise bad_parameter(f"{name} must be a date in YYYY-MM-DD format") from None


def _moment(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise bad_parameter(f"{name} must be an ISO 8601 date-time") from None
    # Without an offset the moment is read as UTC (documented).
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class Cursor:
    """Where a pass stands: its horizon, the total counted on its first page, the last key."""

    horizon: datetime
    total: int
    key: tuple[str, str]

    def encode(self) -> str:
        raw = orjson.dumps([iso_utc(self.horizon), self.total, *self.key])
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str) -> "Cursor":
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            horizon_text, total, source, source_id = orjson.loads(raw)
            horizon = datetime.fromisoformat(horizon_text)
            if not (
                isinstance(source, str)
                and isinstance(source_id, str)
                and type(total) is int
                and horizon.tzinfo
            ):
                raise ValueError
        except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
            raise bad_parameter("cursor is not one this server gave out") from None
        return cls(horizon, total, (source, source_id))


def invoice_router(reads: ServingReads, keys: KeyRing, settings: ServeSettings) -> APIRouter:
    """The two contract endpoints, bound to a store, the consumers' keys and the settings."""
    router = APIRouter(prefix=API_PREFIX, tags=["invoices"], responses=_ERRORS)

    def authorize(request: Request) -> Consumer:
        """The consumer whose key the request carries, or 401. A plain call rather than a
        FastAPI security dependency, whose solving was a quarter of a get-by-id's Python
        calls (docs/performance.md)."""
        key = bearer_key(request.headers.get("authorization"))
        consumer = keys.identify(key) if key else None
        if consumer is None:
            raise ApiError(401, INVALID_API_KEY, "Invalid or expired API key")
        # For the access log line: the consumer's name, never its key.
        request.state.consumer = consumer.name
        return consumer

    limit_text = (
        f"Records per page (default {settings.default_page_size}, "
        f"maximum {settings.max_page_size})."
    )

    @router.get(
        "/invoices",
        response_model=InvoiceListModel,
        openapi_extra=BEARER,
        summary="List invoices",
        description="Accepted invoices in (source, source id) order. Page with `page` or with "
        "`cursor` (docs/serving.md: a cursor pass never skips or repeats a record).",
    )
    def list_invoices(
        request: Request,
        page: Annotated[
            int | None, Query(ge=1, le=MAX_PAGE, description="Page number (default 1).")
        ] = None,
        limit: Annotated[
            int | None, Query(ge=1, le=settings.max_page_size, description=limit_text)
        ] = None,
        cursor: Annotated[
            str | None,
            Query(max_length=1200, description="`next_cursor` of the page before."),
        ] = None,
        status: Annotated[
            _STATUSES | None, Query(description="Only this status (void: void invoices).")
        ] = None,
        date_from: Annotated[
            str | None, Query(pattern=_DATE, description="invoice_date on or after (YYYY-MM-DD).")
        ] = None,
        date_to: Annotated[
            str | None, Query(pattern=_DATE, description="invoice_date on or before (YYYY-MM-DD).")
        ] = None,
        updated_since: Annotated[
            str | None,
            Query(
                max_length=64,
                description="Versions stored at or after this moment (ISO 8601; UTC if no "
                "offset), compared with each record's updated_at.",
            ),
        ] = None,
        source: Annotated[
            str | None, Query(pattern=SOURCE_NAME, description="Only this source.")
        ] = None,
        include_void: Annotated[
            bool, Query(description="Also list void invoices (left out by default).")
        ] = False,
    ) -> Response:
        consumer = authorize(request)
        if page is not None and cursor is not None:
            raise bad_parameter("page and cursor exclude each other")
        if source is not None and not consumer.may_read(source):
            raise ApiError(403, SOURCE_FORBIDDEN, "this key may not read that source")
        first, last = _date("date_from", date_from), _date("date_to", date_to)
        if first and last and first > last:
            raise bad_parameter("date_from is after date_to")
        since = _moment("updated_since", updated_since)
        size = limit or settings.default_page_size
        resumed = Cursor.decode(cursor) if cursor is not None else None
        horizon = resumed.horizon if resumed else datetime.now(UTC) - settings.settle
        filters = ServeFilters(
            sources=consumer.scope(source),
            date_from=first,
            date_to=last,
            status=status,
            include_void=include_void,
            updated_since=since,
            horizon=horizon,
        )
        offset = ((page or 1) - 1) * size
        found = reads.list_invoices(
            filters,
            limit=size,
            offset=offset,
            after=resumed.key if resumed else None,
            # A pass counts once, on its first page; its cursors carry that total.
            count=resumed is None,
        )
        total = resumed.total if resumed else found.total or 0
        following = Cursor(horizon, total, found.last_key) if found.last_key else None
        return _json(
            {
                "success": True,
                "data": [record(served) for served in found.invoices],
                "total": total,
                "page": None if resumed else page or 1,
                "limit": size,
                "next_cursor": following.encode() if following else None,
                "as_of": iso_utc(horizon),
            }
        )

    @router.get(
        "/invoices/{invoice_id:path}",
        response_model=ImportRecordModel,
        openapi_extra=BEARER,
        summary="Get one invoice",
        description='One import record by its id ("<source>:<source id>").',
    )
    # A local store (SQLite) is read on the event loop: the read is a fraction of a
    # millisecond and the hop to the thread pool and back cost more than it (and a GIL
    # hand-over each way under load). PostgreSQL lookups go to the thread pool, so that
    # concurrent requests overlap their round trips and a slow database never holds up the
    # loop (/healthz, /metrics). The list, milliseconds per page, always goes to the pool.
    async def get_invoice(
        request: Request,
        invoice_id: Annotated[str, Path(max_length=400, description="<source>:<source id>")],
        include_void: Annotated[bool, Query(description="Serve it even if void.")] = False,
    ) -> Response:
        consumer = authorize(request)
        key = split_id(invoice_id)
        # Another consumer's invoice is "not found": a 403 would confirm that it exists.
        if key is None or not consumer.may_read(key[0]):
            return error_response(404, INVOICE_NOT_FOUND, "Invoice not found")
        if reads.local:
            served = reads.get_invoice(*key, include_void=include_void)
        else:
            served = await run_in_threadpool(reads.get_invoice, *key, include_void=include_void)
        if served is None:
            return error_response(404, INVOICE_NOT_FOUND, "Invoice not found")
        return _json(record(served))

    return router
