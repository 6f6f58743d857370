"""`connector status`: per source, the last run and its outcome, cursor, lag and counts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from connector.cli.common import load, open_store, out, show

commands = typer.Typer()


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


@commands.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per source: last run and its outcome, cursor, lag, stored and quarantined counts."""
    config = load()
    with open_store(config, read_only=True) as store:
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
    show(table)
