"""The `connector` command line (typer): the root command, its global options, and the whole
command tree built from the command modules listed in `COMMAND_MODULES`.

Each command module defines its commands on a `typer.Typer` of its own, named `commands`:
unnamed for top-level commands (`connector sync`), named for a group (`connector policies
import`). Nothing registers itself by being imported; this file is the one list.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any

import typer

from connector.cli import (
    categories,
    config,
    daemon,
    export,
    mapping_check,
    policies,
    quarantine,
    reports,
    reprocess,
    sandbox,
    schema,
    serve,
    status,
    sync,
)
from connector.cli.common import DEFAULT_CONFIG, state
from connector.runtime import tune_garbage_collector

# In the order `connector --help` lists them.
COMMAND_MODULES = (
    sync,  # sync
    status,  # status
    export,  # export
    sandbox,  # sandbox, demo
    reprocess,  # reprocess
    daemon,  # run, backfill, backfill-status
    serve,  # serve, serve hash-key
    reports,  # validate, report
    categories,  # categories explain
    policies,  # policies import | link | list
    quarantine,  # quarantine list | show | reasons
    config,  # config check
    schema,  # schema
    mapping_check,  # mapping check
)

DISTRIBUTION = "invoice-connector"


def _print_version(value: bool) -> None:
    # Eager: answered before the config is read or a command is required.
    if value:
        print(f"{DISTRIBUTION} {version(DISTRIBUTION)}")
        raise typer.Exit(0)


def _global_options(
    config: Annotated[
        Path,
        typer.Option(
            "--config", "-c", envvar="CONNECTOR_CONFIG", help="YAML config file.", show_default=True
        ),
    ] = Path(DEFAULT_CONFIG),
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = None,
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
) -> None:
    state.config_path = config
    state.log_level = log_level


@cache
def get_app() -> typer.Typer:
    """The full command tree."""
    app = typer.Typer(
        name="connector",
        help="Invoice Connector: pull invoices from billing systems into validated MediTrak "
        "records.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_global_options)
    for module in COMMAND_MODULES:
        # A named Typer becomes a group; an unnamed one's commands join the root.
        app.add_typer(module.commands)
    return app


def main(argv: Sequence[str] | None = None) -> Any:
    command = get_app()
    tune_garbage_collector()
    return command(args=list(argv) if argv is not None else None, prog_name="connector")
