"""The project's user-facing error: the CLI prints its message on one line, no traceback."""


class UserError(Exception):
    """Bad input from a user (a wrong name, a malformed config, a missing file)."""


class DivergedError(UserError):
    """A run produced a non-finite loss, gradient norm, metric or parameter: it stops there, with
    its rows and last finite checkpoint kept and no ``done`` marker."""
