"""CitaBox (Costa Rica): e-mail/password login answering a token and clinic memberships, an
`x-clinic-id` header on every call, and `GET /billing/invoices` answering one plain JSON array.

The array has no pagination and no filters: the core `SingleArrayPaginator` stream-parses it
element by element (never held whole) and retries a dropped answer through the client; this
adapter filters on `updatedAt` on the way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, tzinfo
from functools import partial
from typing import Any, ClassVar, Literal
from urllib.parse import urljoin

import httpx
import orjson
from pydantic import Field, SecretStr

from connector.errors import AuthError
from connector.mapping.kit import MappingContext
from connector.settings import SourceConfig
from connector.sources.adapter import Adapter as BaseAdapter
from connector.sources.adapter import FetchRequest, SourcePage
from connector.sources.auth import Token, TokenAuth
from connector.sources.bodies import describe_json_error, safe_vendor_text
from connector.sources.discovery import VendorManifest
from connector.sources.http import ErrorDescriber
from connector.sources.paginate import SingleArrayPaginator

LOGIN_PATH = "auth/login"
INVOICES_PATH = "billing/invoices"


class Config(SourceConfig):
    type: Literal["citabox"] = "citabox"
    email: str = Field(min_length=3)
    password: SecretStr
    # Which clinic to read; None means the first clinic of the login's memberships.
    clinic_id: str | None = None
    currency: str = Field("CRC", pattern=r"^[A-Z]{3}$")
    # Naive timestamps are read in this zone, and invoice dates are createdAt's date here.
    timezone: str = "America/Costa_Rica"
    # Records handed on per page (one store batch); the vendor itself answers one array.
    page_size: int = Field(500, ge=1, le=10000)
    # CitaBox invoices do not name the clinic; this becomes the canonical `facility`.
    facility: str | None = None
    # One array element larger than this (in characters) is a broken answer, not an invoice.
    max_record_bytes: int = Field(1_000_000, ge=1024)

    @property
    def mapping_options(self) -> dict[str, Any]:
        return {"facility": self.facility}


# -- errors ---------------------------------------------------------------------------------


def describe_nestjs_error(response: httpx.Response) -> str | None:
    """NestJS error bodies: `{statusCode, message, error}` where `message` is a string or, for
    validation failures, a list of strings."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or "message" not in body:
        return describe_json_error(response)
    message = body.get("message")
    # Every piece of vendor text passes the patient-data filter (connector.sources.bodies).
    if isinstance(message, list):
        said = "; ".join(safe_vendor_text(str(m)) for m in message[:5] if str(m))
    else:
        said = safe_vendor_text(str(message)) if message not in (None, "") else ""
    error = body.get("error")
    if isinstance(error, str) and error and error != said:
        error = safe_vendor_text(error)
        said = f"{error}: {said}" if said else error
    return said[:300] or None


# -- auth -----------------------------------------------------------------------------------


class CitaBoxLogin(TokenAuth):
    """`POST auth/login {email, password}` → `{access_token, memberships}`; every request then
    carries the bearer token and the chosen clinic's `x-clinic-id`.

    The token lifetime is undocumented, so the token is kept until a 401 and then renewed once
    (the base class's flow).
    """

    def __init__(
        self, login_url: str, email: str, password: SecretStr, clinic_id: str | None
    ) -> None:
        super().__init__(password)
        self.login_url = login_url
        self._email = email
        self._password = password
        self._clinic_id = clinic_id

    def build_token_request(self) -> httpx.Request:
        body = {"email": self._email, "password": self._password.get_secret_value()}
        return httpx.Request("POST", self.login_url, json=body)

    def read_token(self, body: dict[str, Any]) -> Token:
        value = body["access_token"]
        if not isinstance(value, str) or not value:
            raise ValueError("access_token missing")
        memberships = body.get("memberships")
        clinics = [
            m for m in memberships or [] if isinstance(m, dict) and m.get("clinic_id") is not None
        ]
        if not clinics:
            raise AuthError(
                f"POST {LOGIN_PATH}: the login has no clinic memberships, so there is no "
                "clinic whose invoices it may read"
            )
        known = [str(m["clinic_id"]) for m in clinics]
        if self._clinic_id is None:
            chosen = known[0]
        elif self._clinic_id in known:
            chosen = self._clinic_id
        else:
            listed = ", ".join(
                f"{m['clinic_id']} ({m.get('clinic_name') or 'unnamed'})" for m in clinics
            )
            raise AuthError(
                f"clinic_id {self._clinic_id!r} is not one of the clinics this CitaBox login "
                f"belongs to: {listed}; set clinic_id to one of them or leave it out"
            )
        return Token(value, None, {"clinic_id": chosen, "memberships": clinics})

    def decorate(self, request: httpx.Request, token: Token) -> None:
        super().decorate(request, token)
        request.headers["x-clinic-id"] = str(token.extra["clinic_id"])

    def describe_login_error(self, response: httpx.Response) -> str | None:
        return describe_nestjs_error(response)


# -- the adapter ----------------------------------------------------------------------------


class Adapter(BaseAdapter):
    """The invoice array through the core `SingleArrayPaginator`: streamed, filtered on
    `updatedAt` on the way, handed on in pages of `page_size` records; position `{"skip": n}`
    means the first n array elements were handed on or filtered out."""

    # The vendor cannot filter, but the adapter filters on `updatedAt` while streaming, so an
    # incremental run hands on only what changed.
    supports_since = True
    list_path: ClassVar[str] = INVOICES_PATH
    describe_error: ClassVar[ErrorDescriber] = staticmethod(describe_nestjs_error)
    config: Config

    @classmethod
    def build_auth(cls, config: SourceConfig) -> httpx.Auth:
        assert isinstance(config, Config)
        return CitaBoxLogin(
            urljoin(config.base_url, LOGIN_PATH), config.email, config.password, config.clinic_id
        )

    def paginator(self, request: FetchRequest) -> SingleArrayPaginator:
        since = request.since
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        zone = MappingContext.zone(self.config.timezone)
        return SingleArrayPaginator(
            page_size=self.config.page_size,
            max_element_chars=self.config.max_record_bytes,
            keep=None if since is None else partial(_changed_since, since=since, zone=zone),
        )

    async def fetch_pages(self, request: FetchRequest) -> AsyncIterator[SourcePage]:
        pages = self.paginator(request).pages(self.client, self.list_path, {}, request.resume)
        try:
            async for page in pages:
                yield SourcePage(page.records, page.position)
        finally:
            await pages.aclose()


def _changed_since(record: Any, since: datetime, zone: tzinfo) -> bool:
    """Whether a record's `updatedAt` is at or after `since`. A record whose timestamp is
    missing or unreadable is kept: the mapping reports it rather than the filter hiding it."""
    if not isinstance(record, dict):
        return True
    text = record.get("updatedAt")
    if not isinstance(text, str):
        return True
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return True
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment >= since


MANIFEST = VendorManifest(
    type="citabox",
    adapter="adapters.citabox:Adapter",
    config="adapters.citabox:Config",
    mapping="mappings.citabox:MAPPING",
    sandbox_dialect="connector.sandbox.citabox:CitaBoxDialect",
    sandbox_port_offset=4,
)
