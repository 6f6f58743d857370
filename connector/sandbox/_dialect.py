"""The base class every fake vendor API ("dialect") derives from, and the name → class registry.

A dialect only knows how to route, authenticate and render its vendor's contract over a shared
`Dataset`; stats, latency, fault injection and the admin routes are the server's business.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, ClassVar

import orjson
from aiohttp import web

from ._dataset import CANONICAL_STATUSES, Dataset, SandboxInvoice

# Name → "module:Class" (imported on first use) or the class itself. The order matters: with a
# fixed base port, dialect i listens on base_port + i.
DIALECTS: dict[str, str | type[Dialect]] = {
    "meditrak": "connector.sandbox.meditrak:MediTrakDialect",
    "meditrak_import": "connector.sandbox.meditrak_import:MediTrakImportDialect",
    "splose": "connector.sandbox.splose:SploseDialect",
    "bio_ecko": "connector.sandbox.bio_ecko:BioEckoDialect",
    "citabox": "connector.sandbox.citabox:CitaBoxDialect",
    "invoice_api": "connector.sandbox.invoice_api:InvoiceApiDialect",
}


def available_dialects() -> tuple[str, ...]:
    """Registered dialects whose module is installed, in registry order."""
    found = []
    for name, entry in DIALECTS.items():
        module = entry.partition(":")[0] if isinstance(entry, str) else None
        if module is None or importlib.util.find_spec(module) is not None:
            found.append(name)
    return tuple(found)


_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
# A "+hh:mm" offset arrives as " hh:mm" when a client forgets to percent-encode the plus sign.
_UNENCODED_OFFSET_RE = re.compile(r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:?\d{2})$")
_VIEW_CACHE_SIZE = 32


def load_dialect(name: str) -> type[Dialect]:
    """The dialect class registered under `name`, importing its module on first use."""
    try:
        entry = DIALECTS[name]
    except KeyError:
        raise KeyError(f"unknown sandbox dialect {name!r}; known: {sorted(DIALECTS)}") from None
    if isinstance(entry, str):
        module_name, _, class_name = entry.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        if not (isinstance(cls, type) and issubclass(cls, Dialect)):
            raise TypeError(f"{entry} is not a Dialect subclass")
        DIALECTS[name] = cls
        return cls
    return entry


def money(value: Decimal) -> orjson.Fragment:
    """A Decimal as a JSON number with exactly its own digits (1250.00 stays 1250.00).

    Floats would drop trailing zeros and could not express "too many decimals" defects
    faithfully, so the number text is embedded verbatim.
    """
    text = str(value)
    if "E" in text or "e" in text:
        text = format(value, "f")
    return orjson.Fragment(text)


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def iso_z(moment: datetime) -> str:
    """UTC timestamp in ISO 8601 with a "Z" suffix, second precision."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso_date(text: str) -> date | None:
    """A strict YYYY-MM-DD date, or None (fromisoformat alone also accepts "20250115")."""
    if not _DATE_RE.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def parse_iso_datetime(text: str) -> datetime | None:
    """An ISO 8601 date or datetime as aware UTC (naive means UTC), or None if malformed."""
    text = _UNENCODED_OFFSET_RE.sub(r"\1+\2", text.strip())
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def parse_int(text: str | None, default: int) -> int | None:
    """A decimal integer query value, `default` if absent, None if malformed."""
    if text is None:
        return default
    text = text.strip()
    if not text.lstrip("-").isdigit():
        return None
    return int(text)


class Dialect(ABC):
    """One fake vendor API: its routes, auth and rendering over a `Dataset`.

    Subclasses set the class attributes and implement `add_routes` and `unauthorized`. Defects
    recorded in the dataset are applied when rendering; `supported_defects` lists those the
    dialect can render and `default_defects` those generated unless the options say otherwise.
    """

    name: ClassVar[str]
    api_root: ClassVar[str]  # path prefix a connector's base URL should end with, e.g. "/api/v1/"
    default_token: ClassVar[str]
    supported_defects: ClassVar[tuple[str, ...]] = ()
    default_defects: ClassVar[tuple[str, ...]] = ()
    generated_statuses: ClassVar[tuple[str, ...]] = CANONICAL_STATUSES
    currency: ClassVar[str] = "USD"
    id_prefix: ClassVar[str] = "INV-"

    def __init__(self, dataset: Dataset, token: str) -> None:
        self.dataset = dataset
        self.token = token
        self._views: dict[Hashable, tuple[int, list[SandboxInvoice]]] = {}

    @abstractmethod
    def add_routes(self, app: web.Application) -> None:
        """Register the vendor routes (everything outside /_sandbox/)."""

    @abstractmethod
    def unauthorized(self) -> web.Response:
        """The vendor's answer to a missing or wrong credential."""

    def credentials(self) -> dict[str, str]:
        """What a connector config needs to authenticate against this dialect."""
        return {"api_key": self.token}

    def connector_source(self, api_url: str) -> dict[str, Any]:
        """A connector source config (raw dict) that syncs this dialect: `type` and `name` are
        the dialect name, plus its base URL and credentials."""
        return {"type": self.name, "name": self.name, "base_url": api_url, **self.credentials()}

    def vendor_id(self, invoice: SandboxInvoice) -> str:
        """The id under which the vendor API serves this truth invoice."""
        return invoice.id

    def vendor_patient_ref(self, invoice: SandboxInvoice) -> str:
        """The id under which the vendor serves this invoice's patient (what the connector's
        mapping puts in `Patient.source_ref`, the key of patient links)."""
        return invoice.patient_ref

    def expire_tokens(self) -> None:  # noqa: B027 - an optional hook, not an abstract one
        """Invalidate every issued token (token-issuing dialects override this)."""

    def credential_of(self, request: web.Request) -> str | None:
        """The credential a request presents, used to count requests per credential."""
        return request.headers.get("Authorization")

    def bearer_ok(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and value.strip() == self.token

    def fault_response(self, status: int, retry_after_s: int) -> web.Response:
        """An injected transient failure; dialects may override the body shape."""
        if status == 429:
            return json_response(
                {"error": "Too Many Requests"},
                status=429,
                headers={"Retry-After": str(retry_after_s)},
            )
        return json_response({"error": "Service Unavailable"}, status=status)

    def view(
        self, key: Hashable, keep: Callable[[SandboxInvoice], bool] | None
    ) -> list[SandboxInvoice]:
        """Invoices passing `keep`, in id order; call with `dataset.lock` held.

        Filtered views are cached per dataset version because paging through 100k records
        would otherwise re-filter the whole dataset on every page.
        """
        invoices = self.dataset.invoices
        if keep is None:
            return invoices
        version = self.dataset.version
        cached = self._views.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        matches = [inv for inv in invoices if keep(inv)]
        if len(self._views) >= _VIEW_CACHE_SIZE:
            self._views.clear()
        self._views[key] = (version, matches)
        return matches
