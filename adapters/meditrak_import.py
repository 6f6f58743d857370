"""Any third-party API implementing the MediTrak import contract (list + get-by-id).

The contract fixes the record but not the paths or query parameters, so they are config:
list/detail paths, page or offset pagination and its parameter names, the envelope fields
holding records and total, and the incremental "updated since" parameter.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr, model_validator

from connector.settings import SourceConfig
from connector.sources.adapter import FetchRequest, ListDetailAdapter
from connector.sources.auth import BearerKey
from connector.sources.discovery import VendorManifest
from connector.sources.paginate import IndexedPaginator, Paginator


class Config(SourceConfig):
    type: Literal["meditrak_import"] = "meditrak_import"
    api_key: SecretStr
    list_path: str = "invoices"
    detail_path: str = "invoices/{id}"
    # Whether list rows are summaries that need the get-by-id call for the full record.
    fetch_detail: bool = False
    pagination: Literal["page", "offset"] = "page"
    page_param: str = "page"
    first_page: int = Field(1, ge=0)
    offset_param: str = "offset"
    limit_param: str = "limit"
    records_field: str = "data"
    total_field: str | None = "total"
    updated_since_param: str | None = "updated_since"
    date_from_param: str | None = "date_from"
    date_to_param: str | None = "date_to"
    id_field: str = "id"

    @model_validator(mode="after")
    def _detail_path_has_id(self) -> Config:
        if "{id}" not in self.detail_path:
            raise ValueError("detail_path must contain {id}")
        return self


class Adapter(ListDetailAdapter):
    supports_date_window = True
    config: Config

    def filters_since(self) -> bool:
        return self.config.updated_since_param is not None

    def list_url(self) -> str:
        return self.config.list_path

    def detail_url(self, record_id: str) -> str:
        return self.config.detail_path.format(id=quote(record_id, safe=""))

    @classmethod
    def build_auth(cls, config: SourceConfig) -> httpx.Auth:
        assert isinstance(config, Config)
        return BearerKey(config.api_key)

    def paginator(self) -> Paginator:
        cfg = self.config
        return IndexedPaginator(
            records_path=cfg.records_field,
            total_path=cfg.total_field,
            style=cfg.pagination,
            page_param=cfg.page_param,
            offset_param=cfg.offset_param,
            size_param=cfg.limit_param,
            page_size=cfg.page_size,
            first_page=cfg.first_page,
            prefetch=cfg.http.concurrency,
        )

    def needs_detail(self) -> bool:
        return self.config.fetch_detail

    def summary_id(self, summary: Any) -> str | None:
        if isinstance(summary, dict) and summary.get(self.config.id_field) not in (None, ""):
            return str(summary[self.config.id_field])
        return None

    def list_params(self, request: FetchRequest) -> dict[str, Any]:
        cfg = self.config
        params: dict[str, Any] = {}
        if request.since and cfg.updated_since_param:
            since = request.since.astimezone(UTC).isoformat().replace("+00:00", "Z")
            params[cfg.updated_since_param] = since
        if request.date_from and cfg.date_from_param:
            params[cfg.date_from_param] = request.date_from.isoformat()
        if request.date_to and cfg.date_to_param:
            params[cfg.date_to_param] = request.date_to.isoformat()
        return params


MANIFEST = VendorManifest(
    type="meditrak_import",
    adapter="adapters.meditrak_import:Adapter",
    config="adapters.meditrak_import:Config",
    mapping="mappings.meditrak_import:MAPPING",
    sandbox_dialect="connector.sandbox.meditrak_import:MediTrakImportDialect",
    sandbox_port_offset=1,
)
