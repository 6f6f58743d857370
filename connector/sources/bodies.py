"""What a vendor's answer body says, for errors: its own error message from common JSON error
bodies, and JSON decoding that fails with a description of the body.

Kept apart from the HTTP client so that one place decides what of a vendor's body may appear
in an error message, a log line, a stored run error or a report.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson

from connector.errors import ContractError


def describe_json_error(response: httpx.Response) -> str | None:
    """A vendor's own error message from common JSON error bodies (MediTrak, NestJS, FastAPI)."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    parts = []
    for key in ("code", "error", "message", "detail", "error_description"):
        value = body.get(key)
        if isinstance(value, str | int) and str(value):
            parts.append(str(value))
        elif isinstance(value, list) and value:
            parts.append("; ".join(_error_entry(v) for v in value[:5]))
    return " - ".join(dict.fromkeys(parts))[:300] or None


def _error_entry(entry: Any) -> str:
    """One entry of a list of errors; validation errors name location and message only (some
    frameworks echo the rejected input, which may be a password)."""
    if isinstance(entry, dict):
        loc = ".".join(str(p) for p in entry.get("loc", []) if p != "body")
        msg = str(entry.get("msg") or entry.get("message") or "invalid")
        return f"{loc}: {msg}" if loc else msg
    return str(entry)


def decode_json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses valid JSON it cannot represent (integers beyond 64 bits): one record
    # with a 400-digit amount must be quarantined, not make its whole page unreadable.
    try:
        return json.loads(response.content, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        kind = response.headers.get("Content-Type", "no content type")
        start = response.content[:60].decode("utf-8", "replace").replace("\n", " ")
        raise ContractError(
            f"{response.request.method} {response.request.url.path} answered non-JSON "
            f"({kind}, {len(response.content)} bytes, starting {start!r})"
        ) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
