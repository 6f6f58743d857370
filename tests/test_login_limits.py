"""A login endpoint cannot exhaust memory: its answer is read capped, decompressed, over real
loopback HTTP (a huge token answer and a gzip bomb are refused while reading, a normal login
still works)."""

from __future__ import annotations

import asyncio
import gzip

import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr

from connector.errors import AuthError
from connector.sources.auth import OAuth2Password
from tests.local_server import serve_app

CAP = 64 * 1024
HUGE = 64 * 1024 * 1024


def _vendor(sent: dict[str, int]) -> web.Application:
    async def token(request: web.Request) -> web.StreamResponse:
        mode = request.match_info["mode"]
        if mode == "ok":
            return web.json_response({"access_token": "tok", "expires_in": 3600})
        if mode == "bomb":
            # Under 100 KB on the wire, 64 MB once inflated.
            body = gzip.compress(b'{"access_token": "' + b"a" * HUGE + b'"}', compresslevel=9)
            sent["bytes"] = len(body)
            return web.Response(
                body=body, headers={"Content-Encoding": "gzip"}, content_type="application/json"
            )
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        chunk = b"a" * 65536
        try:
            for _ in range(HUGE // len(chunk)):
                await response.write(chunk)
                sent["bytes"] = sent.get("bytes", 0) + len(chunk)
        except (ConnectionResetError, RuntimeError):
            pass  # the client stopped reading: what the test wants
        return response

    async def invoices(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer tok":
            return web.json_response({"detail": "unauthorized"}, status=401)
        return web.json_response({"data": []})

    app = web.Application()
    app.router.add_post("/{mode}/token", token)
    app.router.add_get("/{mode}/invoices", invoices)
    return app


async def _get(base: str, mode: str) -> httpx.Response:
    auth = OAuth2Password(f"{base}/{mode}/token", "user", SecretStr("s3cret-password"))
    auth.max_login_bytes = CAP
    async with httpx.AsyncClient(auth=auth, timeout=30) as client:
        return await client.get(f"{base}/{mode}/invoices")


def test_a_normal_login_still_works() -> None:
    with serve_app(_vendor({})) as base:
        response = asyncio.run(_get(base, "ok"))
    assert response.status_code == 200


@pytest.mark.parametrize("mode", ["huge", "bomb"])
def test_an_oversized_login_answer_is_refused_while_reading(mode: str) -> None:
    sent: dict[str, int] = {}
    with serve_app(_vendor(sent)) as base, pytest.raises(AuthError) as caught:
        asyncio.run(_get(base, mode))
    message = str(caught.value)
    assert f"over {CAP} bytes" in message and "/token" in message
    assert "s3cret-password" not in message
    # The huge answer was cut short long before its 64 MB were sent.
    assert sent["bytes"] < HUGE // 4
