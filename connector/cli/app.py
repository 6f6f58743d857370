"""The `connector` command line (typer): sync, status, export, sandbox, demo and friends.

Commands load the config lazily, print human tables on stdout and structured logs on
stderr, and exit non-zero when something the operator must look at went wrong.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any

import structlog
import typer
from rich.console import Console
from rich.table import Table

from connector.config import load_config
from connector.errors import ConfigError, ConnectorError
from connector.logging import configure_logging, register_secrets
from connector.pipeline.engine import Engine, RunResult
from connector.pipeline.wiring import build_engine
from connector.runtime import tune_garbage_collector
from connector.settings import AppConfig, SourceConfig
from connector.store import Store

app = typer.Typer(
    name="connector",
    help="Invoice Connector: pull invoices from billing systems into validated MediTrak records.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Off a terminal rich would wrap tables at 80 columns; logs and pipes want whole lines.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

DEFAULT_CONFIG = "connector.yaml"


class State:
    config_path: Path = Path(DEFAULT_CONFIG)
    log_level: str | None = None


state = State()


@app.callback()
def _global(
    config: Annotated[
        Path,
        typer.Option(
            "--config", "-c", envvar="CONNECTOR_CONFIG", help="YAML config file.", show_default=True
        ),
    ] = Path(DEFAULT_CONFIG),
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = None,
) -> None:
    state.config_path = config
    state.log_level = log_level


def load() -> AppConfig:
    warnings: list[str] = []
    try:
        config = load_config(state.config_path, warnings=warnings)
    except ConfigError as exc:
        err.print(f"[bold red]Invalid configuration[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    register_secrets(config.secrets())
    configure_logging(state.log_level or config.logging.level, config.logging.format)
    for warning in warnings:
        # A log line, so that --log-level error and JSON logs treat it like every warning.
        structlog.get_logger("connector.config").warning("config.warning", detail=warning)
    return config


def open_store(config: AppConfig) -> Store:
    try:
        return Store(config.store.sqlalchemy_url())
    except ConnectorError as exc:
        err.print(f"[bold red]Store error[/] {exc}", highlight=False)
        raise typer.Exit(2) from None


def results_table(results: Sequence[RunResult], title: str = "Sync summary") -> Table:
    table = Table(title=title)
    for column in (
        "source",
        "result",
        "fetched",
        "inserted",
        "updated",
        "unchanged",
        "quarantined",
        "released",
        "seconds",
    ):
        table.add_column(column, justify="left" if column in ("source", "result") else "right")
    for r in results:
        c = r.counts
        outcome = "[green]ok[/]" if r.ok else f"[red]failed[/]: {r.error}"
        table.add_row(
            r.source,
            outcome,
            *(
                str(v)
                for v in (c.fetched, c.inserted, c.updated, c.unchanged, c.quarantined, c.released)
            ),
            f"{r.seconds:.2f}",
        )
    return table


@app.command()
def sync(
    source: Annotated[
        list[str] | None, typer.Option("--source", "-s", help="Only this source (repeatable).")
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Ignore the cursor and resume point: read everything.")
    ] = False,
) -> None:
    """Sync every enabled source (or the named ones) once. Exit 1 if any source failed."""
    config = load()
    try:
        for name in source or ():
            config.source(name)
    except ConfigError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(2) from None
    with open_store(config) as store:
        try:
            # Category rules, policy registry and patient links wired in (one snapshot per run).
            engine = build_engine(config, store)
        except ConfigError as exc:
            err.print(str(exc), highlight=False, markup=False)
            raise typer.Exit(2) from None
        results = asyncio.run(locked_sync(engine, store, config, source or None, full=full))
    out.print(results_table(results))
    if any(not r.ok for r in results):
        raise typer.Exit(1)


async def locked_sync(
    engine: Engine, store: Store, config: AppConfig, names: Sequence[str] | None, *, full: bool
) -> list[RunResult]:
    """Sync sources concurrently, each under its replica lock, so a manual sync never runs
    beside a daemon's run of the same source."""
    from connector.store.coordination import source_lock

    async def one(source: SourceConfig) -> RunResult:
        lock = source_lock(store, source.name, config.daemon.lease)
        if not await asyncio.to_thread(lock.acquire):
            busy = "another process is syncing this source right now; try again later"
            return RunResult(source=source.name, kind="sync", ok=False, error=busy)
        renewing = asyncio.create_task(_renew(lock, config.daemon.lease.total_seconds() / 3))
        try:
            return await engine.sync_source(source, full=full)
        finally:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)
            await asyncio.to_thread(lock.release)

    async def _renew(lock: Any, every: float) -> None:
        while True:
            await asyncio.sleep(max(0.5, every))
            await asyncio.to_thread(lock.renew)

    return list(await asyncio.gather(*(one(s) for s in engine.selected_sources(names))))


