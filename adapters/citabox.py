"""CitaBox (Costa Rica): e-mail/password login answering a token and clinic memberships, an
`x-clinic-id` header on every call, and `GET /billing/invoices` answering one plain JSON array.

The array has no pagination and no filters, so it is stream-parsed element by element (never
held whole), filtered on `updatedAt` here, and handed on in pages whose position is the number
of array elements already dealt with.
"""

from __future__ import annotations

import asyncio
import codecs
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, tzinfo
from typing import Any, ClassVar, Literal
from urllib.parse import urljoin

import httpx
import orjson
from pydantic import Field, SecretStr

from connector.errors import AuthError, ContractError, RetriableError, RetriesExhausted
from connector.mapping.kit import MappingContext
from connector.settings import SourceConfig
from connector.sources.adapter import Adapter as BaseAdapter
from connector.sources.adapter import FetchRequest, SourcePage
from connector.sources.auth import Token, TokenAuth
from connector.sources.http import ErrorDescriber, describe_json_error, describe_transport_error
from connector.sources.paginate import Position

LOGIN_PATH = "auth/login"
INVOICES_PATH = "billing/invoices"
# Bytes asked of the socket per read while streaming the invoice array.
_CHUNK_BYTES = 64 * 1024


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
    if isinstance(message, list):
        said = "; ".join(str(m) for m in message[:5] if str(m))
    else:
        said = str(message) if message not in (None, "") else ""
    error = body.get("error")
    if isinstance(error, str) and error and error != said:
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


# -- streaming a JSON array -----------------------------------------------------------------


class JsonArraySplitter:
    """Splits a JSON array arriving in byte chunks into its elements, one at a time.

    Each element is decoded by the C-accelerated `json` scanner as soon as it is complete, so
    memory holds one chunk plus the element in progress, never the whole array. An element cut
    by a chunk boundary is retried once twice as much of it has arrived (linear overall).
    """

    def __init__(self, *, max_element_chars: int, where: str) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self._json = json.JSONDecoder()
        self._max = max_element_chars
        self._where = where
        self._buffer = ""
        # "start" → "value" (after "[" or ",") / "first" (right after "[") → "after" → "done"
        self._state = "start"
        self._wait_for = 0  # buffer length to reach before retrying an incomplete element

    def feed(self, data: bytes) -> list[Any]:
        try:
            self._buffer += self._decoder.decode(data)
        except UnicodeDecodeError as exc:
            raise ContractError(f"{self._where}: answer is not UTF-8 ({exc.reason})") from None
        return self._drain(final=False)

    def close(self) -> list[Any]:
        """The last elements; raises if the array never ended."""
        try:
            self._buffer += self._decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise ContractError(f"{self._where}: answer is not UTF-8 ({exc.reason})") from None
        elements = self._drain(final=True)
        if self._state != "done":
            raise ContractError(f"{self._where}: the JSON array ended early (truncated answer)")
        return elements

    def _fail(self, found: str) -> ContractError:
        return ContractError(f"{self._where}: expected a JSON array of invoices, found {found}")

    def _drain(self, *, final: bool) -> list[Any]:
        elements: list[Any] = []
        text = self._buffer
        size = len(text)
        pos = 0
        while True:
            while pos < size and text[pos] in " \t\r\n":
                pos += 1
            if pos >= size:
                break
            char = text[pos]
            state = self._state
            if state == "start":
                if char != "[":
                    raise self._fail(repr(text[pos : pos + 20]))
                self._state, pos = "first", pos + 1
            elif state == "done":
                raise self._fail(f"data after the array: {text[pos : pos + 20]!r}")
            elif state == "after":
                if char == ",":
                    self._state, pos = "value", pos + 1
                elif char == "]":
                    self._state, pos = "done", pos + 1
                else:
                    raise self._fail(f"{char!r} between elements")
            elif char == "]" and state == "first":
                self._state, pos = "done", pos + 1
            else:
                if not final and size - pos < self._wait_for:
                    break
                try:
                    element, end = self._json.raw_decode(text, pos)
                except json.JSONDecodeError as exc:
                    if final:
                        raise self._fail(f"invalid JSON ({exc.msg})") from None
                    # Most likely cut by the chunk boundary; if it is plainly invalid, the
                    # size bound or the end of the answer reports it.
                    self._need_more(size - pos, exc.msg)
                    break
                if end >= size and not final:
                    # A number at the very end may continue in the next chunk ("12" of "125").
                    self._need_more(size - pos, "incomplete")
                    break
                elements.append(element)
                self._state, pos, self._wait_for = "after", end, 0
        self._buffer = text[pos:]
        return elements

    def _need_more(self, pending: int, problem: str) -> None:
        if pending > self._max:
            raise ContractError(
                f"{self._where}: an array element is still not valid JSON after {self._max} "
                f"characters ({problem}): the answer is malformed, or the element exceeds "
                "max_record_bytes"
            )
        self._wait_for = max(pending + 1, 2 * pending)


# -- the adapter ----------------------------------------------------------------------------


class Adapter(BaseAdapter):
    """The invoice array, streamed and handed on in pages of `page_size` records; position
    `{"skip": n}` means the first n array elements were handed on or filtered out."""

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

    async def fetch_pages(self, request: FetchRequest) -> AsyncIterator[SourcePage]:
        since = request.since
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        zone = MappingContext.zone(self.config.timezone)
        page: list[Any] = []
        async for index, record in self._elements(_skip_of(request.resume)):
            if since is not None and not _changed_since(record, since, zone):
                continue
            if len(page) >= self.config.page_size:
                # Everything before `index` is handed on or filtered out.
                yield SourcePage(page, {"skip": index})
                page = []
            page.append(record)
        # Held back one record so that the last page is the one whose position is None.
        yield SourcePage(page, None)

    async def _elements(self, skip: int) -> AsyncIterator[tuple[int, Any]]:
        """(array index, element) from index `skip` on. A transient failure, even mid-stream,
        re-requests the array and skips what was already dealt with."""
        settings = self.client.settings
        next_index = skip
        failures = 0
        while True:
            try:
                async with self.client.stream("GET", self.list_path) as response:
                    where = f"GET {self.list_path}"
                    splitter = JsonArraySplitter(
                        max_element_chars=self.config.max_record_bytes, where=where
                    )
                    index = 0
                    async for chunk in response.aiter_bytes(_CHUNK_BYTES):
                        for element in splitter.feed(chunk):
                            if index >= next_index:
                                yield index, element
                                next_index, failures = index + 1, 0
                            index += 1
                    for element in splitter.close():
                        if index >= next_index:
                            yield index, element
                            next_index = index + 1
                        index += 1
                return
            except (RetriableError, httpx.TransportError) as exc:
                failures += 1
                said = (
                    describe_transport_error(exc)
                    if isinstance(exc, httpx.TransportError)
                    else str(exc)
                )
                if failures > settings.max_retries:
                    raise RetriesExhausted(
                        f"GET {self.list_path} still failing after {failures} attempts: {said}"
                    ) from None
                await asyncio.sleep(self.client.retry_delay(failures, exc))


def _skip_of(position: Position | None) -> int:
    if not position:
        return 0
    skip = position.get("skip", 0)
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise ContractError(f"unusable resume position {position!r}")
    return skip


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
