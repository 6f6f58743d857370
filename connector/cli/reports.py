"""`connector validate` (is a source ready for MediTrak?) and `connector report` (sync history).

`validate` exits 0 when the source is compliant, 1 when it is not and 2 when it could not be
read, so that a vendor can run it in its own CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer

from connector.cli.common import err, load, open_store, out, private_output, reading_store
from connector.errors import ConfigError, ConnectorError
from connector.reports import FORMATS, history_report, render
from connector.runtime import StopSignals
from connector.settings import AppConfig
from connector.store import Store
from connector.validate import DEFAULT_SAMPLE, ValidateOptions, validate_source

commands = typer.Typer()

log = structlog.get_logger("connector.cli.reports")

FormatOpt = Annotated[str, typer.Option("--format", "-f", help="text, json, md or html.")]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write the report here (default stdout).")
]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="Only records / runs since this date (YYYY-MM-DD).")
]


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        err.print(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}", highlight=False)
        raise typer.Exit(2)


def _parse_since(text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        err.print(f"--since must be a date (YYYY-MM-DD), not {text!r}", highlight=False)
        raise typer.Exit(2) from None


def _write(text: str, output: Path | None) -> None:
    with private_output(output) as handle:
        handle.write(text)


def read_only_store(config: AppConfig) -> Store | None:
    """The store for reading the policy registry, opened without migrating or creating it:
    a dry run must not leave a database file behind where there was none."""
    url = config.store.sqlalchemy_url()
    prefix = "sqlite:///"
    if url.startswith(prefix) and not Path(url[len(prefix) :]).exists():
        return None
    try:
        return reading_store(url)
    except ConnectorError as exc:
        err.print(f"store not readable, policy registry not checked: {exc}", highlight=False)
        return None


@commands.command()
def validate(
    source: Annotated[str, typer.Option("--source", "-s", help="The configured source to check.")],
    sample: Annotated[
        int, typer.Option("--sample", "-n", min=1, help="Check the first N records of the list.")
    ] = DEFAULT_SAMPLE,
    every: Annotated[bool, typer.Option("--all", help="Check every record (no sample).")] = False,
    since: SinceOpt = None,
    fmt: FormatOpt = "text",
    output: OutputOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The report as JSON (same as --format json).")
    ] = False,
) -> None:
    """Dry run against one source: connection, contract compliance, mapping coverage, verdict.

    Writes nothing to the store. Exit 0: ready; 1: not ready; 2: could not be read; 130 / 143
    when stopped by SIGINT / SIGTERM.
    """
    fmt = "json" if as_json else fmt
    _check_format(fmt)
    since_day = _parse_since(since)
    with StopSignals() as stop:
        _validate(stop, source, sample, every, since_day, fmt, output)


def _validate(
    stop: StopSignals,
    source: str,
    sample: int,
    every: bool,
    since_day: date | None,
    fmt: str,
    output: Path | None,
) -> None:
    config = load()
    try:
        config.source(source)
    except ConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None
    store = read_only_store(config)
    options = ValidateOptions(sample=None if every else sample, since=since_day)
    try:
        report = asyncio.run(
            _until_stopped(stop, validate_source(config, source, options=options, store=store))
        )
    except ConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None
    except asyncio.CancelledError:
        report = None
    finally:
        if store is not None:
            store.close()
    if report is None or stop.received:
        name = signal.Signals(stop.signum or signal.SIGINT).name
        line = f"interrupted by {name}; 0 stored; run the same command to continue"
        log.warning("validate.interrupted", source=source, detail=line)
        out.print(line, highlight=False, markup=False)
        raise typer.Exit(stop.exit_code)
    _write(render(report, fmt), output)
    summary = report["summary"]
    if output is not None or fmt != "text":
        err.print(
            f"{source}: {report['verdict']} - {summary['blocked']} of {summary['records']} "
            "record(s) blocked" + (f"; report written to {output}" if output else ""),
            highlight=False,
            markup=False,
        )
    raise typer.Exit(int(report["exit_code"]))


async def _until_stopped(
    stop: StopSignals, work: Coroutine[Any, Any, dict[str, Any]]
) -> dict[str, Any]:
    """`work`, cancelled by the first SIGINT / SIGTERM (validate writes nothing: there is no
    batch to finish, the requests in flight are simply abandoned)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def cancel(_signum: int) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to stop
            loop.call_soon_threadsafe(task.cancel)

    stop.on_first(cancel)
    return await work


@commands.command()
def report(
    since: SinceOpt = None,
    fmt: FormatOpt = "text",
    output: OutputOpt = None,
) -> None:
    """Sync history per source: runs and their counts, failures, lag, quarantine by reason."""
    _check_format(fmt)
    since_day = _parse_since(since)
    config = load()
    with open_store(config, read_only=True) as store:
        history = history_report(store, config, since=since_day, secrets=config.secrets())
    _write(render(history, fmt), output)
