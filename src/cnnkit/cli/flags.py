"""The flags of `cnnkit train`, one per TrainConfig field, shared by the commands that train: train, lr-find
and sweep. A flag not given stays absent, so a --config file's values and the automatic recipe survive."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Iterable

from cnnkit.settings.config import TrainConfig, coerce, field_type
from cnnkit.settings.recipes import CHOSEN_FROM_DATA


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; unset flags stay absent so a --config file's values survive."""
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        text = _help(f).replace("%", "%%")  # argparse reads help as a %-format
        if field_type(f.name) is bool:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=text,
            )
        else:
            parser.add_argument(
                flag,
                type=str,
                default=argparse.SUPPRESS,
                metavar=f.name.upper(),
                help=text,
            )


def _help(f: dataclasses.Field) -> str:
    """The knob's help with its default; where the automatic recipe chooses, it says so, then the named
    models' default (`--batch-size 32` is what `--model simplecnn` trains with, not the default run)."""
    own = re.search(r" \(default: (.*)\)$", f.metadata["help"])
    text = f.metadata["help"][: own.start()] if own else f.metadata["help"]
    default = own.group(1) if own else None if f.default is None else str(f.default)
    if f.name in CHOSEN_FROM_DATA:
        return f"{text} (default: chosen from the data; with a named --model: {default or 'off'})"
    return f"{text} (default: {default})" if default is not None else text


def given_settings(args: argparse.Namespace, other: Iterable[str]) -> dict:
    """The settings given as flags, in their types; `other` names the command's own arguments."""
    return {k: coerce(k, v) for k, v in vars(args).items() if k not in {"command", *other}}
