"""The one exception type for mistakes a user can fix: the CLI prints its message, not a traceback."""

import importlib.util


class CnnkitError(Exception):
    """A user-facing error whose message says what went wrong and what to do."""


def require_extra(purpose: str, extra: str, *modules: str) -> None:
    """Refuse, with the one-line install, work whose optional extra is missing some of its modules."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise CnnkitError(f"{purpose} needs {' and '.join(missing)}: pip install 'cnnkit[{extra}]'")
