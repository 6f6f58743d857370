"""The declarative `rest` source: a JSON-over-HTTP billing API described in the config file
alone (auth, list and detail endpoints, pagination, incremental sync, patient lookup) plus its
field mapping (`connector.mapping.declarative`), run by the shared client and paginators.

Everything is validated when the config loads, each problem with its path in the YAML; the
reference of every key is docs/adding-a-source.md.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

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
    # The vendor's invoice-date range, both ends inclusive: what `connector backfill` sends
    # for each window. Both names or neither; the format is iso_date or a strftime pattern.
    date_from_param: str | None = Field(None, min_length=1)
    date_to_param: str | None = Field(None, min_length=1)
    date_format: str = "iso_date"

    _relative = field_validator("path")(_relative_path)

    @field_validator("date_format")
    @classmethod
    def _known_date_format(cls, value: str) -> str:
        if value != "iso_date" and "%" not in value:
            raise ValueError(f"unknown format {value!r} (iso_date or a strftime pattern)")
        return value


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

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem_at_once(
        cls, data: Any, handler: ModelWrapValidatorHandler[Config]
    ) -> Config:
        """The checks across keys join the field errors of the same pass, each with its own
        path: on a valid config they read the model, else (best effort) the raw YAML."""
        try:
            config = handler(data)
        except ValidationError as exc:
            across = across_keys(RawView(data)) if isinstance(data, dict) else []
            if not across:
                raise
            raise _with_problems(exc.errors(), across, data) from None
        across = across_keys(config)
        if across:
            raise _with_problems([], across, data)
        return config

    def token_url(self) -> str:
        return token_url(self.base_url, getattr(self.auth, "token_path", ""))

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
class RawView:
    """The raw YAML of a source, read defensively: a key of the wrong shape reads as absent
    (its own field error says what is wrong with it)."""

    raw: dict[str, Any]

    def part(self, *keys: str) -> str | None:
        """The text at `keys`; None when absent or not text."""
        node: Any = self.raw
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return node if isinstance(node, str) else None

    @property
    def base_url(self) -> Any:
        return self.raw.get("base_url")

    @property
    def allow_insecure_http(self) -> bool:
        return self.raw.get("allow_insecure_http") is True

    @property
    def status_map(self) -> Any:
        return self.raw.get("status_map", {})


def across_keys(view: Config | RawView) -> list[tuple[tuple[str, ...], str]]:
    """Problems that no single key shows: (YAML path, message)."""
    if isinstance(view, RawView):
        kind, next_link = view.part("pagination", "kind"), view.part("list", "next")
        total, records = view.part("list", "total"), view.part("list", "records")
        date_from, date_to = (
            view.part("list", "date_from_param"),
            view.part("list", "date_to_param"),
        )
        auth_kind, token_path = view.part("auth", "kind"), view.part("auth", "token_path")
        has_token_url = auth_kind in ("oauth2_client_credentials", "oauth2_password")
    else:
        kind, listing = view.pagination.kind, view.list_endpoint
        next_link, total, records = listing.next, listing.total, listing.records
        date_from, date_to = listing.date_from_param, listing.date_to_param
        token_path = getattr(view.auth, "token_path", None)
        has_token_url = isinstance(view.auth, ClientCredentialsAuth | PasswordAuth)
    problems: list[tuple[tuple[str, ...], str]] = []
    if kind == "next_link" and not next_link:
        problems.append((("list", "next"), "pagination next_link needs where the next link is"))
    if kind in ("page", "offset", "single_array", "none") and next_link:
        problems.append((("list", "next"), f"pagination {kind} follows no next link"))
    if kind in ("single_array", "none") and total:
        problems.append((("list", "total"), f"pagination {kind} reads no total"))
    if kind == "single_array" and records:
        problems.append((("list", "records"), "pagination single_array reads a plain JSON array"))
    if bool(date_from) != bool(date_to):
        missing = "date_to_param" if date_from else "date_from_param"
        problems.append(
            (("list", missing), "a date range needs both ends (date_from_param and date_to_param)")
        )
    if isinstance(view.status_map, dict) and not view.status_map:
        problems.append((("status_map",), "list the vendor's status words (none are built in)"))
    if has_token_url and isinstance(token_path, str) and isinstance(view.base_url, str):
        problem = _token_url_problem(view.base_url, token_path, view.allow_insecure_http)
        if problem:
            problems.append((("auth", "token_path"), problem))
    return problems


def token_url(base_url: str, token_path: str) -> str:
    return str(httpx.URL(base_url).join(token_path))


def _token_url_problem(base_url: str, token_path: str, insecure: bool) -> str | None:
    # The credentials travel to this URL: never in clear text to another host.
    try:
        url = urlsplit(token_url(base_url, token_path))
        base = urlsplit(base_url)
    except (httpx.InvalidURL, ValueError, TypeError):
        return None  # base_url's own check names the problem
    if url.scheme not in ("http", "https") or not url.netloc:
        return f"{token_path!r} does not make an http(s) URL"
    other_host = base.scheme != "http" or url.netloc != base.netloc
    if url.scheme == "http" and not insecure and other_host:
        return "plain http to another host; use https"
    return None


def _with_problems(
    errors: list[ErrorDetails], across: list[tuple[tuple[str, ...], str]], data: Any
) -> ValidationError:
    """One ValidationError holding the field errors and the problems across keys."""
    # Messages are kept as written: without a context PydanticCustomError formats nothing.
    details = [
        InitErrorDetails(
            type=PydanticCustomError(error["type"], error["msg"]),
            loc=error["loc"],
            input=error["input"],
        )
        for error in errors
    ]
    details += [
        InitErrorDetails(type=PydanticCustomError("across_keys", message), loc=loc, input=data)
        for loc, message in across
    ]
    return ValidationError.from_exception_data("rest source", details)


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


def date_text(day: date, fmt: str) -> str:
    """A date-range bound as the vendor wants it."""
    return day.isoformat() if fmt == "iso_date" else day.strftime(fmt)


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

    @classmethod
    def narrows_by_date(cls, config: SourceConfig) -> bool:
        return isinstance(config, Config) and config.list_endpoint.date_from_param is not None

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
        listing = self.config.list_endpoint
        for day, name in (
            (request.date_from, listing.date_from_param),
            (request.date_to, listing.date_to_param),
        ):
            if day is not None and name:
                params[name] = date_text(day, listing.date_format)
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
