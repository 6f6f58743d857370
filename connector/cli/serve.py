"""`connector serve`: the store as MediTrak's import API; `connector serve hash-key`: the
SHA-256 a consumer's key is configured as (the key itself is never written to the config)."""

from __future__ import annotations

import sys
from typing import Annotated

import structlog
import typer

from connector.cli.common import err, load
from connector.errors import ConnectorError

commands = typer.Typer(
    name="serve",
    help="Serve the store as a MediTrak import-contract API (docs/serving.md).",
    invoke_without_command=True,
)
log = structlog.get_logger("connector.cli.serve")


@commands.callback()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option("--host", help="Overrides serve.host.")] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=0, max=65535, help="Overrides serve.port.")
    ] = None,
) -> None:
    """Serve accepted invoices (list + get-by-id) until SIGINT/SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return
    from connector.serve import create_app  # the web stack loads only for this command
    from connector.serve.host import run_foreground
    from connector.store.serving import ServingReads

    config = load()
    updates = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = config.serve.model_copy(update=updates)
    config = config.model_copy(update={"serve": settings})
    if not settings.consumers:
        log.warning("serve.no_consumers", detail="no serve.consumers: every request gets 401")
    try:
        reads = ServingReads(config.store.sqlalchemy_url())
    except ConnectorError as exc:
        err.print(f"[bold red]Store error[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    try:
        app = create_app(config, reads)
        scheme = "https" if settings.tls_certfile else "http"
        log.info(
            "serve.listening",
            url=f"{scheme}://{settings.host}:{settings.port}/api/v1/",
            consumers=len(settings.consumers),
        )
        run_foreground(app, settings)
    except ConnectorError as exc:
        err.print(f"[bold red]Cannot serve[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    finally:
        reads.close()


@commands.command("hash-key")
def hash_key_command(
    generate: Annotated[
        bool, typer.Option("--generate", help="Make a new random key and print it once.")
    ] = False,
) -> None:
    """Print the key_sha256 of a consumer key read from stdin (or of a new one)."""
    from connector.serve.auth import hash_key, new_key

    if generate:
        key = new_key()
        print(f"key:        {key}")
    else:
        if sys.stdin.isatty():
            key = typer.prompt("API key", hide_input=True)
        else:
            key = sys.stdin.readline().strip()
        if not key:
            err.print("no key given on stdin", highlight=False)
            raise typer.Exit(2)
    print(f"key_sha256: {hash_key(key)}")
