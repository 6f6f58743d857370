"""The declarative `rest` source: a JSON-over-HTTP billing API described in the config file
alone (auth, list and detail endpoints, pagination, incremental sync, patient lookup) plus its
field mapping (`connector.mapping.declarative`), run by the shared client and paginators.

Everything is validated when the config loads, each problem with its path in the YAML; the
reference of every key is docs/adding-a-source.md.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connector.mapping.declarative import MISSING, FieldMapping, dig
from connector.mapping.kit import PATIENT_LOOKUP_KEY
from connector.mapping.types import parse_timestamp
from connector.settings import SourceConfig
from connector.sources.adapter import FetchRequest, ListDetailAdapter, SourcePage
from connector.sources.auth import BearerKey, OAuth2ClientCredentials, OAuth2Password
from connector.sources.discovery import VendorManifest
from connector.sources.http import SourceClient
from connector.sources.lookups import GoneAsNone, GoneFailsRecord, PerRunLookup
from connector.sources.paginate import (
    IndexedPaginator,
    ListPage,
    NextLinkPaginator,
    Paginator,
    Position,
    SingleArrayPaginator,
    records_at,
)

# Where the adapter puts a record's id for the quarantine key when the mapping reads it from
# somewhere other than a top-level `id` (the mapping's `record_id` sees no config).
RECORD_ID_KEY = "_record_id"
# The updated-since parameter's formats by name; anything else is a strftime pattern.
SINCE_FORMATS = ("iso_datetime_z", "iso_datetime", "iso_date", "epoch_seconds")


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _relative_path(value: str) -> str:
    if "://" in value or value.startswith("/"):
        raise ValueError(f"{value!r} must be relative to base_url (no scheme, no leading /)")
    return value


class BearerAuth(_Part):
    """`Authorization: Bearer <token>` with a static API key."""

    kind: Literal["bearer"]
    token: SecretStr


class HeaderAuth(_Part):
    """A static API key in a header of the vendor's choosing (`X-Api-Key: <key>`)."""

    kind: Literal["header"]
    header: str = Field(min_length=1, pattern=r"^[A-Za-z0-9-]+$")
    key: SecretStr
    prefix: str = ""


class ClientCredentialsAuth(_Part):
    kind: Literal["oauth2_client_credentials"]
    token_path: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    scope: str | None = None


class PasswordAuth(_Part):
    kind: Literal["oauth2_password"]
    token_path: str = Field(min_length=1)
    username: str = Field(min_length=1)
    password: SecretStr


class NoAuth(_Part):
    kind: Literal["none"]


AuthSpec = Annotated[
    BearerAuth | HeaderAuth | ClientCredentialsAuth | PasswordAuth | NoAuth,
    Field(discriminator="kind"),
]


class ListEndpoint(_Part):
    path: str = Field(min_length=1)
    # Fixed query parameters sent with every list request.
    params: dict[str, str | int | bool] = {}
    # Dotted path of the records in the answer's envelope; "" when the answer is the array.
    records: str = ""
    # Dotted path of the total (page/offset pagination), or of the next link (next_link).
    total: str | None = None
    next: str | None = None

    _relative = field_validator("path")(_relative_path)


class DetailEndpoint(_Part):
    """One call per listed record for the full record; `{id}` is percent-encoded."""

    path: str = Field(min_length=1)
    # Where the listed summary keeps the id, and where the detail answer keeps the record.
    id: str = "id"
    record: str = ""

    @field_validator("path")
    @classmethod
    def _has_id(cls, value: str) -> str:
        if "{id}" not in value:
            raise ValueError("the detail path must contain {id}")
        return _relative_path(value)


class Pagination(_Part):
    kind: Literal["page", "offset", "next_link", "single_array", "none"]
    page_param: str = "page"
    first_page: int = Field(1, ge=0)
    offset_param: str = "offset"
    size_param: str = "limit"


class Incremental(_Part):
    """Changes only: the vendor's updated-since parameter, or a client-side filter on a record
    field when the vendor has none (each run still reads the whole list, writes only changes)."""

    param: str | None = None
    format: str = "iso_datetime_z"
    field: str | None = None

    @field_validator("format")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in SINCE_FORMATS and "%" not in value:
            raise ValueError(f"unknown format {value!r} ({', '.join(SINCE_FORMATS)} or strftime)")
        return value

    @model_validator(mode="after")
    def _one_way(self) -> Incremental:
        if (self.param is None) == (self.field is None):
            raise ValueError("give either param (the vendor filters) or field (we filter)")
        return self


class PatientLookup(_Part):
    """`GET <path>` once per distinct patient per run, attached to the record as `_patient`
    (mapping paths read it as `_patient.<path>`)."""

    path: str = Field(min_length=1)
    # Where the record keeps the patient's id.
    id: str = "patient_id"
    # What a patient the vendor no longer has does: fail its invoices, or map without it.
    when_gone: Literal["fail_record", "ignore"] = "fail_record"
    gone_statuses: tuple[int, ...] = (404, 410)

    @field_validator("path")
    @classmethod
    def _has_id(cls, value: str) -> str:
        if "{id}" not in value:
            raise ValueError("the patient lookup path must contain {id}")
        return _relative_path(value)


