"""`python -m connector` is the `connector` command."""

from connector.cli.app import main

main()
