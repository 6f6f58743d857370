"""CitaBox (Costa Rica): e-mail/password login answering a token and clinic memberships, an
`x-clinic-id` header on every call, and `GET /billing/invoices` answering one plain JSON array.

The array has no pagination and no filters: the core `SingleArrayPaginator` stream-parses it
element by element (never held whole) and retries a dropped answer through the client; this
adapter filters on `updatedAt` on the way. One source may read several clinics of a login (a
list of ids, or `all`): they are read one after the other, each record tagged with its clinic.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from functools import partial
from typing import Any, ClassVar, Literal
from urllib.parse import urljoin

import httpx
import orjson
from pydantic import Field, SecretStr, field_validator

from connector.errors import AuthError, ContractError
from connector.mapping.kit import MappingContext
from connector.settings import SourceConfig
from connector.sources.adapter import Adapter as BaseAdapter
from connector.sources.adapter import FetchRequest, SourcePage
from connector.sources.auth import Token, TokenAuth
from connector.sources.bodies import describe_json_error, safe_vendor_text
from connector.sources.discovery import VendorManifest
from connector.sources.http import ErrorDescriber
from connector.sources.paginate import Position, SingleArrayPaginator
from mappings.citabox import CLINIC_TAG

LOGIN_PATH = "auth/login"
INVOICES_PATH = "billing/invoices"
# `clinic_id: all`: every clinic the login belongs to.
ALL_CLINICS = "all"


class Config(SourceConfig):
    type: Literal["citabox"] = "citabox"
    email: str = Field(min_length=3)
    password: SecretStr
    # Which clinic(s) to read: one id; a list of ids or "all" (every membership), read one
    # after the other under this source with keys "<clinic>:<id>"; None only suits a login
    # that belongs to exactly one clinic (several: the source stops and names them).
    clinic_id: str | list[str] | None = None
    currency: str = Field("CRC", pattern=r"^[A-Z]{3}$")
    # Naive timestamps are read in this zone, and invoice dates are createdAt's date here.
    timezone: str = "America/Costa_Rica"
    # Records handed on per page (one store batch); the vendor itself answers one array.
    page_size: int = Field(500, ge=1, le=10000)
    # CitaBox invoices do not name the clinic; this becomes the canonical `facility`.
    facility: str | None = None
    # One array element larger than this (in characters) is a broken answer, not an invoice.
    max_record_bytes: int = Field(1_000_000, ge=1024)

    @field_validator("clinic_id", mode="before")
    @classmethod
    def _clinic_shape(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str | int) and not isinstance(value, bool):
            text = str(value).strip()
            if not text:
                raise ValueError("clinic_id is empty: give a clinic id, a list of them or 'all'")
            return ALL_CLINICS if text.lower() == ALL_CLINICS else text
        if not isinstance(value, list):
            raise ValueError("clinic_id must be a clinic id, a list of clinic ids or 'all'")
        ids: list[str] = []
        for item in value:
            text = str(item).strip() if isinstance(item, str | int) else ""
            if not text or isinstance(item, bool):
                raise ValueError(f"clinic_id list: {item!r} is not a clinic id")
            if text.lower() == ALL_CLINICS:
                raise ValueError("clinic_id: write 'all' alone, not inside a list")
            if text in ids:
                raise ValueError(f"clinic_id list: {text!r} is listed twice")
            ids.append(text)
        if not ids:
            raise ValueError("clinic_id list is empty: list clinic ids or write 'all'")
        return ids

    @property
    def several_clinics(self) -> bool:
        """Whether the source reads a group of clinics (a list, or `all`), keyed by clinic,
        rather than one clinic with the vendor's plain ids. Decided by the shape of the
        setting, not by how many clinics it finds today, so keys never change when a clinic
        joins or leaves the group."""
        return isinstance(self.clinic_id, list) or self.clinic_id == ALL_CLINICS

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


# -- auth and clinics ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Clinic:
    id: str
    name: str

    def __str__(self) -> str:
        # Clinic names are the practice's, not a patient's: safe in errors and logs.
        return f"{self.id} ({self.name})"


def member_clinics(memberships: Any) -> list[Clinic]:
    """The clinics of a login answer's memberships, in the vendor's order, each once."""
    clinics: dict[str, Clinic] = {}
    for membership in memberships if isinstance(memberships, list) else []:
        if isinstance(membership, dict) and membership.get("clinic_id") is not None:
            clinic_id = str(membership["clinic_id"])
            name = membership.get("clinic_name")
            clinics.setdefault(clinic_id, Clinic(clinic_id, str(name) if name else "unnamed"))
    return list(clinics.values())


def select_clinics(wanted: str | Sequence[str] | None, clinics: list[Clinic]) -> list[Clinic]:
    """The clinics a `clinic_id` setting means among the login's memberships, in reading
    order (the list's order; the memberships' for `all`). Never a silent choice: a missing
    setting with several memberships, or an id the login does not belong to, is an error
    naming the login's clinics."""
    listed = ", ".join(str(c) for c in clinics)
    if not clinics:
        raise AuthError(
            f"POST {LOGIN_PATH}: the login has no clinic memberships, so there is no "
            "clinic whose invoices it may read"
        )
    if wanted is None:
        if len(clinics) == 1:
            return clinics
        raise AuthError(
            f"this CitaBox login belongs to {len(clinics)} clinics: {listed}; nothing was "
            "synced: set clinic_id to one of them, to a list of them, or to 'all' for every one"
        )
    if wanted == ALL_CLINICS:
        return clinics
    ids = [wanted] if isinstance(wanted, str) else list(wanted)
    by_id = {c.id: c for c in clinics}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        named = ", ".join(repr(i) for i in unknown)
        raise AuthError(
            f"clinic_id {named}: not among the clinics this CitaBox login belongs to "
            f"({listed}); set clinic_id to one of them, a list of them, or 'all'"
        )
    return [by_id[i] for i in ids]


