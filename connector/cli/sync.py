"""`connector sync`: every enabled source (or the named ones) once, each under its replica lock.

SIGINT / SIGTERM end every run at its next batch boundary (the page being fetched is
abandoned, the batch being written is committed): the runs are recorded "interrupted", one
summary line says what was stored, and the command exits 130 / 143. A second signal exits at
once. `--dry-run` fetches, maps and validates without writing anything.
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer
from rich.table import Table

from connector.cli.common import (
    SourcesOpt,
    check_sources,
    load,
    open_store,
    print_json,
    results_table,
    show,
    sqlite_path,
    wired_engine,
)
from connector.pipeline.engine import Engine, RunResult
from connector.runtime import StopSignals
from connector.settings import AppConfig, SourceConfig
from connector.store import Store
from connector.store.coordination import SourceLock, source_lock

commands = typer.Typer()

log = structlog.get_logger("connector.cli.sync")


@commands.command()
def sync(
    source: SourcesOpt = None,
    full: Annotated[
        bool, typer.Option("--full", help="Ignore the cursor and resume point: read everything.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Fetch, map and validate, write nothing; print what would be stored and "
            "quarantined, by reason.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Sync every enabled source (or the named ones) once. Exit 1 if any source failed,
    130 / 143 when stopped by SIGINT / SIGTERM (run the same command to continue)."""
    with StopSignals() as stop:
        config = load()
        check_sources(config, source)
        with _store_for(config, dry_run=dry_run) as store:
            engine = wired_engine(config, store)
            stop.on_first(lambda _signum: engine.request_stop())
            results = asyncio.run(
                locked_sync(engine, store, config, source or None, full=full, dry_run=dry_run)
            )
        interrupted = stop.received
        code = stop.exit_code if interrupted else 1 if any(not r.ok for r in results) else 0
        _report(results, dry_run=dry_run, as_json=as_json, stop=stop if interrupted else None)
    raise typer.Exit(code)


@contextmanager
def _store_for(config: AppConfig, *, dry_run: bool) -> Iterator[Store]:
    """The store a sync writes; for a dry run the store read only (its registry, cursors and
    resume points), or an empty scratch one when there is none yet: nothing is created."""
    if not dry_run:
        with open_store(config) as store:
            yield store
        return
    path = sqlite_path(config.store.sqlalchemy_url())
    if path is not None and not path.exists():
        with (
            tempfile.TemporaryDirectory(prefix="connector-dry-run-") as scratch,
            Store(f"sqlite:///{Path(scratch) / 'empty.db'}") as empty,
        ):
            yield empty
        return
    with open_store(config, read_only=True) as store:
        yield store


async def locked_sync(
    engine: Engine,
    store: Store,
    config: AppConfig,
    names: Sequence[str] | None,
    *,
    full: bool,
    dry_run: bool = False,
) -> list[RunResult]:
    """Sync sources concurrently, each under its replica lock, so a manual sync never runs
    beside a daemon's run of the same source. A dry run writes nothing, the lock included."""

    async def one(source: SourceConfig) -> RunResult:
        if dry_run:
            return await engine.sync_source(source, full=full, dry_run=True)
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

    return list(await asyncio.gather(*(one(s) for s in engine.selected_sources(names))))


async def _renew(lock: SourceLock, every: float) -> None:
    while True:
        await asyncio.sleep(max(0.5, every))
        await asyncio.to_thread(lock.renew)


# ----------------------------------------------------------------------------- output


def all_quarantined_warning(result: RunResult) -> str | None:
    """The warning of a run whose every record went to quarantine, with the top reason's fix."""
    if not result.all_quarantined():
        return None
    top = result.top_reason()
    reason = f"; top reason {top[0]} ({top[1]} record(s)): {top[2]}" if top else ""
    verb = "would be" if result.dry_run else "were"
    return (
        f"{result.source}: all {result.counts.fetched} record(s) fetched {verb} quarantined{reason}"
    )


def interruption_line(results: Sequence[RunResult], signum: int) -> str:
    stored = sum(r.stored for r in results)
    name = signal.Signals(signum).name
    return f"interrupted by {name}; {stored} stored; run the same command to continue"


def result_json(result: RunResult) -> dict[str, Any]:
    document: dict[str, Any] = {
        "source": result.source,
        "ok": result.ok,
        "interrupted": result.interrupted,
        "error": result.error,
        "run_id": result.run_id,
        "resumed": result.resumed,
        "seconds": round(result.seconds, 3),
        "counts": result.counts.as_dict(),
        "quarantined_by_reason": dict(result.reasons.most_common()),
        "warning": all_quarantined_warning(result),
    }
    if result.dry_run:
        document["would_store"] = result.would_store
        document["would_quarantine"] = result.counts.quarantined
    return document


def dry_run_table(results: Sequence[RunResult]) -> Table:
    table = Table(title="Dry run: nothing was written")
    for column in ("source", "result", "fetched", "would store", "would quarantine", "by reason"):
        table.add_column(
            column, justify="right" if column in ("fetched", "would store") else "left"
        )
    for r in results:
        outcome = "[green]ok[/]" if r.ok else f"[red]failed[/]: {r.error}"
        reasons = ", ".join(f"{code} {n}" for code, n in r.reasons.most_common()) or "-"
        table.add_row(
            r.source,
            outcome,
            str(r.counts.fetched),
            str(r.would_store),
            str(r.counts.quarantined),
            reasons,
        )
    return table


def _report(
    results: list[RunResult], *, dry_run: bool, as_json: bool, stop: StopSignals | None
) -> None:
    warnings = [w for w in (all_quarantined_warning(r) for r in results) if w]
    for warning in warnings:
        log.warning("sync.all_quarantined", detail=warning)
    line = interruption_line(results, stop.signum or signal.SIGINT) if stop else None
    if line is not None:
        log.warning("sync.interrupted", detail=line, stored=sum(r.stored for r in results))
    if as_json:
        print_json(
            {
                "ok": all(r.ok for r in results) and line is None,
                "dry_run": dry_run,
                "interrupted": line is not None,
                "message": line,
                "sources": [result_json(r) for r in results],
            }
        )
        return
    show(dry_run_table(results) if dry_run else results_table(results))
    for warning in warnings:
        print(f"warning: {warning}", flush=True)
    if line is not None:
        print(line, flush=True)
