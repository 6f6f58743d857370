"""The `connector` command: every subcommand, thin over the layers below.

`connector.cli.app` builds the command tree (`get_app()`) and is the console script
(`main()`); each other module holds the commands it is named after, on its own `typer.Typer`.
"""
