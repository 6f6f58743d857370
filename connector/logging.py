"""structlog set up once: console output on a terminal, JSON lines otherwise, secrets scrubbed.

Every event passes through `scrub_secrets`, which replaces any configured secret value (and
anything that looks like a bearer token) wherever it appears, so a careless message or an
exception text cannot leak a credential, and through `mask_patient_data`, which masks patient
names and policy numbers.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal

import structlog

from connector.masking import is_sensitive_key, mask_payload, mask_policy

_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{6,}")
_secrets: set[str] = set()
MASK = "**********"


def register_secrets(values: Iterable[str]) -> None:
    """Values that must never reach a log line (API keys, passwords, tokens)."""
    _secrets.update(v for v in values if v and len(v) >= 4)


def scrub_text(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return _BEARER.sub(rf"\g<1>{MASK}", text)


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    return value


def scrub_secrets(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        event[key] = _scrub_value(value)
    return event


# Policy numbers in free text ("policy POL-456789 is not registered"): letters, a separator,
# then at least four digits.
_POLICY_TEXT = re.compile(r"\b[A-Z]{2,6}-\d{4,}\b")
# Event keys that name the connector's own things, never a person.
_STRUCTURAL_KEYS = frozenset({"event", "level", "timestamp", "logger", "name", "exception"})


def _mask_text(text: str) -> str:
    return _POLICY_TEXT.sub(lambda match: mask_policy(match[0]) or "", text)


def mask_patient_data(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Patient names and policy numbers never reach a log line in clear: values under patient /
    name / policy keys (at any depth) are masked like the CLI masks them ("J*** D**",
    "POL-****89"), and policy numbers inside messages are masked too."""
    for key, value in list(event.items()):
        if key in _STRUCTURAL_KEYS or key.startswith("source"):
            if isinstance(value, str):
                event[key] = _mask_text(value)
            continue
        if is_sensitive_key(key):
            event[key] = mask_payload({key: value})[key]
        elif isinstance(value, dict | list):
            event[key] = mask_payload(value)
        elif isinstance(value, str):
            event[key] = _mask_text(value)
    return event


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the moment of writing (test runners swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: Any = None,
) -> None:
    as_json = fmt == "json" or (fmt == "auto" and not (stream or sys.stderr).isatty())
    is_tty = (stream or sys.stderr).isatty()
    stream = stream or _CurrentStderr()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        scrub_secrets,
        mask_patient_data,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=is_tty)
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through stdlib (httpx, alembic) stay quiet below warnings.
    logging.basicConfig(
        level=logging.WARNING, stream=stream, format="%(levelname)s %(name)s %(message)s"
    )
    for noisy in ("httpx", "httpcore", "alembic", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
