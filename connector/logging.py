"""structlog set up once, for the connector's own events and for every stdlib logger alike
(httpx, aiohttp, alembic, apscheduler, asyncio): console output on a terminal, JSON lines
otherwise, secrets scrubbed and patient data masked.

structlog events are handed to stdlib `logging`, and one root handler renders every record
through `structlog.stdlib.ProcessorFormatter`: a library's record passes through the same
processors (`foreign_pre_chain`) as the connector's own events, so no line, whoever writes
it, escapes the scrubbing or breaks the one-JSON-object-per-line output.

Every event passes through `scrub_secrets`, which replaces any configured secret value (and
anything that looks like a bearer token) wherever it appears, so a careless message or an
exception text cannot leak a credential, and through `mask_patient_data`, which masks patient
names and policy numbers. `bound_run` binds `source` / `run_id` to every line written while a
run is under way, by structlog or by a library.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import Token
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
# What ProcessorFormatter carries through the processors: the stdlib record itself.
_FORMATTER_KEYS = frozenset({"_record", "_from_structlog"})


def _mask_text(text: str) -> str:
    return _POLICY_TEXT.sub(lambda match: mask_policy(match[0]) or "", text)


def mask_patient_data(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Patient names and policy numbers never reach a log line in clear: values under patient /
    name / policy keys (at any depth) are masked like the CLI masks them ("J*** D**",
    "POL-****89"), and policy numbers inside messages are masked too."""
    for key, value in list(event.items()):
        if key in _FORMATTER_KEYS:
            continue
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


# Loggers of the project: they speak at the configured level. Every other stdlib logger (a
# library's) speaks at warnings and above, or from INFO up when the operator asks for debug.
PROJECT_LOGGERS = ("connector", "adapters")


class _ConnectorHandler(logging.StreamHandler[Any]):
    """The root handler `configure_logging` installs: marked by its class, so that configuring
    again replaces it and leaves other handlers (a test runner's) alone."""


def _library_level(level: int) -> int:
    return logging.INFO if level <= logging.DEBUG else max(level, logging.WARNING)


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: Any = None,
) -> None:
    is_tty = (stream or sys.stderr).isatty()
    as_json = fmt == "json" or (fmt == "auto" and not is_tty)
    threshold = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
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
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        # Events below the level are dropped here, before anything is built for them.
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = _ConnectorHandler(stream or _CurrentStderr())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ConnectorHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_library_level(threshold))
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(threshold)
    _route_python_reports()


def _route_python_reports() -> None:
    """What Python itself would print on stderr (warnings, an exception nobody caught, in the
    main thread, another thread or a finalizer at shutdown) becomes a log record too, so that
    it is JSON off a terminal and scrubbed like every other line."""
    logging.captureWarnings(True)
    python = logging.getLogger("connector.python")

    def uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if issubclass(kind, KeyboardInterrupt):
            python.warning("interrupted")
            return
        python.error("uncaught exception", exc_info=(kind, value, tb))

    def thread_uncaught(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        python.error("uncaught exception in a thread", exc_info=args.exc_value)

    def unraisable(report: Any) -> None:
        what = report.err_msg or "exception ignored"
        python.warning(
            f"{what}: {report.object!r}" if report.object is not None else what,
            exc_info=report.exc_value,
        )

    sys.excepthook = uncaught
    threading.excepthook = thread_uncaught
    sys.unraisablehook = unraisable


class RunBinding:
    """The fields `bound_run` bound; `bind` adds more once known (the run id, after the run
    row is written)."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token[Any]] = {}

    def bind(self, **fields: Any) -> None:
        for key, token in structlog.contextvars.bind_contextvars(**fields).items():
            # The first token restores what was there before the run, not an earlier bind.
            self._tokens.setdefault(key, token)

    def reset(self) -> None:
        structlog.contextvars.reset_contextvars(**self._tokens)
        self._tokens.clear()


@contextmanager
def bound_run(source: str, **fields: Any) -> Iterator[RunBinding]:
    """`source` (and `fields`, e.g. `kind`, `run_id`) on every log line written inside the
    block, in this task or thread and in those it starts (asyncio tasks, `to_thread`), whether
    structlog or a library (httpx, alembic) writes it. The previous values come back on exit,
    so concurrent runs in separate tasks never see each other's fields."""
    binding = RunBinding()
    binding.bind(source=source, **fields)
    try:
        yield binding
    finally:
        binding.reset()
