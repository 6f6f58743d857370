"""`connector config check`: validate a config file without the network or the store.

It loads the file exactly as every command does (`connector.config.load_config`), so what it
accepts is what `sync` accepts; it only reports instead of running. Every problem is listed in
one go, with the advice a valid config still earns (secrets written in plain text). Secrets are
never printed: source secrets are not echoed by the loader, and the store URL's password is
masked here.
"""

from __future__ import annotations

from typing import Annotated

import typer

from connector.cli.common import err, out, print_json, state
from connector.config import load_config
from connector.errors import ConfigError
from connector.masking import masked_store_url
from connector.settings import AppConfig

EXIT_VALID = 0
EXIT_WARNINGS_STRICT = 1
EXIT_INVALID = 2

commands = typer.Typer(
    name="config", help="Check the configuration file (no network, no store).", no_args_is_help=True
)


def _summary(config: AppConfig) -> str:
    names = ", ".join(s.name for s in config.sources)
    return (
        f"config OK: {len(config.sources)} sources ({names}), "
        f"store {masked_store_url(config.store.url)}"
    )


@commands.command("check")
def check(
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when the config is valid but has warnings.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Validate the config file (-c or CONNECTOR_CONFIG): every problem at once, no network.

    Exit codes: 0 valid (warnings are printed but do not fail it); 1 valid with warnings and
    --strict; 2 invalid or unreadable.

    --json prints {"ok": bool, "problems": [...], "warnings": [...], "sources": [...]}.
    """
    warnings: list[str] = []
    config: AppConfig | None = None
    problems: list[str] = []
    origin = str(state.config_path)
    try:
        config = load_config(state.config_path, warnings=warnings)
    except ConfigError as exc:
        problems, origin = exc.problems, exc.origin
    code = EXIT_INVALID if problems else EXIT_WARNINGS_STRICT if strict and warnings else EXIT_VALID
    if as_json:
        sources = (
            [{"name": s.name, "type": s.type, "enabled": s.enabled} for s in config.sources]
            if config is not None
            else []
        )
        print_json(
            {
                "ok": code == EXIT_VALID,
                "config": origin,
                "store": masked_store_url(config.store.url) if config is not None else None,
                "problems": problems,
                "warnings": warnings,
                "sources": sources,
            }
        )
        raise typer.Exit(code)
    for warning in warnings:
        err.print(f"warning: {warning}", highlight=False, markup=False)
    if config is None:
        err.print(f"{origin}: {len(problems)} problem(s)", highlight=False, markup=False)
        for problem in problems:
            err.print(f"  - {problem}", highlight=False, markup=False)
    else:
        out.print(_summary(config), highlight=False, markup=False)
    raise typer.Exit(code)
