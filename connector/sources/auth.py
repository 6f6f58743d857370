"""httpx auth flows shared by the adapters: bearer keys and token-issuing logins.

Token flows fetch a token before the first request, refresh it shortly before it expires,
and on a 401 refresh once and replay the request; a second 401 is an `AuthError`.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from pydantic import SecretStr

from connector.errors import AuthError, RetriableError
from connector.sources.bodies import describe_json_error
from connector.sources.http import RETRIABLE_STATUS, retry_after_seconds

# Refresh this long before the announced expiry, so a token never dies mid-request.
EXPIRY_MARGIN_S = 60.0


class BearerKey(httpx.Auth):
    """A static API key sent as `Authorization: Bearer <key>`."""

    # One request, and the answer is never needed: `SourceClient` may skip httpx's auth layer.
    single_request = True

    def __init__(self, key: SecretStr) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        yield request

    def __repr__(self) -> str:
        return "BearerKey(**********)"


@dataclass
class Token:
    value: str
    expires_at: float | None  # time.monotonic() deadline, None when the vendor gives none
    extra: dict[str, Any]

    def fresh(self) -> bool:
        return self.expires_at is None or time.monotonic() < self.expires_at - EXPIRY_MARGIN_S


class TokenAuth(httpx.Auth, ABC):
    """Base of login flows: subclasses say how to ask for a token and how to read it, and may
    say how to read the vendor's reason for refusing a login (`describe_login_error`).

    `read_token` may raise `AuthError` for a login that succeeded but is of no use (a missing
    scope, no membership); `secret` is kept out of every login error, since some vendors echo
    what they were sent.
    """

    # The login answer is read here, capped (`_read_login`), rather than whole by httpx: a
    # hostile or broken login endpoint must not be able to exhaust memory either.
    requires_response_body = False
    max_login_bytes = 1024 * 1024

    def __init__(self, secret: SecretStr | None = None) -> None:
        self._token: Token | None = None
        self._lock: asyncio.Lock | None = None
        self._secret = secret
        self.token_requests = 0

    @abstractmethod
    def build_token_request(self) -> httpx.Request:
        """The login / token request (absolute URL)."""

    @abstractmethod
    def read_token(self, body: dict[str, Any]) -> Token:
        """The token from a successful login answer."""

    def describe_login_error(self, response: httpx.Response) -> str | None:
        """The vendor's reason for refusing a login, from the error answer's body."""
        return describe_json_error(response)

    def decorate(self, request: httpx.Request, token: Token) -> None:
        request.headers["Authorization"] = f"Bearer {token.value}"

    @property
    def token(self) -> Token | None:
        return self._token

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        raise NotImplementedError("the connector only uses the async client")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        token = self._token
        if token is None or not token.fresh():
            async with self._lock:
                # Another request may have refreshed while we waited for the lock.
                if self._token is None or not self._token.fresh():
                    login = yield self._counted_token_request()
                    self._token = self._read(await self._read_login(login))
                token = self._token
        self.decorate(request, token)
        response = yield request
        if response.status_code != 401:
            return
        async with self._lock:
            if self._token is token:  # nobody refreshed since we sent: do it once
                login = yield self._counted_token_request()
                self._token = self._read(await self._read_login(login))
            token = self._token
        if token is None:
            raise AuthError("login produced no token")
        self.decorate(request, token)
        yield request

    async def _read_login(self, login: httpx.Response) -> httpx.Response:
        """The login answer with its body read (decompressed) up to `max_login_bytes`; a longer
        one is an `AuthError` raised while reading, so no body or compression bomb is held."""
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in login.aiter_bytes():
                size += len(chunk)
                if size > self.max_login_bytes:
                    where = f"{login.request.method} {login.request.url.path}"
                    raise AuthError(
                        f"the login answer of {where} is over {self.max_login_bytes} bytes "
                        "(decompressed): stopped reading"
                    )
                chunks.append(chunk)
        finally:
            await login.aclose()
        # httpx reads every superseded answer of an auth flow again (`aread`), which returns
        # `_content` when it is set: set it, as `aread` would have, to the capped body.
        login._content = b"".join(chunks)
        return login

    def _counted_token_request(self) -> httpx.Request:
        self.token_requests += 1
        return self.build_token_request()

    def _read(self, response: httpx.Response) -> Token:
        status = response.status_code
        where = f"{response.request.method} {response.request.url.path}"
        if status in RETRIABLE_STATUS:
            # The same statuses, hint and retry policy as any other answer of the source.
            raise RetriableError(
                f"{status} from {where} (login)", retry_after=retry_after_seconds(response)
            )
        if not 200 <= status < 300:
            said = self.describe_login_error(response)
            secret = self._secret.get_secret_value() if self._secret is not None else ""
            if said and secret:
                said = said.replace(secret, "**********")
            reason = f" ({said})" if said else ""
            raise AuthError(
                f"{status} from {where}: login rejected{reason} - check the credentials"
            )
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise AuthError(f"{where} answered non-JSON to the login") from None
        if not isinstance(body, dict):
            raise AuthError(f"{where} answered an unexpected login body")
        try:
            return self.read_token(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise AuthError(f"{where}: no usable token in the login answer ({exc})") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(**********)"


def read_oauth2_token(body: dict[str, Any]) -> Token:
    """RFC 6749 token answer: access_token, optional expires_in (seconds)."""
    value = body["access_token"]
    if not isinstance(value, str) or not value:
        raise ValueError("access_token missing")
    expires_in = body.get("expires_in")
    expires_at = time.monotonic() + float(expires_in) if expires_in else None
    return Token(value, expires_at, {k: v for k, v in body.items() if k != "access_token"})


class OAuth2ClientCredentials(TokenAuth):
    def __init__(
        self, token_url: str, client_id: str, client_secret: SecretStr, scope: str | None = None
    ) -> None:
        super().__init__(client_secret)
        self.token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope

    def build_token_request(self) -> httpx.Request:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret.get_secret_value(),
        }
        if self._scope:
            form["scope"] = self._scope
        return httpx.Request("POST", self.token_url, data=form)

    def read_token(self, body: dict[str, Any]) -> Token:
        return read_oauth2_token(body)


class OAuth2Password(TokenAuth):
    def __init__(self, token_url: str, username: str, password: SecretStr) -> None:
        super().__init__(password)
        self.token_url = token_url
        self._username = username
        self._password = password

    def build_token_request(self) -> httpx.Request:
        form = {
            "grant_type": "password",
            "username": self._username,
            "password": self._password.get_secret_value(),
        }
        return httpx.Request("POST", self.token_url, data=form)

    def read_token(self, body: dict[str, Any]) -> Token:
        return read_oauth2_token(body)
