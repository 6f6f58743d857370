"""`connector run` (the scheduled daemon), `connector backfill` (resumable history loads) and
`connector backfill-status` (where each stored backfill stands).
"""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import date, datetime
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from connector.cli.common import err, load, open_store, print_json, show, state
from connector.daemon.backfill import (
    Backfill,
    BackfillReport,
    LogProgress,
    ProgressReporter,
    default_progress,
)
from connector.daemon.backfill import parse_window as parse_window_days
from connector.errors import ConfigError, ConnectorError
from connector.logging import mask_patient_data, scrub_text
from connector.pipeline.wiring import build_engine
from connector.runtime import exit_status
from connector.schedule import parse_duration
from connector.store.coordination import BackfillStatus, backfill_statuses

commands = typer.Typer()


@commands.command()
def run() -> None:
    """Run as a daemon: sync every enabled source on its schedule until SIGTERM/SIGINT.

    Each source uses its `schedule` (or `daemon.default_schedule`): an interval such as 15m or
    a 5-field cron line in UTC. SIGHUP, or saving the config file, reloads the schedules.
    With `daemon.health_port` set, GET /healthz and /metrics answer on `daemon.health_host`.
    """
    # The daemon brings the web stack (it hosts /healthz and /metrics): loaded only for `run`,
    # as `connector serve` does, so other commands do not pay for FastAPI at start-up.
    from connector.daemon.service import Daemon

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


@commands.command()
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Sync one source's invoices dated SINCE..UNTIL, window by window; re-run to continue.

    Windows are stored in the database and claimed under a lease: an interrupted backfill
    continues where it stopped, and several processes (other machines too, on PostgreSQL)
    running the same command split the windows. Exit 1 if windows failed (re-run to retry
    them), 130 if interrupted by SIGINT (Ctrl-C), 143 by SIGTERM.
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
            engine = build_engine(config, store)
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
    _report_backfill(report, as_json=as_json)


def _interruption(report: BackfillReport) -> tuple[str, int]:
    """The line printed when a signal stopped the backfill, and the exit status it gives."""
    signum = report.stop_signal or signal.SIGINT
    name = signal.Signals(signum).name
    return f"interrupted by {name}: run the same command again to continue", exit_status(signum)


def _report_json(report: BackfillReport, message: str | None) -> dict[str, Any]:
    summary = report.summary
    return {
        "backfill": report.key,
        "complete": report.complete,
        "interrupted": report.interrupted,
        "message": message,
        "windows": {
            "total": summary.total,
            "done": summary.done,
            "failed": summary.failed,
            "left": summary.pending + summary.running,
        },
        "counts": report.counts.as_dict(),
        "seconds": round(report.seconds, 3),
        "failures": [_shown_error(failure) for failure in report.failures],
    }


def _report_backfill(report: BackfillReport, *, as_json: bool) -> None:
    """The summary (a table, or JSON), the failed windows, then the exit status."""
    message, code = _interruption(report) if report.interrupted else (None, 0)
    if not report.interrupted and not report.complete:
        message, code = "some windows failed: run the same command again to retry them", 1
    if as_json:
        print_json(_report_json(report, message))
        raise typer.Exit(code)
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
    show(table)
    for failure in report.failures:
        err.print(Text.assemble(("window failed", "red"), " ", _shown_error(failure) or ""))
    if message:
        err.print(message, highlight=False)
    raise typer.Exit(code)


# ----------------------------------------------------------------------------- backfill-status

# A failed window's error, as shown: its first line, this long at most.
_ERROR_SHOWN = 200


def _shown_error(error: str | None) -> str | None:
    """An error text safe to print: secrets scrubbed and policy numbers masked, like logs."""
    lines = scrub_text(error or "").strip().splitlines()
    if not lines:
        return None
    masked = str(mask_patient_data(None, "", {"error": lines[0]})["error"])
    return masked if len(masked) <= _ERROR_SHOWN else masked[: _ERROR_SHOWN - 1] + "…"


