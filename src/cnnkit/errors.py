"""The one exception type for mistakes a user can fix: the CLI prints its message, not a traceback."""


class CnnkitError(Exception):
    """A user-facing error whose message says what went wrong and what to do."""
