"""`connector run` (the scheduled daemon) and `connector backfill` (resumable history loads).

Registers itself on the main `app` when `connector.cli.get_app()` imports it.
"""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Annotated

import typer
from rich.table import Table

from connector.backfill import Backfill, LogProgress, ProgressReporter, default_progress
from connector.backfill import parse_window as parse_window_days
from connector.cli import app, err, load, open_store, out, state
from connector.config import parse_duration
from connector.daemon import Daemon, wired_engine_factory
from connector.errors import ConfigError, ConnectorError

# Conventional exit status of a command stopped by Ctrl-C.
EXIT_INTERRUPTED = 130


@app.command()
def run() -> None:
    """Run as a daemon: sync every enabled source on its schedule until SIGTERM/SIGINT.

    Each source uses its `schedule` (or `daemon.default_schedule`): an interval such as 15m or
    a 5-field cron line in UTC. SIGHUP, or saving the config file, reloads the schedules.
    With `daemon.health_port` set, GET /healthz and /metrics answer on `daemon.health_host`.
    """
    config = load()
    with open_store(config) as store:
        code = asyncio.run(Daemon(state.config_path, config, store).run())
    raise typer.Exit(code)


def _date(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        err.print(f"{option} must be a date like 2025-01-31, not {value!r}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def backfill(
    source: Annotated[str, typer.Option("--source", "-s", help="The source to backfill.")],
    since: Annotated[str, typer.Option("--since", help="First invoice date (YYYY-MM-DD).")],
    until: Annotated[
        str | None,
        typer.Option(
            "--until", help="Last invoice date, inclusive (default: today, or the open backfill)."
        ),
    ] = None,
    window: Annotated[str, typer.Option("--window", help="Days per window, e.g. 7d or 2w.")] = "7d",
    workers: Annotated[
        int, typer.Option("--workers", "-w", min=1, max=64, help="Windows synced at once.")
    ] = 1,
    lease: Annotated[
        str | None,
        typer.Option("--lease", help="Window lease (default daemon.lease); renewed while syncing."),
    ] = None,
    progress_every: Annotated[
        str,
        typer.Option("--progress-every", help="Seconds between progress lines off a terminal."),
    ] = "10s",
) -> None:
    """Sync one source's invoices dated SINCE..UNTIL, window by window; re-run to continue.

    Windows are stored in the database and claimed under a lease: an interrupted backfill
    continues where it stopped, and several processes (other machines too, on PostgreSQL)
    running the same command split the windows. Exit 1 if windows failed (re-run to retry
    them), 130 if interrupted.
    """
    first = _date(since, "--since")
    last = _date(until, "--until") if until is not None else None
    try:
        days = parse_window_days(window)
        lease_span = parse_duration(lease) if lease is not None else None
        every = parse_duration(progress_every).total_seconds()
    except ValueError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(2) from None
    config = load()

    def progress(key: str) -> ProgressReporter:
        return default_progress(key, every) if every > 0 else LogProgress(key, 0.0)

    with open_store(config) as store:
        try:
            engine = wired_engine_factory()(config, store)
            job = Backfill(
                config,
                store,
                engine,
                source=source,
                since=first,
                until=last,
                window_days=days,
                workers=workers,
                lease=lease_span,
                progress=progress,
            )
            report = asyncio.run(job.run())
        except ConfigError as exc:
            err.print(str(exc), highlight=False)
            raise typer.Exit(2) from None
        except ConnectorError as exc:
            err.print(f"[bold red]Backfill failed[/] {exc}", highlight=False)
            raise typer.Exit(1) from None
    table = Table(title=f"Backfill {report.key}")
    for column in ("windows", "done", "failed", "left", *report.counts.as_dict(), "seconds"):
        table.add_column(column, justify="right")
    summary = report.summary
    table.add_row(
        str(summary.total),
        str(summary.done),
        str(summary.failed),
        str(summary.pending + summary.running),
        *(str(v) for v in report.counts.as_dict().values()),
        f"{report.seconds:.2f}",
    )
    out.print(table)
    for failure in report.failures:
        err.print(f"[red]window failed[/] {failure}", highlight=False)
    if report.interrupted:
        err.print("interrupted: run the same command again to continue", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED)
    if not report.complete:
        err.print("some windows failed: run the same command again to retry them")
        raise typer.Exit(1)