class CitaBoxLogin(TokenAuth):
    """`POST auth/login {email, password}` → `{access_token, memberships}`; every request then
    carries the bearer token and an `x-clinic-id`: the clinic being read (`reading`, set by
    the adapter when it reads several), else the one clinic the setting selects.

    The token lifetime is undocumented, so the token is kept until a 401 and then renewed once
    (the base class's flow).
    """

    def __init__(
        self,
        login_url: str,
        email: str,
        password: SecretStr,
        clinic_id: str | Sequence[str] | None,
    ) -> None:
        super().__init__(password)
        self.login_url = login_url
        self._email = email
        self._password = password
        self._clinic_id = clinic_id
        self.reading: str | None = None

    def build_token_request(self) -> httpx.Request:
        return httpx.Request("POST", self.login_url, json=self.login_body())

    def login_body(self) -> dict[str, str]:
        return {"email": self._email, "password": self._password.get_secret_value()}

    def read_token(self, body: dict[str, Any]) -> Token:
        value = body["access_token"]
        if not isinstance(value, str) or not value:
            raise ValueError("access_token missing")
        clinics = select_clinics(self._clinic_id, member_clinics(body.get("memberships")))
        return Token(value, None, {"clinic_id": clinics[0].id, "clinics": clinics})

    def accept_login(self, response: httpx.Response) -> Token:
        """Take a login answer the adapter sent itself (to learn the clinics before reading
        any): the same checks and errors as the flow's own logins."""
        self.token_requests += 1
        self._token = self._read(response)
        return self._token

    def decorate(self, request: httpx.Request, token: Token) -> None:
        super().decorate(request, token)
        request.headers["x-clinic-id"] = self.reading or str(token.extra["clinic_id"])

    def describe_login_error(self, response: httpx.Response) -> str | None:
        return describe_nestjs_error(response)


# -- the adapter ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupPosition:
    """Where a read of several clinics stands: the clinics finished, the one being read, the
    array elements of it already handed on, and the latest `updatedAt` handed on per clinic
    in this run. Stored as `{"clinics_done": [...], "clinic": id, "skip": n, "latest": {}}`
    with each batch."""

    done: tuple[str, ...] = ()
    clinic: str | None = None
    skip: int = 0
    latest: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, position: Position | None) -> GroupPosition:
        if not position or "clinic" not in position:
            # Nothing to resume, or a one-clinic position from before the setting changed:
            # start over (what is stored already is recognised and not written again).
            return cls()
        done, clinic, skip = position.get("clinics_done"), position["clinic"], position.get("skip")
        latest = position.get("latest", {})
        if (
            not isinstance(done, list)
            or not all(isinstance(d, str) for d in done)
            or not isinstance(clinic, str)
            or isinstance(skip, bool)
            or not isinstance(skip, int)
            or skip < 0
            or not isinstance(latest, dict)
            or not all(isinstance(v, str) for v in latest.values())
        ):
            raise ContractError(f"unusable resume position {position!r}")
        return cls(tuple(done), clinic, skip, dict(latest))

    def dump(self) -> Position:
        return {
            "clinics_done": list(self.done),
            "clinic": self.clinic,
            "skip": self.skip,
            "latest": dict(self.latest),
        }


