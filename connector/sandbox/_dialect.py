"""The base class every fake vendor API ("dialect") derives from, and where dialects are found.

A dialect only knows how to route, authenticate and render its vendor's contract over a shared
`Dataset`; stats, latency, fault injection and the admin routes are the server's business.
Dialects are not listed here: each vendor's manifest names its own (`sandbox_dialect`, see
`connector.sources.discovery`), with the port offset it takes on a fixed base port.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, ClassVar

import orjson
from aiohttp import web

from connector.sources.discovery import SourceType, source_types

from ._dataset import CANONICAL_STATUSES, Dataset, SandboxInvoice

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
# A "+hh:mm" offset arrives as " hh:mm" when a client forgets to percent-encode the plus sign.
_UNENCODED_OFFSET_RE = re.compile(r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:?\d{2})$")
_VIEW_CACHE_SIZE = 32


def _with_dialect() -> dict[str, SourceType]:
    return {
        name: kind
        for name, kind in source_types().items()
        if kind.manifest.sandbox_dialect is not None
    }


def available_dialects() -> tuple[str, ...]:
    """Every vendor with a sandbox dialect: those with a port offset first, in offset order
    (their order with a fixed base port), then the others by name."""

    def port_order(kind: SourceType) -> tuple[bool, int, str]:
        offset = kind.manifest.sandbox_port_offset
        return (offset is None, offset or 0, kind.name)

    return tuple(kind.name for kind in sorted(_with_dialect().values(), key=port_order))


def port_offset(name: str) -> int | None:
    """Where the dialect listens relative to a fixed base port (None: on a free port)."""
    return _dialect_type(name).manifest.sandbox_port_offset


def load_dialect(name: str) -> type[Dialect]:
    """The dialect class of the vendor `name`, importing its module on first use."""
    kind = _dialect_type(name)
    cls = kind.sandbox_dialect_class()
    where = f"{kind.manifest.sandbox_dialect} ({kind.origin})"
    if not (isinstance(cls, type) and issubclass(cls, Dialect)):
        raise TypeError(f"{where} is not a Dialect subclass")
    if getattr(cls, "name", None) != name:
        raise TypeError(f"{where} is named {getattr(cls, 'name', None)!r}, not {name!r}")
    return cls


def _dialect_type(name: str) -> SourceType:
    known = _with_dialect()
    try:
        return known[name]
    except KeyError:
        raise KeyError(f"unknown sandbox dialect {name!r}; known: {sorted(known)}") from None


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


@dataclass(frozen=True)
class ListShape:
    """Where a dialect's list answers keep their records, total and next link: what the
    server's pagination anomalies (`._anomaly`) need to disturb that list."""

    route: str  # the list route as the dialect registers it, e.g. "/api/v1/invoices/"
    records: str  # dotted path of the record array in the answer
    id_key: str  # the vendor id's key in one record
    total: str | None = None
    next_link: str | None = None
    # "page" (1-based `page`), "offset" or "link" (keyset pages joined by next links).
    style: str = "page"


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
    # The list endpoint pagination anomalies can disturb; None: the dialect has none.
    list_shape: ClassVar[ListShape | None] = None

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
