"""MediTrak API v1: bearer API key, Django-style trailing slashes, page+limit pagination with
only a `total_count` (no page count), list summaries plus one detail call per invoice."""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr

from connector.errors import ContractError
from connector.settings import SourceConfig
from connector.sources.adapter import FetchRequest, ListDetailAdapter
from connector.sources.auth import BearerKey
from connector.sources.discovery import VendorManifest
from connector.sources.paginate import IndexedPaginator, Paginator


class Config(SourceConfig):
    type: Literal["meditrak"] = "meditrak"
    api_key: SecretStr
    # MediTrak caps `limit` at 100.
    page_size: int = Field(100, ge=1, le=100)
    status_filter: Literal["draft", "submitted", "approved", "rejected", "paid"] | None = None


class Adapter(ListDetailAdapter):
    list_path = "invoices/"
    detail_path = "invoices/{id}/"
    supports_date_window = True
    config: Config

    @classmethod
    def build_auth(cls, config: SourceConfig) -> httpx.Auth:
        assert isinstance(config, Config)
        return BearerKey(config.api_key)

    def paginator(self) -> Paginator:
        return IndexedPaginator(
            records_path="invoices",
            total_path="pagination.total_count",
            style="page",
            page_param="page",
            size_param="limit",
            page_size=self.config.page_size,
            first_page=1,
            prefetch=self.config.http.concurrency,
        )

    def list_params(self, request: FetchRequest) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.config.status_filter:
            params["status"] = self.config.status_filter
        if request.date_from:
            params["date_from"] = request.date_from.isoformat()
        if request.date_to:
            params["date_to"] = request.date_to.isoformat()
        return params

    def summary_id(self, summary: Any) -> str | None:
        if isinstance(summary, dict) and summary.get("invoice_id") not in (None, ""):
            return str(summary["invoice_id"])
        return None

    def unwrap_detail(self, body: Any) -> Any:
        if not isinstance(body, dict) or not isinstance(body.get("invoice"), dict):
            raise ContractError("invoice detail answer has no 'invoice' object")
        return body["invoice"]


MANIFEST = VendorManifest(
    type="meditrak",
    adapter="adapters.meditrak:Adapter",
    config="adapters.meditrak:Config",
    mapping="mappings.meditrak:MAPPING",
    sandbox_dialect="connector.sandbox.meditrak:MediTrakDialect",
    sandbox_port_offset=0,
)
