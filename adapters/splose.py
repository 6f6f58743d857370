"""Splose (`https://api.splose.com/v1`): bearer API key, keyset pagination by following the
root-relative `links.nextPage` of `GET /v1/invoices`, line items inside the rows, and a limit of
60 requests per minute per key that the client-side limiter never exceeds.

Splose invoices name the patient only by `patientId`, while MediTrak needs a name. Rather than
invent invoice fields, the adapter reads Splose's patient resource (`GET /v1/patients/{id}`)
once per distinct patient per run and attaches the answer to each raw invoice under the
namespaced key `_patient` (None when Splose answers 404). With `fetch_patients: false` those
calls are skipped and names stay empty, so validation reports FIELD_MISSING. Patient calls go
through the same client, so they count against the same rate limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr, model_validator

from connector.settings import HttpSettings, SourceConfig
from connector.sources.adapter import FetchRequest, ListDetailAdapter, SourcePage
from connector.sources.auth import BearerKey
from connector.sources.discovery import VendorManifest
from connector.sources.http import SourceClient
from connector.sources.lookups import GoneAsNone, PerRunLookup
from connector.sources.paginate import NextLinkPaginator, Paginator
from mappings.splose import DEFAULT_POLICY_PREFIXES, POLICY_PREFIXES_OPTION

# The raw-record key under which the patient resource is attached (never a Splose field).
PATIENT_KEY = "_patient"
# `update_gt` is strict: ask from a moment before the cursor so that an invoice updated in the
# cursor's own second is not skipped; the overlap is re-read and costs no write.
SINCE_MARGIN = timedelta(seconds=1)


class SploseHttpSettings(HttpSettings):
    # Splose allows 60 requests per minute per key; a limit is always on for this source.
    requests_per_minute: int = Field(60, ge=1)


class Config(SourceConfig):
    type: Literal["splose"] = "splose"
    base_url: str = "https://api.splose.com/v1/"
    api_key: SecretStr
    # Splose invoices carry no currency: it is the account's.
    currency: str = Field("AUD", pattern=r"^[A-Z]{3}$")
    http: SploseHttpSettings = SploseHttpSettings()
    include_archived: bool = False
    fetch_patients: bool = True
    # Labels of `referenceNumbers` entries ("Policy: POL-123456") holding a candidate policy
    # number, in order of preference. Medicare and DVA provider numbers are not listed by
    # default (they are not the clinic's insurance policy); an account that files its policies
    # under such a label lists it here, e.g. [Medicare, Policy, Insurance], the old default.
    policy_reference_prefixes: tuple[str, ...] = Field(DEFAULT_POLICY_PREFIXES, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _no_page_size(cls, data: Any) -> Any:
        # Splose fixes its page size (there is no `limit` parameter and unknown parameters are
        # rejected), so a configured page size could never be honoured.
        if isinstance(data, dict) and "page_size" in data:
            raise ValueError("page_size is not supported: Splose fixes the size of its pages")
        return data

    @property
    def mapping_options(self) -> dict[str, Any]:
        return {POLICY_PREFIXES_OPTION: list(self.policy_reference_prefixes)}


class Adapter(ListDetailAdapter):
    list_path = "invoices"
    patient_path = "patients/{id}"
    supports_since = True
    config: Config

    def __init__(self, config: SourceConfig, client: SourceClient) -> None:
        super().__init__(config, client)
        # An unknown patient (404) is attached as None: it leaves the name empty, so the
        # record is quarantined.
        self._patients = PerRunLookup(
            client,
            path=self.patient_path,
            key_of=patient_key,
            attach_as=PATIENT_KEY,
            when_gone=GoneAsNone(statuses=(404,)),
        )

    @classmethod
    def build_auth(cls, config: SourceConfig) -> httpx.Auth:
        assert isinstance(config, Config)
        return BearerKey(config.api_key)

    def paginator(self) -> Paginator:
        # Follow the links rather than computing `id_lt`: Splose does not document its order.
        return NextLinkPaginator(records_path="data", next_path="links.nextPage")

    def list_params(self, request: FetchRequest) -> dict[str, Any]:
        # Only documented parameters: Splose answers 400 to any other.
        params: dict[str, Any] = {}
        if self.config.include_archived:
            params["include_archived"] = "true"
        if request.since is not None:
            params["update_gt"] = splose_time(request.since - SINCE_MARGIN)
        return params

    def fetch_pages(self, request: FetchRequest) -> AsyncIterator[SourcePage]:
        pages = super().fetch_pages(request)
        return self._patients.attach_pages(pages) if self.config.fetch_patients else pages


def patient_key(raw: Any) -> str | None:
    """The positive integer `patientId` of a raw invoice as text, or None when unusable."""
    if not isinstance(raw, dict):
        return None
    value = raw.get("patientId")
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return str(value)
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        return str(int(value))
    return None


def splose_time(moment: datetime) -> str:
    """UTC with milliseconds and a Z, the form Splose itself writes."""
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


MANIFEST = VendorManifest(
    type="splose",
    adapter="adapters.splose:Adapter",
    config="adapters.splose:Config",
    mapping="mappings.splose:MAPPING",
    sandbox_dialect="connector.sandbox.splose:SploseDialect",
    sandbox_port_offset=2,
)
