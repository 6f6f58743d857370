"""Bio Ecko Billing API v1: OAuth2 client credentials (billing:read), page+per_page invoice
summaries, and one detail call per invoice for line items, GST, payments and balance.

The doc calls the list answer an "Array of invoice summaries" without showing the envelope,
so where the records and the total sit is configuration (`records_field`, `total_field`,
`detail_field`); the defaults follow the `{"data": [...], "meta": {"total"}}` shape.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar, Literal

import httpx
import orjson
from pydantic import Field, SecretStr

from connector.errors import AuthError, ContractError
from connector.settings import Duration, SourceConfig
from connector.sources.adapter import FetchRequest, ListDetailAdapter
from connector.sources.auth import OAuth2ClientCredentials, Token
from connector.sources.bodies import describe_json_error, safe_vendor_text
from connector.sources.discovery import VendorManifest
from connector.sources.http import ErrorDescriber
from connector.sources.paginate import IndexedPaginator, Paginator, dig

# What the invoice endpoints need; a token granted without it is useless to the importer.
REQUIRED_SCOPE = "billing:read"


class Config(SourceConfig):
    type: Literal["bio_ecko"] = "bio_ecko"
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    # Relative to base_url (".../api/v1/"), or an absolute URL.
    token_path: str = Field("auth/token", min_length=1)
    # Scopes asked for, space-separated; the answer must grant billing:read.
    scope: str | None = REQUIRED_SCOPE
    # Bio Ecko caps per_page at 100 (its own default is 20).
    page_size: int = Field(100, ge=1, le=100)
    currency: str = Field("INR", pattern=r"^[A-Z]{3}$")
    # Bio Ecko is an Indian system: a timestamp without an offset is IST.
    timezone: str = "Asia/Kolkata"
    # Dotted path of the summaries in a list answer; "" means the body itself is the array
    # (pagination then ends on a short page, and `total_field` is not read).
    records_field: str = "data"
    total_field: str | None = "meta.total"
    # Dotted path of the invoice in a detail answer; "" means the body itself.
    detail_field: str = "data"
    status_filter: Literal["draft", "finalized", "paid", "partially_paid", "cancelled"] | None = (
        None
    )
    branch_id: str | None = None
    # Signs Bio Ecko's webhooks (HMAC-SHA256 of the raw body, `X-Bio-Ecko-Signature`): set it
    # (as ${ENV_VAR}) to take pushes at /webhooks/bio_ecko/<name> (docs/webhooks.md).
    webhook_secret: SecretStr | None = None
    # How far an event's `timestamp` may be from now, either way, before it is refused as
    # stale (a replay outside this window cannot reuse a webhook id the store forgot).
    webhook_tolerance: Duration = timedelta(minutes=5)


def describe_bio_ecko_error(response: httpx.Response) -> str | None:
    """Bio Ecko's `{"error": {"code", "message"}}` body as "code - message"; other shapes
    (an RFC 6749 `{"error", "error_description"}` login answer, plain messages) as usual."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        # Every piece of vendor text passes the patient-data filter (connector.sources.bodies).
        parts = [
            safe_vendor_text(str(error[key]))
            for key in ("code", "message")
            if isinstance(error.get(key), str | int) and str(error[key])
        ]
        return " - ".join(parts)[:300] or None
    return describe_json_error(response)


class BioEckoClientCredentials(OAuth2ClientCredentials):
    """Client-credentials login that insists on the billing:read scope and reports the
    vendor's own reason when a login is refused."""

    def describe_login_error(self, response: httpx.Response) -> str | None:
        # The vendor's code (invalid_client, invalid_scope...) tells an operator which
        # setting to fix.
        return describe_bio_ecko_error(response)

    def read_token(self, body: dict[str, Any]) -> Token:
        token = super().read_token(body)
        granted = body.get("scope")
        # RFC 6749 5.1: an answer without `scope` grants what was asked for.
        if granted is not None and (
            not isinstance(granted, str) or REQUIRED_SCOPE not in granted.split()
        ):
            raise AuthError(
                f"the token was granted scope {granted!r}, which lacks {REQUIRED_SCOPE}: "
                f"ask Bio Ecko to allow {REQUIRED_SCOPE} for this client and request it "
                "in `scope`"
            )
        return token


class Adapter(ListDetailAdapter):
    list_path = "billing/invoices"
    detail_path = "billing/invoices/{id}"
    # No updated-since filter exists: every sync lists everything; backfills narrow by date.
    supports_date_window = True
    describe_error: ClassVar[ErrorDescriber] = staticmethod(describe_bio_ecko_error)
    config: Config

    @classmethod
    def build_auth(cls, config: SourceConfig) -> httpx.Auth:
        assert isinstance(config, Config)
        token_url = str(httpx.URL(config.base_url).join(config.token_path))
        return BioEckoClientCredentials(
            token_url, config.client_id, config.client_secret, config.scope or None
        )

    def paginator(self) -> Paginator:
        cfg = self.config
        return IndexedPaginator(
            records_path=cfg.records_field,
            # A bare array has nowhere to carry a total.
            total_path=(cfg.total_field or None) if cfg.records_field else None,
            style="page",
            page_param="page",
            size_param="per_page",
            page_size=cfg.page_size,
            first_page=1,
            prefetch=cfg.http.concurrency,
        )

    def list_params(self, request: FetchRequest) -> dict[str, Any]:
        cfg = self.config
        params: dict[str, Any] = {}
        if cfg.status_filter:
            params["status"] = cfg.status_filter
        if cfg.branch_id:
            params["branch_id"] = cfg.branch_id
        if request.date_from:
            params["date_from"] = request.date_from.isoformat()
        if request.date_to:
            params["date_to"] = request.date_to.isoformat()
        return params

    async def fetch_invoice(self, invoice_id: str) -> Any:
        """One invoice by its Bio Ecko id, from the detail endpoint: what a webhook names is
        fetched here, so the stored record is always the vendor's current state."""
        return await self.fetch_detail(invoice_id)

    def unwrap_detail(self, body: Any) -> Any:
        record = dig(body, self.config.detail_field)
        if not isinstance(record, dict):
            where = self.config.detail_field or "$"
            raise ContractError(f"invoice detail answer has no invoice object at '{where}'")
        return record


MANIFEST = VendorManifest(
    type="bio_ecko",
    adapter="adapters.bio_ecko:Adapter",
    config="adapters.bio_ecko:Config",
    mapping="mappings.bio_ecko:MAPPING",
    sandbox_dialect="connector.sandbox.bio_ecko:BioEckoDialect",
    sandbox_port_offset=3,
)
