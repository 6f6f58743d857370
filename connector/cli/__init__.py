"""The `connector` command: every subcommand, thin over the layers below."""
