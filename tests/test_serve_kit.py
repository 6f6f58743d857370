"""What the `connector serve` tests share (no tests of its own): stores written through the
real batch write, configs with consumers, and the app served on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import httpx

from connector.config import build_config
from connector.issues import Issue, Reason
from connector.model import Category, Invoice, InvoiceStatus, LineItem, Patient
from connector.serve import create_app, start_in_thread
from connector.serve.auth import hash_key
from connector.settings import AppConfig
from connector.store import Accepted, Rejected, Store
from connector.store.serving import ServingReads

ALL_KEY = "serve-test-key-every-source-0001"
ONE_KEY = "serve-test-key-only-clinic-a-0002"


def consumers(one_source: str = "clinic-a") -> list[dict[str, Any]]:
    return [
        {"name": "meditrak", "key_sha256": hash_key(ALL_KEY), "sources": ["*"]},
        {"name": "auditor", "key_sha256": hash_key(ONE_KEY), "sources": [one_source]},
    ]


def serve_config(
    store_url: str,
    *,
    sources: Sequence[dict[str, Any]] = (),
    one_source: str = "clinic-a",
    **serve: Any,
) -> AppConfig:
    raw = {
        "store": {"url": store_url},
        "serve": {"port": 0, "consumers": consumers(one_source), **serve},
        "sources": list(sources),
    }
    return build_config(raw, env={})


def invoice(
    source: str,
    number: int,
    *,
    day: date = date(2025, 3, 1),
    status: InvoiceStatus = InvoiceStatus.PAID,
    amount: Decimal = Decimal("450.00"),
    quantity: Decimal = Decimal("1"),
) -> Invoice:
    unit = (amount / quantity).quantize(Decimal("0.01")) if quantity else amount
    return Invoice(
        source=source,
        id=f"INV-{number:05d}",
        invoice_number=f"N-{number}",
        invoice_date=day,
        total_amount=amount,
        currency="USD",
        status=status,
        source_status=status.value,
        facility="Test Clinic",
        patient=Patient(name=f"Patient Person{number}", policy_number=f"POL-{100000 + number}"),
        items=(
            LineItem(
                category=Category.CONSULTATION,
                description="General Consultation",
                quantity=quantity,
                unit_price=unit,
                total=amount,
            ),
        ),
    )


def write(
    store: Store, source: str, invoices: Sequence[Invoice], quarantined: Sequence[str] = ()
) -> None:
    """One committed batch, as a sync writes it: accepted invoices and quarantined keys."""
    run = store.start_run(source, "sync", None)
    rejected = [
        Rejected(key, {"id": key}, None, [Issue(Reason.FIELD_MISSING, "invoice_number", "missing")])
        for key in quarantined
    ]
    accepted = [Accepted(inv, inv.content_hash()) for inv in invoices]
    store.write_batch(run, source, accepted, rejected, fetched=len(invoices), resume=None)
    store.finish_run(run, source, status="ok")


@dataclass
class Served:
    url: str
    reads: ServingReads

    def client(self, key: str | None = ALL_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@contextmanager
def serving(config: AppConfig) -> Iterator[Served]:
    """The app over the config's store, on a free loopback port, until the block ends."""
    reads = ServingReads(config.store.sqlalchemy_url())
    running = start_in_thread(create_app(config, reads), config.serve)
    try:
        yield Served(running.url, reads)
    finally:
        running.stop()
        reads.close()


def every_page(client: httpx.Client, params: dict[str, Any], *, cursor: bool) -> list[str]:
    """The ids of a whole list, paged by cursor or by page number."""
    ids: list[str] = []
    query = dict(params)
    page = 1
    while True:
        answer = client.get("/api/v1/invoices", params=query)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        ids += [r["id"] for r in body["data"]]
        if cursor:
            if body["next_cursor"] is None:
                return ids
            query = {**params, "cursor": body["next_cursor"]}
        else:
            if page * body["limit"] >= body["total"]:
                return ids
            page += 1
            query = {**params, "page": page}