class Config(SourceConfig):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: Literal["rest"] = "rest"
    auth: AuthSpec
    list_endpoint: ListEndpoint = Field(alias="list")
    detail_endpoint: DetailEndpoint | None = Field(None, alias="detail")
    pagination: Pagination
    incremental: Incremental | None = None
    patient_lookup: PatientLookup | None = None
    fields: FieldMapping

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        """The checks across keys, all of them at once, each named by its key."""
        kind = self.pagination.kind
        listing = self.list_endpoint
        problems = []
        if kind == "next_link" and not listing.next:
            problems.append("list.next: pagination next_link needs where the next link is")
        if kind != "next_link" and listing.next:
            problems.append(f"list.next: pagination {kind} follows no next link")
        if kind in ("single_array", "none") and listing.total:
            problems.append(f"list.total: pagination {kind} reads no total")
        if kind == "single_array" and listing.records:
            problems.append("list.records: pagination single_array reads a plain JSON array")
        if not self.status_map:
            problems.append("status_map: list the vendor's status words (none are built in)")
        if isinstance(self.auth, ClientCredentialsAuth | PasswordAuth):
            problem = self._token_url_problem(self.auth.token_path)
            if problem:
                problems.append(problem)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _token_url_problem(self, token_path: str) -> str | None:
        # The credentials travel to this URL: never in clear text to another host.
        url = urlsplit(self.token_url())
        if url.scheme not in ("http", "https") or not url.netloc:
            return f"auth.token_path: {token_path!r} does not make an http(s) URL"
        base = urlsplit(self.base_url)
        other_host = base.scheme != "http" or url.netloc != base.netloc
        if url.scheme == "http" and not self.allow_insecure_http and other_host:
            return "auth.token_path: plain http to another host; use https"
        return None

    def token_url(self) -> str:
        path = getattr(self.auth, "token_path", "")
        return str(httpx.URL(self.base_url).join(path))

    @property
    def mapping_options(self) -> dict[str, Any]:
        return {"fields": self.fields}

    def secrets(self) -> list[str]:
        nested = [
            value.get_secret_value()
            for value in self.auth.__dict__.values()
            if isinstance(value, SecretStr) and value.get_secret_value()
        ]
        return [*super().secrets(), *nested]


@dataclass(frozen=True)
class OneAnswer(Paginator):
    """A list answered whole in one envelope: no pagination parameters are sent."""

    records_path: str

    async def pages(
        self,
        client: SourceClient,
        path: str,
        params: Mapping[str, Any],
        resume: Position | None = None,
    ) -> AsyncIterator[ListPage]:
        body = await client.get_json(path, params)
        yield ListPage(records_at(body, self.records_path, f"GET {path}"), None, None, 0)


class HeaderKey(httpx.Auth):
    """A static key in a named header."""

    def __init__(self, header: str, key: SecretStr, prefix: str) -> None:
        self._header, self._key, self._prefix = header, key, prefix

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers[self._header] = f"{self._prefix}{self._key.get_secret_value()}"
        yield request

    def __repr__(self) -> str:
        return "HeaderKey(**********)"


def since_text(since: datetime, fmt: str, zone: tzinfo) -> str:
    """The updated-since value as the vendor wants it (naive formats: the source's zone)."""
    moment = since.astimezone(UTC)
    if fmt == "iso_datetime_z":
        return moment.isoformat().replace("+00:00", "Z")
    if fmt == "iso_datetime":
        return moment.isoformat()
    if fmt == "epoch_seconds":
        return str(int(moment.timestamp()))
    local = moment.astimezone(zone)
    if fmt == "iso_date":
        return local.date().isoformat()
    return local.strftime(fmt)


def changed_since(path: str, since: datetime, zone: tzinfo) -> Callable[[Any], bool]:
    """The client-side filter: a record whose field is before `since` is dropped; one without
    a readable value is kept (the mapping judges it)."""

    def keep(record: Any) -> bool:
        value = dig(record, path)
        if value is MISSING or value is None:
            return True
        try:
            moment = parse_timestamp(value)
        except Exception:
            return True
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=zone)
        return moment >= since

    return keep


