"""The shared adapter contract (`tests.contract.AdapterContract`) run by the `rest` adapter as
the shipped YAML describes each vendor: every record exactly once, auth sent and refreshed,
wrong credentials and vendor error bodies made clear, faults retried within bounds, the
incremental filter, resume from any page."""

from __future__ import annotations

from typing import Any

from connector.sandbox import SandboxServer
from tests.contract import FAST_RETRIES, AdapterContract
from tests.test_rest_equivalence import rest_source


class RestContract(AdapterContract):
    source_type = "rest"

    def raw_source(self, server: SandboxServer) -> dict[str, Any]:
        raw = rest_source(server, self.dialect)
        if self.page_size is not None:
            raw["page_size"] = self.page_size
        raw["http"] = dict(FAST_RETRIES)
        return raw


class TestMediTrakImportContract(RestContract):
    dialect = "meditrak_import"
    page_size = 3

    def wrong_credentials(self) -> dict[str, Any]:
        return {"auth": {"kind": "bearer", "token": "not-the-key"}}


class TestMediTrakImportWithDetailCalls(RestContract):
    """List rows completed by the get-by-id call (`detail:`)."""

    dialect = "meditrak_import"
    invoices = 60
    page_size = 20

    def raw_source(self, server: SandboxServer) -> dict[str, Any]:
        return {**super().raw_source(server), "detail": {"path": "invoices/{id}"}}

    def wrong_credentials(self) -> dict[str, Any]:
        return {"auth": {"kind": "bearer", "token": "not-the-key"}}


class TestInvoiceApiContract(RestContract):
    dialect = "invoice_api"
    token_auth = True
    vendor_error_text = "Incorrect username or password"

    def wrong_credentials(self) -> dict[str, Any]:
        return {
            "auth": {
                "kind": "oauth2_password",
                "token_path": "token",
                "username": "connector",
                "password": "not-the-password",
            }
        }


class TestInvoiceApiWithAClientSideChangeFilter(TestInvoiceApiContract):
    """The API has no updated-since parameter: `incremental.field` filters on arrival."""

    def raw_source(self, server: SandboxServer) -> dict[str, Any]:
        return {**super().raw_source(server), "incremental": {"field": "updated_at"}}
