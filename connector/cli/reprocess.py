"""`connector reprocess`: re-validate quarantined records from their stored payload (no network)
with the current category rules and policy registry."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

import typer
from rich.table import Table

from connector.cli.common import (
    ReasonOpt,
    SourcesOpt,
    check_reason,
    check_sources,
    load,
    open_store,
    out,
    print_json,
    show,
    wired_engine,
)
from connector.pipeline.reprocess import ReprocessResult
from connector.pipeline.reprocess import reprocess as reprocess_quarantine

commands = typer.Typer()


@commands.command()
def reprocess(
    source: SourcesOpt = None,
    reason: ReasonOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Re-validate quarantined records from their stored payload (no network) with the
    current rules and registry; records that now pass move into the store."""
    code = check_reason(reason)
    config = load()
    check_sources(config, source)
    with open_store(config) as store:
        engine = wired_engine(config, store)
        results = reprocess_quarantine(engine, sources=source or None, reason=code)
    if as_json:
        print_json(
            {
                "ok": not any(r.error for r in results),
                "moved": sum(r.moved for r in results),
                "sources": [_result_json(r) for r in results],
            }
        )
        if any(r.error for r in results):
            raise typer.Exit(1)
        return
    show(_summary_table(results))
    total = sum(r.moved for r in results)
    out.print(f"moved {total} record(s) into the store", highlight=False)
    moved_by_reason: Counter[str] = Counter()
    for r in results:
        moved_by_reason.update(r.moved_by_reason)
    for code_moved, count in sorted(moved_by_reason.items()):
        out.print(f"  {code_moved}: {count} moved", highlight=False)
    if any(r.error for r in results):
        raise typer.Exit(1)


def _result_json(result: ReprocessResult) -> dict[str, Any]:
    return {
        "source": result.source,
        "ok": result.error is None,
        "error": result.error,
        "run_id": result.run_id,
        "examined": result.examined,
        "moved": result.moved,
        "still_quarantined": result.still_quarantined,
        "needs_sync": result.skipped,
        "moved_by_reason": dict(sorted(result.moved_by_reason.items())),
    }


def _summary_table(results: list[ReprocessResult]) -> Table:
    table = Table(title="Reprocess summary")
    for column in ("source", "result", "examined", "moved", "still quarantined", "needs sync"):
        table.add_column(column, justify="left" if column in ("source", "result") else "right")
    for r in results:
        outcome = "[green]ok[/]" if r.error is None else f"[red]failed[/]: {r.error}"
        table.add_row(
            r.source,
            outcome,
            str(r.examined),
            str(r.moved),
            str(r.still_quarantined),
            str(r.skipped),
        )
    return table
