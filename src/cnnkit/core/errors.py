"""The one exception type for mistakes a user can fix: the CLI prints its message, not a traceback."""

import importlib.util
from collections.abc import Sequence


class CnnkitError(Exception):
    """A user-facing error whose message (one line) says what went wrong and what to do, with an optional
    listing below it (the files to put in place, say), one item a line."""

    def __init__(self, message: str, listing: Sequence[str] = ()):
        super().__init__("\n".join([message, *(f"  {item}" for item in listing)]))
        self.message, self.listing = message, list(listing)


def require_extra(purpose: str, extra: str, *modules: str) -> None:
    """Refuse, with the one-line install, work whose optional extra is missing some of its modules."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise CnnkitError(f"{purpose} needs {' and '.join(missing)}: pip install 'cnnkit[{extra}]'")
