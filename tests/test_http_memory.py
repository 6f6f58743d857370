"""A read response must not outlive its last reference: httpx ties a response and its stream
into a reference cycle, which kept every page's body in memory until the next cyclic
collection (30 MB more at 100k invoices with a relaxed collector, docs/performance.md)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import httpx
import respx
from pydantic import SecretStr

from connector.config import HttpSettings
from connector.sources.auth import BearerKey
from connector.sources.http import SourceClient

BASE = "https://vendor.example/api/"


def test_a_read_response_is_freed_by_reference_counting_alone() -> None:
    settings = HttpSettings.model_validate({"transport": "httpx"})

    async def go() -> tuple[weakref.ref[httpx.Response], bytes]:
        async with SourceClient(BASE, settings, auth=BearerKey(SecretStr("k"))) as client:
            response = await client.request("GET", "invoices")
            body = response.content
            ref = weakref.ref(response)
            del response
            return ref, body

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with respx.mock:
            respx.get(f"{BASE}invoices").mock(
                return_value=httpx.Response(200, json={"data": [1, 2, 3]})
            )
            ref, body = asyncio.run(go())
        assert body == b'{"data":[1,2,3]}'
        assert ref() is None, "the response is only reachable through a reference cycle"
    finally:
        if was_enabled:
            gc.enable()
