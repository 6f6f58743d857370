"""What every command module shares: the global options, loading the config and the store,
the two consoles, and the checks and outputs that several commands use alike.

Commands print human tables on stdout and structured logs on stderr, and exit 2 when the
operator's input (config, options) is wrong, 1 when something they must look at went wrong.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated, Any

import structlog
import typer
from rich.console import Console
from rich.table import Table

from connector.config import load_config
from connector.errors import ConfigError, ConnectorError
from connector.issues import Reason
from connector.logging import configure_logging, register_secrets
from connector.pipeline.engine import Engine, RunResult
from connector.pipeline.wiring import build_engine
from connector.settings import AppConfig
from connector.store import Store

# Off a terminal rich would wrap tables at 80 columns; logs and pipes want whole lines.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

DEFAULT_CONFIG = "connector.yaml"


class State:
    """The global options (`connector -c FILE --log-level LEVEL COMMAND`), set by the root
    callback before any command runs."""

    config_path: Path = Path(DEFAULT_CONFIG)
    log_level: str | None = None


state = State()

SourceOpt = Annotated[str | None, typer.Option("--source", "-s", help="Only this source.")]
SourcesOpt = Annotated[
    list[str] | None, typer.Option("--source", "-s", help="Only this source (repeatable).")
]
ReasonOpt = Annotated[
    str | None, typer.Option("--reason", "-r", help="Only records with this code.")
]
RevealOpt = Annotated[
    bool, typer.Option("--reveal", help="Show patient names and policy numbers unmasked.")
]
TextOrJsonOpt = Annotated[str, typer.Option("--format", "-f", help="text or json.")]


def load() -> AppConfig:
    """The config named by `-c`, with logging set up from it; exit 2 listing every problem."""
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


def check_sources(config: AppConfig, names: Sequence[str] | None) -> None:
    """Exit 2 unless every `--source` names a configured source."""
    try:
        for name in names or ():
            config.source(name)
    except ConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None


def wired_engine(config: AppConfig, store: Store) -> Engine:
    """The engine with category rules, policy registry and patient links wired in (one
    snapshot per run); exit 2 if the rules or registry settings are wrong."""
    try:
        return build_engine(config, store)
    except ConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None


def check_text_or_json(fmt: str) -> None:
    if fmt not in ("text", "json"):
        err.print(f"--format must be text or json, not {fmt!r}", highlight=False)
        raise typer.Exit(2)


def check_reason(reason: str | None) -> str | None:
    """The reason code named by `--reason`, upper-cased; exit 2 listing the known ones."""
    if reason is None:
        return None
    code = reason.strip().upper()
    if code not in Reason.__members__:
        known = ", ".join(r.value for r in Reason)
        err.print(f"unknown reason code {reason!r}; known: {known}", highlight=False)
        raise typer.Exit(2)
    return code


def print_json(payload: Any) -> None:
    # Plain print: rich would colour and re-wrap JSON that scripts are meant to parse.
    print(json.dumps(payload, ensure_ascii=False, indent=2, default=str))


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