class Adapter(ListDetailAdapter):
    list_path = ""
    config: Config

    def __init__(self, config: SourceConfig, client: SourceClient) -> None:
        super().__init__(config, client)
        lookup = self.config.patient_lookup
        self._patients: PerRunLookup | None = None
        if lookup is not None:
            gone: GoneAsNone | GoneFailsRecord
            if lookup.when_gone == "ignore":
                gone = GoneAsNone(statuses=lookup.gone_statuses)
            else:
                gone = GoneFailsRecord(
                    statuses=lookup.gone_statuses,
                    field=lookup.id,
                    label="patient",
                    record_key=self._record_key,
                )
            self._patients = PerRunLookup(
                client,
                path=lookup.path,
                key_of=_text_at(lookup.id),
                attach_as=PATIENT_LOOKUP_KEY,
                when_gone=gone,
            )

    @classmethod
    def build_auth(cls, config: SourceConfig) -> httpx.Auth | None:
        assert isinstance(config, Config)
        auth = config.auth
        if isinstance(auth, BearerAuth):
            return BearerKey(auth.token)
        if isinstance(auth, HeaderAuth):
            return HeaderKey(auth.header, auth.key, auth.prefix)
        if isinstance(auth, ClientCredentialsAuth):
            return OAuth2ClientCredentials(
                config.token_url(), auth.client_id, auth.client_secret, auth.scope
            )
        if isinstance(auth, PasswordAuth):
            return OAuth2Password(config.token_url(), auth.username, auth.password)
        return None

    def filters_since(self) -> bool:
        return self.config.incremental is not None

    def list_url(self) -> str:
        return self.config.list_endpoint.path

    def paginator(self) -> Paginator:
        cfg, listing, pages = self.config, self.config.list_endpoint, self.config.pagination
        if pages.kind == "next_link":
            assert listing.next is not None
            return NextLinkPaginator(records_path=listing.records, next_path=listing.next)
        if pages.kind == "single_array":
            return SingleArrayPaginator(page_size=cfg.page_size)
        if pages.kind == "none":
            return OneAnswer(records_path=listing.records)
        return IndexedPaginator(
            records_path=listing.records,
            total_path=listing.total,
            style=pages.kind,
            page_param=pages.page_param,
            offset_param=pages.offset_param,
            size_param=pages.size_param,
            page_size=cfg.page_size,
            first_page=pages.first_page,
            prefetch=cfg.http.concurrency,
        )

    def list_params(self, request: FetchRequest) -> dict[str, Any]:
        params: dict[str, Any] = dict(self.config.list_endpoint.params)
        incremental = self.config.incremental
        if request.since is not None and incremental is not None and incremental.param:
            zone = _zone(self.config.timezone)
            params[incremental.param] = since_text(request.since, incremental.format, zone)
        return params

    def needs_detail(self) -> bool:
        return self.config.detail_endpoint is not None

    def detail_url(self, record_id: str) -> str:
        detail = self.config.detail_endpoint
        assert detail is not None
        return detail.path.format(id=quote(record_id, safe=""))

    def summary_id(self, summary: Any) -> str | None:
        detail = self.config.detail_endpoint
        return _text_at(detail.id if detail else "id")(summary)

    def unwrap_detail(self, body: Any) -> Any:
        detail = self.config.detail_endpoint
        if detail is None or not detail.record:
            return body
        found = dig(body, detail.record)
        return None if found is MISSING else found

    def fetch_pages(self, request: FetchRequest) -> AsyncIterator[SourcePage]:
        pages = super().fetch_pages(request)
        incremental = self.config.incremental
        if request.since is not None and incremental is not None and incremental.field:
            zone = _zone(self.config.timezone)
            pages = _filtered(pages, changed_since(incremental.field, request.since, zone))
        if self._patients is not None:
            pages = self._patients.attach_pages(pages)
        id_paths = self.config.fields.id.path
        if id_paths and id_paths != ("id",):
            pages = _with_record_ids(pages, self._record_key)
        return pages

    def _record_key(self, raw: Any) -> str:
        for path in self.config.fields.id.path:
            found = _text_at(path)(raw)
            if found:
                return found
        return ""


def _zone(name: str) -> tzinfo:
    return UTC if name.upper() == "UTC" else ZoneInfo(name)


def _text_at(path: str) -> Callable[[Any], str | None]:
    def read(raw: Any) -> str | None:
        value = dig(raw, path)
        if isinstance(value, bool) or not isinstance(value, str | int):
            return None
        text = str(value).strip()
        return text[:200] or None

    return read


async def _filtered(
    pages: AsyncIterator[SourcePage], keep: Callable[[Any], bool]
) -> AsyncGenerator[SourcePage, None]:
    try:
        async for page in pages:
            records = [record for record in page.records if keep(record)]
            yield SourcePage(records, page.position, page.failures)
    finally:
        aclose = getattr(pages, "aclose", None)
        if aclose is not None:
            await aclose()


async def _with_record_ids(
    pages: AsyncIterator[SourcePage], key_of: Callable[[Any], str]
) -> AsyncGenerator[SourcePage, None]:
    try:
        async for page in pages:
            records = [
                {**raw, RECORD_ID_KEY: key_of(raw)} if isinstance(raw, dict) else raw
                for raw in page.records
            ]
            yield SourcePage(records, page.position, page.failures)
    finally:
        aclose = getattr(pages, "aclose", None)
        if aclose is not None:
            await aclose()


MANIFEST = VendorManifest(
    type="rest",
    adapter="adapters.rest:Adapter",
    config="adapters.rest:Config",
    mapping="mappings.rest:MAPPING",
)
