"""Small helpers for the sandbox tests: httpx clients for a dialect's API and admin routes."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx

from connector.sandbox import SandboxServer


def client_for(server: SandboxServer, dialect: str, *, auth: bool = True) -> httpx.Client:
    """An httpx client rooted at the dialect's API URL, authenticated unless `auth=False`."""
    headers = {"Authorization": f"Bearer {server.token(dialect)}"} if auth else {}
    return httpx.Client(base_url=server.api_url(dialect), headers=headers, timeout=10)


def admin_for(server: SandboxServer, dialect: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url(dialect) + "/_sandbox/", timeout=10)


def exact_json(response: httpx.Response) -> Any:
    """Decode with Decimal numbers, so "1250.005" and "1250.00" keep their exact digits."""
    return json.loads(response.text, parse_float=Decimal)
