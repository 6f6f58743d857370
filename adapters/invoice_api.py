"""The FastAPI-style "Invoice API": OAuth2 password login, `GET /invoice/` walked by offset and
limit with a `{total, offset, limit, data}` envelope, line items inside the list rows.

Invoices carry only a `patient_id`. When `fetch_patients` is on (the default) the adapter calls
`GET patient/{id}` once per distinct patient per run and attaches the answer to each raw record
under the key `"_patient"` (the leading underscore keeps it apart from the vendor's own fields),
so the pure mapping can read the patient's name and insurance policy number. A patient the
vendor no longer has (404/410/422) fails only the invoices pointing at it (DETAIL_UNAVAILABLE).

The API documents no updated-since filter, so every sync is a full scan (unchanged records cost
no write); offset drift while records are added or removed mid-run is handled by the
paginator's rescan. The token path is unconfirmed and configurable (`token_path`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import httpx
import orjson
from pydantic import Field, SecretStr, field_validator, model_validator

from connector.settings import SourceConfig
from connector.sources.adapter import FetchRequest, ListDetailAdapter, SourcePage
from connector.sources.auth import OAuth2Password
from connector.sources.bodies import is_safe_vendor_text, safe_vendor_text
from connector.sources.discovery import VendorManifest
from connector.sources.http import ErrorDescriber, SourceClient
from connector.sources.lookups import GoneFailsRecord, PerRunLookup
from connector.sources.paginate import IndexedPaginator, Paginator

PATIENT_KEY = "_patient"
InvoiceStatusWord = Literal["DRAFT", "ISSUED", "PARTIALY_PAID", "PAID", "VOID", "WRITTEN_OFF"]


class Config(SourceConfig):
    type: Literal["invoice_api"] = "invoice_api"
    username: str = Field(min_length=1)
    password: SecretStr
    # Where the OAuth2 password form is posted: relative to base_url, or an absolute URL.
    token_path: str = Field("token", min_length=1)
    fetch_patients: bool = True
    patient_path: str = "patient/{id}"
    order_by: str = Field("created_at", min_length=1)
    status_filter: InvoiceStatusWord | None = None

    @field_validator("patient_path")
    @classmethod
    def _patient_path_has_id(cls, value: str) -> str:
        if "{id}" not in value:
            raise ValueError("patient_path must contain {id}")
        return value

    @model_validator(mode="after")
    def _token_url_is_safe(self) -> Config:
        # The password travels to this URL: never in clear text to another host.
        url = urlsplit(self.token_url())
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(f"token_path {self.token_path!r} does not make an http(s) URL")
        if url.scheme == "http" and not self.allow_insecure_http:
            base = urlsplit(self.base_url)
            if base.scheme != "http" or url.netloc != base.netloc:
                raise ValueError(
                    "token_path is plain http: use https, or set allow_insecure_http: true"
                )
        return self

    def token_url(self) -> str:
        return str(httpx.URL(self.base_url).join(self.token_path))


def describe_fastapi_error(response: httpx.Response) -> str | None:
    """FastAPI's `{"detail": "..."}` or 422 `{"detail": [{loc, msg, type}]}` as one line.

    Only `loc` and `msg` are read: newer FastAPI echoes the rejected `input`, which may be a
    credential.
    """
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    detail = body.get("detail") if isinstance(body, dict) else None
    # Every piece of vendor text passes the patient-data filter (connector.sources.bodies).
    if isinstance(detail, str) and detail.strip():
        return safe_vendor_text(detail.strip())[:300]
    if isinstance(detail, list):
        parts = []
        for entry in detail[:5]:
            if not isinstance(entry, dict):
                continue
            location = ".".join(str(p) for p in entry.get("loc") or [])
            location = location if is_safe_vendor_text(location) else ""
            message = safe_vendor_text(str(entry.get("msg") or entry.get("type") or "invalid"))
            parts.append(f"{location}: {message}" if location else message)
        return "; ".join(parts)[:300] or None
    return None


class PasswordLogin(OAuth2Password):
    """The OAuth2 password grant; a refused login is explained by the FastAPI-aware describer,
    which never prints the echoed `input` of a 422 (the password)."""

    def describe_login_error(self, response: httpx.Response) -> str | None:
        return describe_fastapi_error(response)


class Adapter(ListDetailAdapter):
    list_path = "invoice/"
    config: Config
    describe_error: ClassVar[ErrorDescriber] = staticmethod(describe_fastapi_error)

    def __init__(self, config: SourceConfig, client: SourceClient) -> None:
        super().__init__(config, client)
        # A patient the vendor no longer has fails only the invoices pointing at it.
        self._patients = PerRunLookup(
            client,
            path=self.config.patient_path,
            key_of=_patient_id,
            attach_as=PATIENT_KEY,
            when_gone=GoneFailsRecord(
                statuses=(404, 410, 422),
                field="patient_id",
                label="patient",
                record_key=_record_key,
            ),
        )

    @classmethod
    def build_auth(cls, config: SourceConfig) -> httpx.Auth:
        assert isinstance(config, Config)
        return PasswordLogin(config.token_url(), config.username, config.password)

    def paginator(self) -> Paginator:
        return IndexedPaginator(
            records_path="data",
            total_path="total",
            style="offset",
            offset_param="offset",
            size_param="limit",
            page_size=self.config.page_size,
            prefetch=self.config.http.concurrency,
        )

    def list_params(self, request: FetchRequest) -> dict[str, Any]:
        params: dict[str, Any] = {"order_by": self.config.order_by}
        if self.config.status_filter:
            params["status"] = self.config.status_filter
        return params

    def fetch_pages(self, request: FetchRequest) -> AsyncIterator[SourcePage]:
        pages = super().fetch_pages(request)
        return self._patients.attach_pages(pages) if self.config.fetch_patients else pages


def _patient_id(raw: Any) -> str | None:
    value = raw.get("patient_id") if isinstance(raw, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def _record_key(raw: Any) -> str:
    value = raw.get("id") if isinstance(raw, dict) else None
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""


MANIFEST = VendorManifest(
    type="invoice_api",
    adapter="adapters.invoice_api:Adapter",
    config="adapters.invoice_api:Config",
    mapping="mappings.invoice_api:MAPPING",
    sandbox_dialect="connector.sandbox.invoice_api:InvoiceApiDialect",
    sandbox_port_offset=5,
)
