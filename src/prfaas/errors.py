"""Errors a user can cause (bad flags, files, presets). The CLI prints them as one line, exit 2."""


class UserError(Exception):
    """Bad input from a user: a file, flag, preset or request that cannot be served as given."""
