"""Bio Ecko's signed webhooks on the served app: `POST /webhooks/bio_ecko/{source}` checks the
signature on the raw bytes, the event's age and its webhook id, stores the event and answers;
a `PushWorker` (`connector.pipeline.push`) then fetches the invoice through the adapter.

The order of checks is the point: size (413) before reading more than the bound, signature
(401) before parsing anything, then shape (400) and age (400), and the answer only after the
event is committed, so an acknowledged event survives a crash. The answer never waits for the
vendor fetch. Secrets, payloads and patient data never reach a log line or an answer.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from fastapi import APIRouter, FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from connector.serve.errors import error_response
from connector.settings import AppConfig, SourceConfig

log = structlog.get_logger("connector.serve.webhooks")

SIGNATURE_HEADER = "X-Bio-Ecko-Signature"
# Bio Ecko's events are a few hundred bytes; anything near this is not one of them.
MAX_BODY_BYTES = 256 * 1024
EVENTS = frozenset({"invoice.created", "invoice.paid", "payment.received", "refund.processed"})
ROUTE = "/webhooks/bio_ecko/{source_name}"

INVALID_SIGNATURE = "INVALID_SIGNATURE"
INVALID_PAYLOAD = "INVALID_PAYLOAD"
STALE_EVENT = "STALE_EVENT"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
UNKNOWN_SOURCE = "UNKNOWN_SOURCE"


def sign(secret: str, body: bytes) -> str:
    """The signature Bio Ecko sends: HMAC-SHA256 of the raw body, lower-case hex."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, presented: str | None) -> bool:
    """Constant-time comparison with the expected signature ("sha256=" prefix tolerated)."""
    if not presented:
        return False
    value = presented.strip()
    if value[:7].lower() == "sha256=":
        value = value[7:]
    expected = sign(secret, body).encode("ascii")
    return hmac.compare_digest(expected, value.lower().encode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    event: str
    webhook_id: str
    at: datetime
    invoice_id: str


def parse_event(payload: Any) -> ParsedEvent | str:
    """The parts of a verified payload the connector uses, or what is wrong with it (the
    message names fields, never their values)."""
    if not isinstance(payload, dict):
        return "the body must be a JSON object"
    event, webhook_id, stamp, data = (
        payload.get(k) for k in ("event", "webhook_id", "timestamp", "data")
    )
    if not isinstance(event, str) or not event:
        return "event: a non-empty string is required"
    if not isinstance(webhook_id, str) or not 0 < len(webhook_id) <= 200:
        return "webhook_id: a string of 1 to 200 characters is required"
    if not isinstance(stamp, str):
        return "timestamp: an ISO 8601 time with an offset is required"
    try:
        at = datetime.fromisoformat(stamp)
    except ValueError:
        return "timestamp: an ISO 8601 time with an offset is required"
    if at.tzinfo is None:
        return "timestamp: the offset is missing"
    if not isinstance(data, dict):
        return "data: an object is required"
    invoice_id = invoice_id_of(event, data)
    if invoice_id is None:
        return "data: no invoice id (invoice_id, or id for invoice events)"
    return ParsedEvent(event, webhook_id, at.astimezone(UTC), invoice_id)


def invoice_id_of(event: str, data: dict[str, Any]) -> str | None:
    """Which invoice an event is about: `data.invoice_id`, `data.invoice.id`, or for the
    invoice.* events `data.id` (Bio Ecko documents the data's fields in prose only)."""
    nested = data.get("invoice")
    candidates = [
        data.get("invoice_id"),
        nested.get("id") if isinstance(nested, dict) else None,
        data.get("id") if event.startswith("invoice.") else None,
    ]
    for value in candidates:
        if isinstance(value, str | int) and not isinstance(value, bool):
            text = str(value).strip()
            if 0 < len(text) <= 200:
                return text
    return None


def webhook_sources(config: AppConfig) -> dict[str, SourceConfig]:
    """Bio Ecko sources with a webhook secret: the ones the endpoint answers for."""
    return {
        s.name: s
        for s in config.sources
        if s.type == "bio_ecko" and getattr(s, "webhook_secret", None) is not None
    }


def _accepted(status: str, webhook_id: str) -> Response:
    body = {"success": True, "status": status, "webhook_id": webhook_id}
    return Response(orjson.dumps(body), status_code=200, media_type="application/json")


class WebhookService:
    """The endpoint, the store it records events in and the worker that processes them."""

    def __init__(self, config: AppConfig, *, start_worker: bool = True, **processor: Any) -> None:
        # Loaded here, not with the app: serving without webhooks never pays for the pipeline.
        from connector.pipeline.push import PushProcessor, PushWorker
        from connector.store import Store
        from connector.store.webhooks import WebhookEvents

        self.sources = webhook_sources(config)
        self.store = Store(config.store.sqlalchemy_url())
        self.events = WebhookEvents(self.store)
        self.processor = PushProcessor(config, self.store, **processor)
        self.worker = PushWorker(self.processor)
        self.router = self._router()
        if start_worker:
            self.worker.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker, waiting up to `timeout` s for the round under way to finish
        (what it stored is committed; an event it had not finished stays pending and is
        taken up again after a restart), then close the store."""
        started = time.monotonic()
        self.worker.stop(timeout)
        if time.monotonic() - started >= timeout:
            log.warning("webhook.worker_cut_off", waited_s=round(timeout, 1))
        self.store.close()

    def _router(self) -> APIRouter:
        router = APIRouter(tags=["webhooks"])
        # Left out of the OpenAPI document: it is Bio Ecko's contract, not MediTrak's.
        router.add_api_route(ROUTE, self.receive, methods=["POST"], include_in_schema=False)
        return router

    async def receive(self, request: Request, source_name: str) -> Response:
        source = self.sources.get(source_name)
        if source is None:
            return error_response(404, UNKNOWN_SOURCE, "no source takes Bio Ecko webhooks here")
        body = await _bounded_body(request)
        if body is None:
            return error_response(
                413, PAYLOAD_TOO_LARGE, f"the body is larger than {MAX_BODY_BYTES} bytes"
            )
        secret = source.webhook_secret.get_secret_value()  # type: ignore[attr-defined]
        if not signature_matches(secret, body, request.headers.get(SIGNATURE_HEADER)):
            log.warning("webhook.rejected", source=source_name, reason="bad signature")
            return error_response(401, INVALID_SIGNATURE, f"{SIGNATURE_HEADER} does not match")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return error_response(400, INVALID_PAYLOAD, "the body is not valid JSON")
        parsed = parse_event(payload)
        if isinstance(parsed, str):
            return error_response(400, INVALID_PAYLOAD, parsed)
        tolerance: timedelta = source.webhook_tolerance  # type: ignore[attr-defined]
        if abs(datetime.now(UTC) - parsed.at) > tolerance:
            log.warning("webhook.rejected", source=source_name, reason="stale timestamp")
            return error_response(
                400,
                STALE_EVENT,
                f"timestamp is more than {int(tolerance.total_seconds())} s from now",
            )
        if parsed.event not in EVENTS:
            # A new kind of event: acknowledged so that the vendor stops sending it.
            log.info("webhook.ignored", source=source_name, webhook_event=parsed.event[:40])
            return _accepted("ignored", parsed.webhook_id)
        new = await run_in_threadpool(
            self.events.record,
            source_name,
            parsed.webhook_id,
            parsed.event,
            parsed.invoice_id,
            parsed.at,
        )
        if new:
            self.worker.wake()
        log.info(
            "webhook.received",
            source=source_name,
            webhook_event=parsed.event,
            webhook_id=parsed.webhook_id,
            duplicate=not new,
        )
        return _accepted("accepted" if new else "duplicate", parsed.webhook_id)


async def _bounded_body(request: Request) -> bytes | None:
    """The raw body, or None once it is larger than `MAX_BODY_BYTES` (read no further)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


def attach_webhooks(app: FastAPI, config: AppConfig) -> WebhookService | None:
    """Add the webhook endpoint to `app` when a source has a webhook secret (else nothing)."""
    if not webhook_sources(config):
        return None
    service = WebhookService(config)
    app.include_router(service.router)
    return service
