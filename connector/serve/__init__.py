"""HTTP serving layer (reserved): the import-contract API, webhooks, health and metrics will
live here, above the pipeline and the store and below the CLI."""
