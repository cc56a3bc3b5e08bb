"""Progress output: a live bar on a terminal, and only plain lines in a log file or a pipe."""

from __future__ import annotations

import sys

from tqdm import tqdm


def interactive() -> bool:
    return sys.stderr.isatty()


def bar(total: int, desc: str, unit: str = "it") -> tqdm:
    """A bar that draws only on a terminal (and vanishes when done), so logs get no bar noise."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not interactive(), leave=False, dynamic_ncols=True)


def say(line: str) -> None:
    """Print a line above any live bar."""
    tqdm.write(line)
