"""The project's user-facing error: the CLI prints its message on one line, no traceback."""


class UserError(Exception):
    """Bad input from a user (a wrong name, a malformed config, a missing file)."""
