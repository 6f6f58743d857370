"""What every command module shares: the global options, loading the config and the store,
the two consoles, and the checks and outputs that several commands use alike.

Commands print human tables on stdout (plain aligned text when stdout is not a terminal) and
structured logs on stderr, and exit 2 when the operator's input (config, options) is wrong,
1 when something they must look at went wrong, 128 + the signal's number when stopped by one.
"""

from __future__ import annotations

import errno
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
from rich.text import Text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from connector.config import load_config
from connector.errors import ConfigError, ConnectorError, StoreError
from connector.issues import Reason
from connector.logging import configure_logging, register_secrets, scrub_text
from connector.masking import masked_store_url
from connector.pipeline.engine import Engine, RunResult
from connector.pipeline.wiring import build_engine
from connector.settings import AppConfig
from connector.store import Store
from connector.store.database import HEAD_REVISION, current_revision

# Off a terminal rich would wrap tables at 80 columns and text at the width; logs and pipes
# want whole lines.
out = Console(width=None if sys.stdout.isatty() else 160, soft_wrap=not sys.stdout.isatty())
err = Console(
    stderr=True, width=None if sys.stderr.isatty() else 160, soft_wrap=not sys.stderr.isatty()
)

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


def open_store(config: AppConfig, *, read_only: bool = False) -> Store:
    """The store, migrated to the newest schema; exit 2 with an error naming its path.

    `read_only` (commands that only read: status, export, report): a store at the newest
    schema is opened without the migration's write transaction, so it works on a read-only
    file or mount; one that needs migrating says so instead of failing obscurely."""
    url = config.store.sqlalchemy_url()
    try:
        if read_only:
            return _open_for_reading(url)
        return Store(url)
    except ConnectorError as exc:
        err.print(f"Store error: {store_problem(url, exc)}", highlight=False, markup=False)
        raise typer.Exit(2) from None


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite store URL (None for PostgreSQL or an in-memory database)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database).removeprefix("file:").split("?", 1)[0])


def _writable(path: Path) -> bool:
    target = path if path.exists() else path.parent
    return os.access(target, os.W_OK) and os.access(path.parent, os.W_OK)


def reading_store(url: str) -> Store:
    """The store at `url` opened for reading only: never migrated, and a SQLite file this
    user may not write is read as the immutable file it is."""
    path = sqlite_path(url)
    if path is None or not path.exists() or _writable(path):
        return Store(url, migrate=False)
    if Path(f"{path}-wal").exists():
        raise StoreError(
            "it is read-only for this user while another process writes it (its -wal "
            "file exists); run this command as the store's owner"
        )
    # Nobody can be writing a file nobody may write: read it as immutable (SQLite would
    # otherwise need to create its shared-memory file beside it, and fail).
    return Store(f"sqlite:///file:{path}?mode=ro&immutable=1&uri=true", migrate=False)


def _open_for_reading(url: str) -> Store:
    path = sqlite_path(url)
    existed = path is None or path.exists()
    store = reading_store(url)
    try:
        with store.engine.connect() as connection:
            revision = current_revision(connection)
    except SQLAlchemyError as exc:
        store.close()
        detail = getattr(exc, "orig", None) or exc
        raise StoreError(f"cannot read it: {type(exc).__name__}: {detail}") from exc
    if revision == HEAD_REVISION:
        return store
    if revision is None and not existed:
        # A new store file: a read command finds it empty, as a fresh one is.
        store.migrate()
        return store
    if path is not None and not _writable(path):
        store.close()
        raise StoreError(
            f"it is read-only and its schema is at revision {revision or 'none'}, older than "
            f"this version's {HEAD_REVISION}: run `connector sync` (or any writing command) "
            "once with write access to migrate it"
        )
    store.migrate()
    return store


def store_problem(url: str, exc: BaseException) -> str:
    """A store failure as the operator reads it: which store, and "read-only" when that is
    the cause (an EROFS mount, a file or directory this user may not write)."""
    path = sqlite_path(url)
    where = str(path) if path is not None else masked_store_url(url)
    # SQLAlchemy's "(Background on this error at: URL)" line says nothing about this store.
    lines = scrub_text(str(exc)).splitlines()
    text = "\n".join(line for line in lines if not line.startswith("(Background on this error"))
    cause = exc.__cause__
    codes = {getattr(cause, "errno", None), getattr(getattr(cause, "orig", None), "errno", None)}
    lowered = text.lower()
    read_only = bool(codes & {errno.EROFS, errno.EACCES, errno.EPERM}) or (
        "readonly" in lowered or "read-only" in lowered
    )
    if path is not None and not read_only and "unable to open database file" in lowered:
        read_only = not _writable(path)
    if text.startswith("it is "):
        return f"the store {where}: {text}"
    if read_only:
        return (
            f"the store {where} is read-only (the file or its directory cannot be written: "
            f"check permissions and the mount); commands that only read (status, export, "
            f"report) work on it. Detail: {text}"
        )
    return f"the store {where}: {text}"


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


def show(table: Table) -> None:
    """A table on stdout: drawn with boxes on a terminal, plain aligned text (header line,
    then one line per row, columns two spaces apart) when stdout is a pipe or a file."""
    if out.is_terminal:
        out.print(table)
        return
    print(plain_table(table), flush=True)


def plain_table(table: Table) -> str:
    rows = [[column.header for column in table.columns]] + [
        list(cells) for cells in zip(*(column.cells for column in table.columns), strict=True)
    ]
    text = [[_plain(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in text) for i in range(len(table.columns))]
    lines = []
    if table.title:
        lines.append(_plain(table.title))
    for row in text:
        cells = [
            cell.rjust(width) if column.justify == "right" else cell.ljust(width)
            for cell, width, column in zip(row, widths, table.columns, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _plain(cell: Any) -> str:
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        return Text.from_markup(cell).plain
    return str(cell)


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
