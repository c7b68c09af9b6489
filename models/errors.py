"""One exception type for mistakes a user can fix: the CLI prints it without a traceback.

It lives in the lowest layer (models/) so that models/ and exports/ raise it without importing
harness/; harness.errors re-exports it.
"""


class UserError(Exception):
    """Bad input, settings or files: the message names the thing and what was expected."""
