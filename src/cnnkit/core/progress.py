"""Progress output: a live bar on a terminal, plain lines in a log file or a pipe, and nothing at all from
any process but the main one."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm

from cnnkit.core.machine import is_main_process


def interactive() -> bool:
    return sys.stderr.isatty()


def bar(total: int, desc: str, unit: str = "it") -> tqdm:
    """A bar that draws only on a terminal (and vanishes when done), so logs get no bar noise."""
    shown = interactive() and is_main_process()
    return tqdm(total=total, desc=desc, unit=unit, disable=not shown, leave=False, dynamic_ncols=True)


def say(line: str) -> None:
    """Print a line above any live bar (on the main process only), made safe to print."""
    if is_main_process():
        tqdm.write(printable(line))


def printable(text: str) -> str:
    """One line safe for a terminal: control characters (a class folder named with a newline or an escape
    code, say) and bytes that are not UTF-8 shown escaped, never sent raw, so no name can forge a line."""
    return utf8("".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text))


def utf8(text: str) -> str:
    """`text` as UTF-8 can carry it: a folder name's bytes that are not UTF-8 (which Python holds as lone
    surrogates, and no encoder takes) shown escaped, caf\\udce9."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def printable_lines(lines: Iterable[str]) -> str:
    """Lines cnnkit composed (a table, a listing), each made safe to print on its own."""
    return "\n".join(printable(line) for line in lines)


def columns(rows: list[tuple[str, ...]], left: int = 1) -> list[str]:
    """Rows of cells as aligned lines: the first `left` columns (names) to the left, the rest (figures) right;
    each cell made printable first, so that escaped names keep the columns straight."""
    rows = [tuple(printable(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
