"""`connector.sources.lean`: a request sent around httpx's send layers is the request httpx
sends itself (URL, method, headers with the auth and the cookies, body, timeouts), its answer
updates the cookie jar as httpx's does, a transport error names the request, and only clients
whose auth needs no answer take that path. The two private httpx methods it relies on are
pinned here, so that an httpx upgrade that drops them fails this test, not a sync."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from connector.settings import HttpSettings
from connector.sources.auth import BearerKey, OAuth2Password
from connector.sources.http import SourceClient
from connector.sources.lean import lean_stream

BASE = "https://vendor.example/api/v1/"


def recording_transport(seen: list[httpx.Request]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"Set-Cookie": "session=abc; Path=/"} if len(seen) == 1 else {}
        return httpx.Response(200, json={"ok": True}, headers=headers)

    return httpx.MockTransport(answer)


def client_with(seen: list[httpx.Request], auth: httpx.Auth | None) -> SourceClient:
    return SourceClient(
        BASE,
        HttpSettings(),
        auth=auth,
        headers={"X-Clinic": "7"},
        transport=recording_transport(seen),
    )


def shape(request: httpx.Request) -> tuple[Any, ...]:
    return (
        request.method,
        str(request.url),
        sorted(request.headers.multi_items()),
        request.content,
        request.extensions.get("timeout"),
    )


@pytest.mark.parametrize("auth", [None, BearerKey(SecretStr("key-1"))])
def test_a_lean_request_is_the_request_httpx_sends(auth: httpx.Auth | None) -> None:
    async def both() -> tuple[list[httpx.Request], list[httpx.Request]]:
        lean: list[httpx.Request] = []
        full: list[httpx.Request] = []
        async with client_with(lean, auth) as fast, client_with(full, auth) as slow:
            assert fast._lean
            slow._lean = False  # the same client, through httpx's own `stream`
            for client in (fast, slow):
                # The first answer sets a cookie: the second request must carry it.
                await client.get_json("invoices", params={"page": 2, "since": "a b"})
                await client.request("POST", "invoices/search", json={"ids": ["x", "é"]})
        return lean, full

    lean, full = asyncio.run(both())
    assert [shape(r) for r in lean] == [shape(r) for r in full]
    assert "cookie" not in lean[0].headers and lean[1].headers["cookie"] == "session=abc"
    if auth is not None:
        assert lean[0].headers["authorization"] == "Bearer key-1"


def test_only_clients_whose_auth_needs_no_answer_go_lean() -> None:
    login = OAuth2Password("https://vendor.example/token", "user", SecretStr("pw"))
    seen: list[httpx.Request] = []
    assert client_with(seen, None)._lean
    assert client_with(seen, BearerKey(SecretStr("k")))._lean
    assert not client_with(seen, login)._lean


def test_a_transport_error_names_its_request() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")  # no request attached, as a transport may do

    async def send() -> None:
        transport = httpx.MockTransport(refuse)
        async with (
            httpx.AsyncClient(base_url=BASE, transport=transport) as client,
            lean_stream(client, "GET", "invoices", {}),
        ):
            pass

    with pytest.raises(httpx.ConnectError) as caught:
        asyncio.run(send())
    assert str(caught.value.request.url) == BASE + "invoices"


def test_the_private_httpx_methods_it_uses_are_there() -> None:
    client = httpx.AsyncClient()
    assert callable(client._build_request_auth)
    assert callable(client._transport_for_url)
    assert isinstance(client._default_encoding, str)
