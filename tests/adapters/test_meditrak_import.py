"""A third-party API implementing MediTrak's import contract: the shared adapter contract, over
loopback HTTP to its dialect, with the default page/limit pagination and with offsets."""

from __future__ import annotations

from typing import Any

from connector.sandbox import SandboxServer
from tests.contract import AdapterContract


class TestContract(AdapterContract):
    source_type = "meditrak_import"
    dialect = "meditrak_import"
    # List-only: small pages, so that the fault trial (60 invoices, 20% faults, seeded) makes
    # enough requests to draw faults: at 5 a page its 12 requests draw none.
    page_size = 3


class TestContractWithDetailCalls(AdapterContract):
    """List rows as summaries, each record completed by its get-by-id call."""

    source_type = "meditrak_import"
    dialect = "meditrak_import"
    invoices = 60
    page_size = 20

    def raw_source(self, server: SandboxServer) -> dict[str, Any]:
        return {**super().raw_source(server), "fetch_detail": True}