def _iso(moment: datetime | None, *, whole_seconds: bool = False) -> str | None:
    if moment is None:
        return None
    if whole_seconds:
        moment = moment.replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def _status_json(status: BackfillStatus) -> dict[str, Any]:
    return {
        "backfill": status.key,
        "source": status.source,
        "since": status.date_from.isoformat(),
        "until": status.date_to.isoformat(),
        "state": status.state,
        "finished": status.finished,
        "windows": {
            "total": status.total,
            "done": status.done,
            "pending": status.pending,
            "leased": status.leased,
            "expired": status.expired,
            "failed": status.failed,
        },
        "counts": status.counts,
        "last_activity": _iso(status.last_activity),
        "as_of": _iso(status.as_of),
        "leases": [
            {
                "window_from": lease.date_from.isoformat(),
                "window_to": lease.date_to.isoformat(),
                "owner": lease.owner,
                "expires_at": _iso(lease.expires_at),
                "live": lease.live,
            }
            for lease in status.leases
        ],
        "failures": [
            {
                "window_from": failure.date_from.isoformat(),
                "window_to": failure.date_to.isoformat(),
                "attempts": failure.attempts,
                "error": _shown_error(failure.error),
            }
            for failure in status.failures
        ],
    }


def _relative(moment: datetime | None, as_of: datetime) -> str:
    if moment is None:
        return "-"
    seconds = round((moment - as_of).total_seconds())
    return f"in {seconds}s" if seconds >= 0 else f"{-seconds}s ago"


_STATE_STYLE = {"complete": "green", "running": "cyan", "stopped": "yellow", "failed": "red"}


def _status_tables(statuses: list[BackfillStatus]) -> list[Table]:
    """The overview, then the leased and the failed windows (tables left empty are dropped)."""
    overview = Table(title="Backfills")
    for column in ("source", "range", "state"):
        overview.add_column(column)
    for column in ("windows", "done", "pending", "leased", "expired", "failed", "fetched"):
        overview.add_column(column, justify="right")
    overview.add_column("last activity")
    leases = Table(title="Leased windows")
    for column in ("backfill", "window", "holder", "lease until", "expires"):
        leases.add_column(column)
    failures = Table(title="Failed windows (run the backfill again to retry them)")
    for column in ("backfill", "window", "attempts", "error"):
        failures.add_column(column, justify="right" if column == "attempts" else "left")
    for status in statuses:
        overview.add_row(
            status.source,
            f"{status.date_from}..{status.date_to}",
            Text(status.state, style=_STATE_STYLE.get(status.state, "")),
            *(
                str(value)
                for value in (
                    status.total,
                    status.done,
                    status.pending,
                    status.leased,
                    status.expired,
                    status.failed,
                    status.counts.get("fetched", 0),
                )
            ),
            _iso(status.last_activity, whole_seconds=True) or "-",
        )
        for lease in status.leases:
            expires = _relative(lease.expires_at, status.as_of)
            leases.add_row(
                status.key,
                f"{lease.date_from}..{lease.date_to}",
                Text(lease.owner or "-"),
                _iso(lease.expires_at, whole_seconds=True) or "-",
                expires if lease.live else Text(f"{expires}, claimable", style="yellow"),
            )
        for failure in status.failures:
            failures.add_row(
                status.key,
                f"{failure.date_from}..{failure.date_to}",
                str(failure.attempts),
                # Text, not markup: an error message may hold brackets.
                Text(_shown_error(failure.error) or "-"),
            )
    return [table for table in (overview, leases, failures) if table.row_count]


@commands.command("backfill-status")
def backfill_status(
    source: Annotated[
        str | None, typer.Option("--source", "-s", help="Only this source's backfills.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per stored backfill: its range, windows done / pending / leased / expired / failed,
    who holds each lease and until when, invoices fetched so far, and whether it is finished.

    Read-only: safe beside running backfills. Lease times are compared on the clock that
    decides them (the database's on PostgreSQL). Windows whose lease expired are claimable:
    their worker is gone, and the next `connector backfill` of that range takes them over.
    """
    config = load()
    with open_store(config) as store:
        try:
            statuses = backfill_statuses(store, source)
        except ConnectorError as exc:
            err.print(f"[bold red]Store error[/] {exc}", highlight=False)
            raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps([_status_json(status) for status in statuses], indent=2))
        return
    if not statuses:
        scope = f" of source {source!r}" if source else ""
        err.print(f"no backfills{scope} stored", highlight=False)
        return
    for table in _status_tables(statuses):
        show(table)
