"""Exit codes and the user-mistake exception shared by every subcommand."""

from __future__ import annotations

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2."""
