"""`connector validate` (is a source ready for MediTrak?) and `connector report` (sync history).

`validate` exits 0 when the source is compliant, 1 when it is not and 2 when it could not be
read, so that a vendor can run it in its own CI.
"""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from connector.cli.common import err, load, open_store, private_output
from connector.errors import ConfigError, ConnectorError
from connector.reports import FORMATS, history_report, render
from connector.settings import AppConfig
from connector.store import Store
from connector.validate import DEFAULT_SAMPLE, ValidateOptions, validate_source

commands = typer.Typer()

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
        return Store(url, migrate=False)
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
) -> None:
    """Dry run against one source: connection, contract compliance, mapping coverage, verdict.

    Writes nothing to the store. Exit 0: ready; 1: not ready; 2: could not be read.
    """
    _check_format(fmt)
    since_day = _parse_since(since)
    config = load()
    try:
        config.source(source)
    except ConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None
    store = read_only_store(config)
    options = ValidateOptions(sample=None if every else sample, since=since_day)
    try:
        report = asyncio.run(validate_source(config, source, options=options, store=store))
    except ConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None
    finally:
        if store is not None:
            store.close()
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
    with open_store(config) as store:
        history = history_report(store, config, since=since_day, secrets=config.secrets())
    _write(render(history, fmt), output)
