"""Logging: the connector's structlog events and every stdlib logger's records (apscheduler,
alembic, httpx, asyncio) come out through the same processors, one JSON object per line off a
terminal, secrets scrubbed and patient data masked; `bound_run` puts `source` / `run_id` on all
of them; a terminal gets the console renderer."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine

from connector.logging import bound_run, configure_logging, register_secrets
from connector.store import Store
from connector.store.database import current_revision, run_migrations
from connector.store.store import sqlite_url_for

SECRET = "sk-live-7Hq2ZpX9wLmN4vB"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging sets process-wide state: give the next test what this one found."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    project_levels = {name: logging.getLogger(name).level for name in ("connector", "adapters")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, project_level in project_levels.items():
        logging.getLogger(name).setLevel(project_level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def older_store(url: str) -> None:
    """The store at `url` (new or current) made one migration behind: at 0002, the newest but
    one, so that the next open runs Alembic."""
    engine = create_engine(url)
    with engine.begin() as connection:
        if current_revision(connection) is None:
            run_migrations(connection, "0002")
        else:
            config = AlembicConfig()
            config.set_main_option("script_location", "connector/store/migrations")
            config.attributes["connection"] = connection
            command.downgrade(config, "0002")
    engine.dispose()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line written, each parsed as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_library_record_is_one_json_line_with_secrets_and_policy_numbers_masked() -> None:
    register_secrets([SECRET])
    stream = io.StringIO()
    configure_logging("info", "auto", stream=stream)
    logging.getLogger("apscheduler.executors.default").error(
        "Job %r raised: 401 for key %s (Authorization: Bearer abcdef123456, policy POL-456789)",
        "sync clinic-a",
        SECRET,
    )
    (line,) = json_lines(stream)
    assert line["logger"] == "apscheduler.executors.default"
    assert line["level"] == "error"
    assert line["timestamp"].endswith("Z")
    assert line["event"].startswith("Job 'sync clinic-a' raised: 401 for key **********")
    assert "Bearer **********" in line["event"]
    assert "POL-****89" in line["event"]
    text = stream.getvalue()
    assert SECRET not in text and "abcdef123456" not in text and "456789" not in text


def test_a_library_exception_traceback_is_rendered_inside_the_json_line_and_scrubbed() -> None:
    register_secrets([SECRET])
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    try:
        raise RuntimeError(f"token {SECRET} refused")
    except RuntimeError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    (line,) = json_lines(stream)
    assert line["event"] == "Task exception was never retrieved"
    assert "RuntimeError: token ********** refused" in line["exception"]
    assert SECRET not in stream.getvalue()


def test_connector_events_and_library_records_share_one_stream_and_one_format() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    structlog.get_logger("connector.pipeline.engine").info(
        "sync.finished", patient_name="Jane Doe", fetched=3
    )
    logging.getLogger("httpx").warning("HTTP Request: GET https://example.test/ 503")
    engine, httpx = json_lines(stream)
    assert engine["event"] == "sync.finished" and engine["logger"] == "connector.pipeline.engine"
    assert engine["patient_name"] == "J*** D**" and engine["fetched"] == 3
    assert httpx["logger"] == "httpx" and httpx["level"] == "warning"


def test_libraries_speak_from_warnings_unless_debug_and_the_connector_at_its_level() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    logging.getLogger("httpx").info("HTTP Request: GET https://example.test/ 200 OK")
    structlog.get_logger("connector.sources.http").debug("http.request")
    structlog.get_logger("connector.sources.http").info("http.retry")
    assert [line["event"] for line in json_lines(stream)] == ["http.retry"]

    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    logging.getLogger("httpx").info("HTTP Request: GET https://example.test/ 200 OK")
    logging.getLogger("httpcore.connection").debug("connect_tcp.started")
    structlog.get_logger("connector.sources.http").debug("http.request")
    events = [line["event"] for line in json_lines(stream)]
    assert events == ["HTTP Request: GET https://example.test/ 200 OK", "http.request"]

    stream = io.StringIO()
    configure_logging("error", "json", stream=stream)
    logging.getLogger("apscheduler").warning("Run time of job was missed")
    structlog.get_logger("connector.daemon.service").warning("daemon.slow")
    assert stream.getvalue() == ""


def test_configuring_again_replaces_the_handler_instead_of_doubling_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", stream=first)
    configure_logging("info", "json", stream=second)
    logging.getLogger("alembic").warning("once")
    structlog.get_logger("connector.config").warning("config.warning")
    assert first.getvalue() == ""
    assert [line["event"] for line in json_lines(second)] == ["once", "config.warning"]


def test_alembic_lines_of_a_store_migration_are_json(tmp_path: Path) -> None:
    url = sqlite_url_for(tmp_path / "store.db")
    # A store one migration behind: opening it runs Alembic (a new one is made from the models).
    older_store(url)
    stream = io.StringIO()
    configure_logging("debug", "auto", stream=stream)
    with Store(url):
        pass
    lines = json_lines(stream)
    upgrades = [
        line
        for line in lines
        if line["logger"] == "alembic.runtime.migration" and "Running upgrade" in line["event"]
    ]
    assert upgrades, stream.getvalue()
    assert all(line["level"] == "info" for line in upgrades)


def test_a_terminal_gets_the_console_renderer_for_both_kinds_of_lines() -> None:
    stream = Terminal()
    configure_logging("info", "auto", stream=stream)
    structlog.get_logger("connector.pipeline.engine").info("sync.finished", fetched=3)
    logging.getLogger("apscheduler.scheduler").warning("Scheduler started late")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    assert "sync.finished" in lines[0] and "fetched" in lines[0]
    assert "Scheduler started late" in lines[1] and "apscheduler.scheduler" in lines[1]


def test_bound_run_puts_source_and_run_id_on_every_line_of_the_run_only() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    log = structlog.get_logger("connector.pipeline.engine")
    with bound_run("clinic-a", kind="sync") as run:
        log.info("sync.started")
        run.bind(run_id=41)
        logging.getLogger("httpx").warning("HTTP Request: GET https://example.test/ 429")
        log.info("sync.finished")
    log.info("daemon.idle")
    started, request, finished, idle = json_lines(stream)
    assert (started["source"], started["kind"]) == ("clinic-a", "sync")
    assert "run_id" not in started
    assert (request["source"], request["run_id"]) == ("clinic-a", 41)
    assert (finished["source"], finished["run_id"]) == ("clinic-a", 41)
    assert not {"source", "kind", "run_id"} & set(idle)


def test_concurrent_runs_in_their_own_tasks_keep_their_own_fields() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)

    async def run(source: str, run_id: int) -> None:
        with bound_run(source) as bound:
            bound.bind(run_id=run_id)
            await asyncio.sleep(0)
            # Work handed to a thread keeps the fields too (asyncio.to_thread copies them).
            await asyncio.to_thread(logging.getLogger("alembic").warning, "in a thread")
            await asyncio.sleep(0)
            structlog.get_logger("connector.pipeline.engine").info("sync.finished")

    async def both() -> None:
        await asyncio.gather(run("clinic-a", 1), run("clinic-b", 2))

    asyncio.run(both())
    pairs = sorted((line["source"], line["run_id"], line["event"]) for line in json_lines(stream))
    assert pairs == [
        ("clinic-a", 1, "in a thread"),
        ("clinic-a", 1, "sync.finished"),
        ("clinic-b", 2, "in a thread"),
        ("clinic-b", 2, "sync.finished"),
    ]


def test_bound_run_restores_what_an_outer_binding_had() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    log = structlog.get_logger("connector.daemon.backfill")
    with bound_run("clinic-a", kind="backfill"):
        with bound_run("clinic-a", kind="sync") as inner:
            inner.bind(run_id=5)
            inner.bind(run_id=6)
        log.info("backfill.window_done")
    (line,) = json_lines(stream)
    assert (line["source"], line["kind"]) == ("clinic-a", "backfill")
    assert "run_id" not in line
