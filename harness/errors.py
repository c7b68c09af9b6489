"""One exception type for mistakes a user can fix: the CLI prints it without a traceback."""


class UserError(Exception):
    """Bad input, settings or files: the message names the thing and what was expected."""