def _lag(cursor: datetime | None) -> str:
    if cursor is None:
        return "-"
    seconds = int((datetime.now(UTC) - cursor).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per source: last run and its outcome, cursor, lag, stored and quarantined counts."""
    config = load()
    with open_store(config) as store:
        names = [s.name for s in config.sources]
        names += [s.source for s in store.all_states() if s.source not in names]
        rows = []
        for name in names:
            last = store.runs(name, limit=1)
            run = last[0] if last else None
            st = store.get_state(name)
            rows.append(
                {
                    "source": name,
                    "last_run": run.started_at.isoformat() if run else None,
                    "kind": run.kind if run else None,
                    "outcome": run.status if run else "never run",
                    "error": run.error if run else None,
                    "cursor": st.cursor.isoformat() if st.cursor else None,
                    "lag": _lag(st.cursor),
                    "resume_pending": st.resume is not None,
                    "stored": store.count_invoices(name),
                    "quarantined": store.count_quarantined(name),
                }
            )
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title="Sources")
    for column in ("source", "last run", "outcome", "cursor", "lag", "stored", "quarantined"):
        table.add_column(column)
    for row in rows:
        outcome = str(row["outcome"])
        if row["error"]:
            outcome += f": {row['error']}"
        if row["resume_pending"]:
            outcome += " (will resume)"
        table.add_row(
            str(row["source"]),
            str(row["last_run"] or "-"),
            outcome,
            str(row["cursor"] or "-"),
            str(row["lag"]),
            str(row["stored"]),
            str(row["quarantined"]),
        )
    out.print(table)


@contextmanager
def private_output(path: Path | None) -> Iterator[IO[str]]:
    """stdout, or a file created readable by its owner only (exports hold patient data)."""
    if path is None:
        yield sys.stdout
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.chmod(path, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        yield handle


CSV_COLUMNS = (
    "source",
    "id",
    "invoice_number",
    "invoice_date",
    "status",
    "total_amount",
    "currency",
    "facility",
    "patient_name",
    "policy_number",
    "line_no",
    "category",
    "description",
    "quantity",
    "unit_price",
    "item_total",
)


@app.command()
def export(
    source: Annotated[str | None, typer.Option("--source", "-s", help="Only this source.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="jsonl or csv.")] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File (default stdout).")
    ] = None,
    include_void: Annotated[
        bool, typer.Option("--include-void", help="Also export void (non-billable) invoices.")
    ] = False,
) -> None:
    """Stored invoices as MediTrak import records (jsonl), or one CSV row per line item."""
    if fmt not in ("jsonl", "csv"):
        err.print(f"--format must be jsonl or csv, not {fmt!r}")
        raise typer.Exit(2)
    config = load()
    count = 0
    with open_store(config) as store, private_output(output) as handle:
        invoices = store.iter_invoices(source, include_void=include_void)
        if fmt == "jsonl":
            for invoice in invoices:
                handle.write(json.dumps(invoice.to_import_record(), ensure_ascii=False) + "\n")
                count += 1
        else:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            for invoice in invoices:
                count += 1
                for line_no, item in enumerate(invoice.items, start=1):
                    writer.writerow(
                        [
                            invoice.source,
                            invoice.id,
                            invoice.invoice_number,
                            invoice.invoice_date,
                            invoice.status,
                            invoice.total_amount,
                            invoice.currency,
                            invoice.facility,
                            invoice.patient.name,
                            invoice.patient.policy_number,
                            line_no,
                            item.category,
                            item.description,
                            item.quantity,
                            item.unit_price,
                            item.total,
                        ]
                    )
    if output is not None:
        err.print(f"exported {count} invoice(s) to {output}")


# Command groups live in their own modules and register themselves on `app` when imported.
COMMAND_MODULES = (
    "connector.cli.sandbox",
    "connector.cli.quarantine",
    "connector.cli.daemon",
    "connector.cli.reports",
)


def get_app() -> typer.Typer:
    """The full command tree (every command module that is installed)."""
    import importlib
    import importlib.util

    for module in COMMAND_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    return app


def main(argv: Sequence[str] | None = None) -> Any:
    command = get_app()
    tune_garbage_collector()
    return command(args=list(argv) if argv is not None else None, prog_name="connector")
