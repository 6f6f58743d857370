"""Signed webhooks sent by a sandbox dialect (Bio Ecko's): a subscriber URL and secret are set
through the admin routes, every invoice change of the dataset (`/_sandbox/add`,
`/_sandbox/mutate/{id}`) is then pushed as an event, and single events can be sent on demand,
honest or tampered with (bad signature, stale or future timestamp, replay, oversized body,
malformed JSON, no signature), to test a receiver.

The event is `{event, timestamp, data, webhook_id}` with the timestamp in IST (+05:30) and
the header `X-Bio-Ecko-Signature`: HMAC-SHA256 of the raw body, hex. Deliveries that fail
(no connection, a 5xx) are retried a few times, as vendors do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from ._dataset import Dataset, SandboxInvoice
from ._dialect import json_response

SIGNATURE_HEADER = "X-Bio-Ecko-Signature"
IST = timezone(timedelta(hours=5, minutes=30), "IST")
TAMPERS = (
    "bad_signature",
    "stale",
    "future",
    "replay",
    "oversized",
    "malformed",
    "unsigned",
)
_WATCH_INTERVAL_S = 0.05
_DELIVERY_ATTEMPTS = 3


def signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


@dataclass
class Delivery:
    webhook_id: str
    event: str
    invoice_id: str
    body: bytes
    headers: dict[str, str]
    status: int | None = None
    answer: Any = None
    attempts: int = 0
    tamper: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "webhook_id": self.webhook_id,
            "event": self.event,
            "invoice_id": self.invoice_id,
            "status": self.status,
            "answer": self.answer,
            "attempts": self.attempts,
            "tamper": self.tamper,
        }


@dataclass
class WebhookSender:
    """The webhook side of one dialect over its dataset; `describe` renders the event data."""

    dataset: Dataset
    describe: Callable[[SandboxInvoice], dict[str, Any]]
    status_of: Callable[[SandboxInvoice], str]
    url: str | None = None
    secret: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    _seen: dict[str, datetime] = field(default_factory=dict)
    _version: int = -1
    _watcher: asyncio.Task[None] | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/_sandbox/webhooks", self.subscribe)
        app.router.add_post("/_sandbox/webhooks/send", self.send_one)
        app.router.add_get("/_sandbox/webhooks/deliveries", self.list_deliveries)
        app.on_cleanup.append(self._stop_watching)

    # -- admin routes --

    async def subscribe(self, request: web.Request) -> web.Response:
        """{"url": target or null, "secret": str, "on_change": bool (default true)}."""
        body = await request.json()
        url, secret = body.get("url"), body.get("secret", "")
        if url is not None and not (isinstance(url, str) and isinstance(secret, str) and secret):
            return json_response({"error": "url and a non-empty secret are required"}, 400)
        self.url, self.secret = url, secret
        await self._stop_watching(request.app)
        if url is not None and body.get("on_change", True):
            self._snapshot()
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return json_response({"url": url, "on_change": self._watcher is not None})

    async def send_one(self, request: web.Request) -> web.Response:
        """{"invoice_id", "event" (default invoice.paid), "tamper" (one of TAMPERS or null),
        "webhook_id" (replay: the delivery to repeat; default the last one)}."""
        body = await request.json()
        tamper = body.get("tamper")
        if self.url is None:
            return json_response({"error": "no subscriber: POST /_sandbox/webhooks first"}, 409)
        if tamper is not None and tamper not in TAMPERS:
            return json_response({"error": f"tamper must be one of {', '.join(TAMPERS)}"}, 400)
        if tamper == "replay":
            wanted = body.get("webhook_id")
            earlier = [d for d in self.deliveries if wanted in (None, d.webhook_id)]
            if not earlier:
                return json_response({"error": "nothing delivered to replay"}, 404)
            original = earlier[-1]
            delivery = Delivery(
                original.webhook_id,
                original.event,
                original.invoice_id,
                original.body,
                dict(original.headers),
                tamper=tamper,
            )
        else:
            with self.dataset.lock:
                invoice = self.dataset.get(str(body.get("invoice_id", "")))
                data = None if invoice is None else self.describe(invoice)
            if invoice is None or data is None:
                return json_response({"error": "no such invoice"}, 404)
            event = str(body.get("event") or "invoice.paid")
            delivery = self.build(event, invoice.id, data, tamper=tamper)
        await self.deliver(delivery)
        return json_response(delivery.summary())

    async def list_deliveries(self, request: web.Request) -> web.Response:
        return json_response([d.summary() for d in self.deliveries])

    # -- building and sending --

    def build(
        self, event: str, invoice_id: str, data: dict[str, Any], *, tamper: str | None = None
    ) -> Delivery:
        now = datetime.now(IST)
        if tamper == "stale":
            now -= timedelta(minutes=10)
        elif tamper == "future":
            now += timedelta(minutes=10)
        payload: dict[str, Any] = {
            "event": event,
            "timestamp": now.isoformat(timespec="seconds"),
            "data": data,
            "webhook_id": f"whk_{secrets.token_hex(12)}",
        }
        if tamper == "oversized":
            payload["data"] = {**data, "padding": "x" * 300_000}
        raw = orjson.dumps(payload)
        if tamper == "malformed":
            raw = raw[: len(raw) // 2]
        key = "not-the-secret" if tamper == "bad_signature" else self.secret
        headers = {"Content-Type": "application/json"}
        if tamper != "unsigned":
            headers[SIGNATURE_HEADER] = signature(key, raw)
        return Delivery(payload["webhook_id"], event, invoice_id, raw, headers, tamper=tamper)

    async def deliver(self, delivery: Delivery) -> None:
        """POST it; retried after a connection failure or a 5xx, as a vendor would."""
        assert self.url is not None
        self.deliveries.append(delivery)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for attempt in range(_DELIVERY_ATTEMPTS):
                delivery.attempts = attempt + 1
                try:
                    async with session.post(
                        self.url, data=delivery.body, headers=delivery.headers
                    ) as answer:
                        delivery.status = answer.status
                        text = await answer.text()
                        try:
                            delivery.answer = orjson.loads(text)
                        except orjson.JSONDecodeError:
                            delivery.answer = text[:500]
                except (aiohttp.ClientError, TimeoutError) as exc:
                    delivery.status, delivery.answer = None, type(exc).__name__
                if delivery.status is not None and delivery.status < 500:
                    return
                await asyncio.sleep(0.2 * 2**attempt)

    # -- changes of the dataset --

    def _snapshot(self) -> dict[str, datetime]:
        with self.dataset.lock:
            self._version = self.dataset.version
            current = {inv.id: inv.updated_at for inv in self.dataset.invoices}
        previous, self._seen = self._seen, current
        return previous

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(_WATCH_INTERVAL_S)
            if self.dataset.version == self._version or self.url is None:
                continue
            before = self._snapshot()
            for invoice_id, updated in self._seen.items():
                if before.get(invoice_id) == updated:
                    continue
                with self.dataset.lock:
                    invoice = self.dataset.get(invoice_id)
                    if invoice is None:
                        continue
                    data, status = self.describe(invoice), self.status_of(invoice)
                if invoice_id not in before:
                    event = "invoice.created"
                else:
                    event = "invoice.paid" if status == "paid" else "payment.received"
                await self.deliver(self.build(event, invoice_id, data))

    async def _stop_watching(self, _app: web.Application) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
