"""Files written whole or not at all (temporary file, flush, rename), so a crash or a full disk never
leaves a half-written file in place of a good one; strict JSON; config files read with limits."""

from __future__ import annotations

import errno
import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import yaml
from safetensors import SafetensorError

from cnnkit.core.errors import CnnkitError

MAX_CONFIG_BYTES = 64 * 1024  # a config is a few dozen lines; more is a mistake or an attack


class WriteFailed(CnnkitError):
    """A run's file could not be written (most often, the disk is full); its previous version is whole."""


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Every write of a run's files goes through here: any failure, from the OS or from safetensors, becomes
    one message that says what is kept and what to do."""
    try:
        yield
    except (OSError, SafetensorError) as e:  # safetensors' own words: "No space left on device", say
        todo = WHAT_TO_DO.get(getattr(e, "errno", None) or errno.ENOSPC)  # a safetensors error: most often, a full disk
        raise WriteFailed(
            f"cannot write {path}: {os_reason(e)}; the previous version of the file is intact. {todo}"
        ) from None


WHAT_TO_DO = {  # by errno: what the user can do about an error of the file system
    errno.ENOSPC: "Free some disk space, or write to another place (--out)",
    errno.EDQUOT: "Free some of your disk quota, or write to another place (--out)",
    errno.EROFS: "Copy the run folder to a place you can write, or write to another place (--out)",
    errno.EACCES: "Give yourself permission there, or use another place (--out)",
    errno.EPERM: "Give yourself permission there, or use another place (--out)",
    errno.ENOENT: "Check the path: a folder in it does not exist",
    errno.ENOTDIR: "Check the path: a part of it is a file, not a folder",
    errno.EISDIR: "Give a file, not a folder",
}


def os_reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def os_problem(error: OSError) -> str:
    """An error of the file system in plain words: its cause, and what to do about it when that is known."""
    todo = WHAT_TO_DO.get(error.errno or 0)
    return f"{os_reason(error)}. {todo}" if todo else os_reason(error)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """write(tmp_path), flush it to disk, then rename it over `path` in one step: a crash or a full disk at
    any moment leaves either the old file or the new one, whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with writing(path):
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            tmp.replace(path)
    finally:
        with suppress(OSError):  # gone after the rename; a failed write leaves no half file, and its own error
            tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def write_json(path: Path, value: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(to_json(value) + "\n"))


def to_json(value) -> str:
    """Strict JSON: a NaN or an infinity (a figure that is undefined) is written as null, which JSON has."""
    return json.dumps(_finite(value), indent=2, allow_nan=False)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CnnkitError(f"cannot read {path} ({e}); is this a cnnkit run folder?") from None


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CnnkitError(f"config file {path} does not exist; pass the config.yaml of a run folder")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CnnkitError(f"config file {path} is over {MAX_CONFIG_BYTES // 1024} KiB; a config is a few dozen lines")
    try:
        text = path.read_text()
        if any(isinstance(t, (yaml.AnchorToken, yaml.AliasToken)) for t in yaml.scan(text)):  # no alias bombs
            raise CnnkitError(
                f"config file {path} uses YAML anchors or aliases (& and *), which a config never "
                "needs; write each value out"
            )
        values = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or getattr(e, "reason", None) or type(e).__name__
        raise CnnkitError(f"config file {path} is not valid YAML: {problem}{where}") from None
    if not isinstance(values, dict):
        raise CnnkitError(f"config file {path} must hold a mapping of setting: value")
    return values
