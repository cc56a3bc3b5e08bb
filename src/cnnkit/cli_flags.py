"""The flags of `cnnkit train`, one per TrainConfig field, shared by the commands that train: train, lr-find
and sweep. A flag not given stays absent, so a --config file's values and the automatic recipe survive."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable

from cnnkit.config import TrainConfig, coerce, field_type


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; unset flags stay absent so a --config file's values survive."""
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        shown = "default" in f.metadata["help"] or f.default is None  # None: "not set" needs no mention
        default = "" if shown else f"(default: {f.default})"
        text = f"{f.metadata['help']} {default}".replace("%", "%%")  # argparse reads help as a %-format
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


def given_settings(args: argparse.Namespace, other: Iterable[str]) -> dict:
    """The settings given as flags, in their types; `other` names the command's own arguments."""
    return {k: coerce(k, v) for k, v in vars(args).items() if k not in {"command", *other}}
