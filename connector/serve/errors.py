"""Every failed request answers in MediTrak's own error shape
`{"success": false, "error": <message>, "code": <CODE>}`: ours, FastAPI's parameter
validation and Starlette's unknown paths alike. Messages name the parameter and what it must
be, never the value sent (it could be a key or patient data)."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from connector.errors import StoreError

log = structlog.get_logger("connector.serve")

INVALID_API_KEY = "INVALID_API_KEY"
SOURCE_FORBIDDEN = "SOURCE_FORBIDDEN"
INVOICE_NOT_FOUND = "INVOICE_NOT_FOUND"
INVALID_PARAMETER = "INVALID_PARAMETER"
_BY_STATUS = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    body = orjson.dumps({"success": False, "error": message, "code": code})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def bad_parameter(message: str) -> ApiError:
    return ApiError(400, INVALID_PARAMETER, message)


def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return error_response(exc.status, exc.code, exc.message, headers)


def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "request"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return error_response(400, INVALID_PARAMETER, "; ".join(problems) or "invalid request")


def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _BY_STATUS.get(exc.status_code, "HTTP_ERROR")
    message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


def _store_error(_request: Request, exc: Exception) -> Response:
    log.error("serve.store_error", error=str(exc))
    return error_response(503, "STORE_UNAVAILABLE", "the store cannot be read right now")


def _unexpected(_request: Request, exc: Exception) -> Response:
    # The exception's class only: its text could quote a record.
    log.error("serve.internal_error", error=type(exc).__name__)
    return error_response(500, "INTERNAL_ERROR", "internal error")


def install_error_handlers(app: FastAPI) -> None:
    handlers: dict[Any, Any] = {
        ApiError: _api_error,
        RequestValidationError: _validation_error,
        StarletteHTTPException: _http_error,
        StoreError: _store_error,
        Exception: _unexpected,
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)
