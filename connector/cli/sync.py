"""`connector sync`: every enabled source (or the named ones) once, each under its replica lock."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated

import typer

from connector.cli.common import (
    SourcesOpt,
    check_sources,
    load,
    open_store,
    out,
    results_table,
    wired_engine,
)
from connector.pipeline.engine import Engine, RunResult
from connector.settings import AppConfig, SourceConfig
from connector.store import Store
from connector.store.coordination import SourceLock, source_lock

commands = typer.Typer()


@commands.command()
def sync(
    source: SourcesOpt = None,
    full: Annotated[
        bool, typer.Option("--full", help="Ignore the cursor and resume point: read everything.")
    ] = False,
) -> None:
    """Sync every enabled source (or the named ones) once. Exit 1 if any source failed."""
    config = load()
    check_sources(config, source)
    with open_store(config) as store:
        engine = wired_engine(config, store)
        results = asyncio.run(locked_sync(engine, store, config, source or None, full=full))
    out.print(results_table(results))
    if any(not r.ok for r in results):
        raise typer.Exit(1)


async def locked_sync(
    engine: Engine, store: Store, config: AppConfig, names: Sequence[str] | None, *, full: bool
) -> list[RunResult]:
    """Sync sources concurrently, each under its replica lock, so a manual sync never runs
    beside a daemon's run of the same source."""

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

    return list(await asyncio.gather(*(one(s) for s in engine.selected_sources(names))))


async def _renew(lock: SourceLock, every: float) -> None:
    while True:
        await asyncio.sleep(max(0.5, every))
        await asyncio.to_thread(lock.renew)
