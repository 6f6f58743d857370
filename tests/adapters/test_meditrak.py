"""MediTrak's own API (v1): the shared adapter contract over loopback HTTP to its dialect."""

from __future__ import annotations

from tests.contract import AdapterContract


class TestContract(AdapterContract):
    source_type = "meditrak"
    dialect = "meditrak"
    # MediTrak caps `limit` at 100: 25 a page gives several pages to resume from.
    page_size = 25
    vendor_error_text = "Invalid or expired API key"
