"""The `uniserve` command line: `main` parses the subcommand and runs its handler; each
subcommand is one module here holding its arguments next to the handler that reads them."""

from service.cli.main import DATA_HELP, EXIT_ERROR, EXIT_REFUSED, main

__all__ = ["DATA_HELP", "EXIT_ERROR", "EXIT_REFUSED", "main"]
