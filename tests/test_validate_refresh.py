"""The second login of `connector validate` (the refresh step) reads its answer like every
other answer of the source (issue 15): stopped past `http.max_response_bytes`, decompressed
in bounded steps, and within `http.timeout` as a whole. A login endpoint on loopback answers
with a huge body, a gzip bomb and a slow drip; the server counts the bytes it could hand
over, so memory is bounded by bytes read rather than by timing.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from aiohttp import web

from connector.settings import HttpSettings
from connector.sources.auth import Token, TokenAuth
from connector.validate.probe import check_refresh
from tests.local_server import serve_app

LIMIT = 64 * 1024  # the smallest `http.max_response_bytes` allowed
HUGE = 64 * 1024 * 1024  # far more than a bounded read may take in
CHUNK = 64 * 1024


@dataclass
class Sent:
    """Bytes the login endpoint managed to write before the client stopped reading."""

    bytes: dict[str, int] = field(default_factory=dict)
    # Set once the huge answer's handler has seen the client stop reading.
    huge_done: threading.Event = field(default_factory=threading.Event)


def _login_vendor(sent: Sent) -> web.Application:
    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        written = 0
        try:
            await response.write(b'{"access_token": "t-0001", "padding": "')
            while written < HUGE:
                await response.write(b"x" * CHUNK)
                written += CHUNK
            await response.write(b'"}')
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            sent.bytes["huge"] = written
            sent.huge_done.set()
        return response

    async def bomb(request: web.Request) -> web.Response:
        packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        body = packer.compress(b'{"access_token": "t-0001", "padding": "')
        body += packer.compress(b" " * HUGE) + packer.compress(b'"}') + packer.flush()
        sent.bytes["bomb"] = len(body)
        return web.Response(
            body=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
        )

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        with_token = b'{"access_token": "t-0001", "expires_in": 3600}'
        try:
            for byte in with_token:
                await response.write(bytes([byte]))
                await asyncio.sleep(0.5)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def fine(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "t-0001", "expires_in": 3600})

    app = web.Application()
    app.router.add_post("/huge", huge)
    app.router.add_post("/bomb", bomb)
    app.router.add_post("/drip", drip)
    app.router.add_post("/fine", fine)
    return app


class Login(TokenAuth):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def build_token_request(self) -> httpx.Request:
        return httpx.Request("POST", self.url, data={"grant_type": "client_credentials"})

    def read_token(self, body: dict[str, Any]) -> Token:
        return Token(str(body["access_token"]), None, dict(body))


@pytest.fixture(scope="module")
def vendor() -> Iterator[tuple[str, Sent]]:
    sent = Sent()
    with serve_app(_login_vendor(sent)) as url:
        yield url, sent


def refresh(url: str, **http: Any) -> tuple[str, str]:
    settings = HttpSettings(max_response_bytes=LIMIT, **http)

    async def run() -> tuple[str, str]:
        async with httpx.AsyncHTTPTransport() as transport:
            step = await check_refresh(Login(url), transport, settings)
        return step.status, step.detail

    return asyncio.run(run())


def test_a_normal_login_answer_passes(vendor: tuple[str, Sent]) -> None:
    url, _ = vendor
    status, detail = refresh(f"{url}/fine")
    assert status == "pass" and "tokens last 3600 s" in detail


def test_a_huge_login_answer_is_stopped_at_the_limit(vendor: tuple[str, Sent]) -> None:
    url, sent = vendor
    status, detail = refresh(f"{url}/huge")
    assert status == "fail"
    assert "over http.max_response_bytes (65536 bytes" in detail
    assert "POST " in detail and "/huge is over" in detail
    # The server could hand over at most the limit plus what socket buffers hold, never the
    # whole body: the reader stopped.
    assert sent.huge_done.wait(30), "the server never noticed the client hang up"
    assert sent.bytes["huge"] < HUGE // 4, sent.bytes


def test_a_gzip_bomb_login_answer_is_stopped_while_inflating(vendor: tuple[str, Sent]) -> None:
    url, sent = vendor
    status, detail = refresh(f"{url}/bomb")
    assert sent.bytes["bomb"] < LIMIT  # small on the wire, 64 MB inflated
    assert status == "fail"
    assert "over http.max_response_bytes (65536 bytes, decompressed)" in detail


def test_a_slow_drip_login_answer_fails_at_the_request_deadline(vendor: tuple[str, Sent]) -> None:
    url, _ = vendor
    status, detail = refresh(f"{url}/drip", timeout=timedelta(seconds=1))
    assert status == "fail"
    assert "no whole answer within http.timeout (1s)" in detail