class Adapter(BaseAdapter):
    """The invoice array through the core `SingleArrayPaginator`: streamed, filtered on
    `updatedAt` on the way, handed on in pages of `page_size` records; position `{"skip": n}`
    means the first n array elements were handed on or filtered out.

    Several clinics (`clinic_id` a list or `all`) are read one after the other in a fixed
    order, each record tagged with its clinic under `_clinic`; the position (`GroupPosition`)
    names the clinic and the elements of it handed on, so a resumed run continues there."""

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
        if self.config.several_clinics:
            group = self._clinic_group(request)
            try:
                async for clinic_page in group:
                    yield clinic_page
            finally:
                await group.aclose()
            return
        resume = request.resume
        if resume and "clinic" in resume:
            resume = None  # a position of several clinics, from before the setting changed
        pages = self.paginator(request).pages(self.client, self.list_path, {}, resume)
        try:
            async for page in pages:
                yield SourcePage(page.records, page.position)
        finally:
            await pages.aclose()

    @property
    def login(self) -> CitaBoxLogin:
        auth = self.client._client.auth
        assert isinstance(auth, CitaBoxLogin)
        return auth

    async def clinics(self) -> list[Clinic]:
        """The clinics this source reads, in order: logs in first when no token is held."""
        login = self.login
        token = login.token
        if token is None:
            # Sent without the auth flow (which would log in before its own login).
            answer = await self.client.request(
                "POST", login.login_url, json=login.login_body(), auth=None
            )
            token = login.accept_login(answer)
        clinics: list[Clinic] = token.extra["clinics"]
        return clinics

    async def _clinic_group(self, request: FetchRequest) -> AsyncGenerator[SourcePage, None]:
        """Each clinic in turn. An incremental run (`request.since` set) filters each clinic on
        its own cursor, carried from the last finished run: the source's one cursor is the
        latest change of any clinic, which could pass over another clinic's changes."""
        start = GroupPosition.read(request.resume)
        clinics = [c for c in await self.clinics() if c.id not in start.done]
        # The clinic a resumed run stopped in comes first; one no longer selected is dropped.
        clinics.sort(key=lambda c: c.id != start.clinic)
        carried = _clinic_cursors(request.carried)
        zone = MappingContext.zone(self.config.timezone)
        done, latest = list(start.done), dict(start.latest)
        for index, clinic in enumerate(clinics):
            skip = start.skip if clinic.id == start.clinic else 0
            following = clinics[index + 1].id if index + 1 < len(clinics) else None
            tag = {"clinic_id": clinic.id, "clinic_name": clinic.name}
            cursor = carried.get(clinic.id)
            # A clinic without a cursor of its own (new to the group) is read whole.
            since = cursor - self.config.lookback if request.since and cursor else None
            self.login.reading = clinic.id
            pages = self.paginator(replace(request, since=since)).pages(
                self.client, self.list_path, {}, {"skip": skip}
            )
            try:
                async for page in pages:
                    for record in page.records:
                        if isinstance(record, dict):
                            record[CLINIC_TAG] = tag
                            _note_latest(latest, clinic.id, record, zone)
                    carry = None
                    if page.position is not None:
                        at = GroupPosition(tuple(done), clinic.id, page.position["skip"], latest)
                    elif following is not None:
                        at = GroupPosition((*done, clinic.id), following, 0, latest)
                    else:
                        at = None
                        carry = {CLINIC_CURSORS: _merged_cursors(carried, latest, clinics)}
                    # Copied: the engine writes a page's position after the next is read.
                    position = None if at is None else at.dump()
                    yield SourcePage(page.records, position, carry=carry)
            finally:
                await pages.aclose()
                self.login.reading = None
            done.append(clinic.id)


# The key of the per-clinic cursors in what a clinic group carries to its next run.
CLINIC_CURSORS = "clinic_cursors"


def _clinic_cursors(carried: dict[str, Any] | None) -> dict[str, datetime]:
    """The per-clinic cursors a finished run left; anything unreadable is no cursor."""
    found = (carried or {}).get(CLINIC_CURSORS)
    cursors: dict[str, datetime] = {}
    for clinic, text in found.items() if isinstance(found, dict) else ():
        moment = _parse_moment(text, UTC)
        if moment is not None:
            cursors[str(clinic)] = moment
    return cursors


def _merged_cursors(
    carried: dict[str, datetime], latest: dict[str, str], clinics: list[Clinic]
) -> dict[str, str]:
    """Each clinic's cursor after this run: the later of the carried one and this run's
    latest change. Clinics finished by an earlier part of a resumed run are in `latest`."""
    merged = {clinic: moment.isoformat() for clinic, moment in carried.items()}
    for clinic, text in latest.items():
        known = carried.get(clinic)
        moment = _parse_moment(text, UTC)
        if moment is not None and (known is None or moment > known):
            merged[clinic] = moment.isoformat()
    return merged


def _note_latest(latest: dict[str, str], clinic: str, record: dict[str, Any], zone: tzinfo) -> None:
    moment = _parse_moment(record.get("updatedAt"), zone)
    if moment is None:
        return
    known = _parse_moment(latest.get(clinic), UTC)
    if known is None or moment > known:
        latest[clinic] = moment.astimezone(UTC).isoformat()


def _parse_moment(text: Any, zone: tzinfo) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def _changed_since(record: Any, since: datetime, zone: tzinfo) -> bool:
    """Whether a record's `updatedAt` is at or after `since`. A record whose timestamp is
    missing or unreadable is kept: the mapping reports it rather than the filter hiding it."""
    if not isinstance(record, dict):
        return True
    moment = _parse_moment(record.get("updatedAt"), zone)
    return moment is None or moment >= since


MANIFEST = VendorManifest(
    type="citabox",
    adapter="adapters.citabox:Adapter",
    config="adapters.citabox:Config",
    mapping="mappings.citabox:MAPPING",
    sandbox_dialect="connector.sandbox.citabox:CitaBoxDialect",
    sandbox_port_offset=4,
)
