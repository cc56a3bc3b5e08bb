"""The `cnnkit` commands that help choose settings: lr-find and sweep (cli.py wires them in)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnkit.cli.flags import add_config_flags, given_settings
from cnnkit.core.errors import CnnkitError
from cnnkit.core.progress import printable, printable_lines
from cnnkit.inspect.plots import lr_find_figure, save_figure
from cnnkit.session.train import lr_find
from cnnkit.training.lr_find import RULE, STEPS
from cnnkit.tune.search import METHODS
from cnnkit.tune.sweep import DEFAULT_TRIALS, format_ranking, sweep


def add_tuning_commands(commands) -> None:
    """Add lr-find and sweep to the `cnnkit` command's sub-commands."""
    find = commands.add_parser(
        "lr-find",
        help="the learning-rate range test: the loss against an exponentially growing rate, and a rate to use",
        description=f"Train a few steps at rates from 1e-7 to 10 on the data and model that `cnnkit train` would "
        f"use with the same flags, and suggest a rate: {RULE}. Nothing is kept; `train --lr auto` does the same.",
    )
    find.add_argument("--plot", default="lr-find.png", metavar="FILE", help="the curve (default lr-find.png)")
    add_config_flags(find)
    find.set_defaults(command=cmd_lr_find)

    search = commands.add_parser(
        "sweep",
        help="train one run per point of a search over settings, rank by validation, test the winner alone",
        description="Every trial is a run folder inside --out, trained without its test; the best by validation "
        "accuracy is then tested, once. Give the same command again to go on with a stopped sweep.",
    )
    search.add_argument(
        "--search",
        action="append",
        required=True,
        metavar="KEY=VALUES",
        help="a setting and its values: KEY=V1,V2,... or KEY=LOW..HIGH (a range, searched on a log scale when LOW "
        "> 0); repeat for more settings, e.g. --search lr=0.001..0.03 --search batch-size=32,64",
    )
    search.add_argument("--method", default="grid", choices=METHODS, help="grid, random, or tpe (Optuna, pruning)")
    search.add_argument("--trials", type=int, help=f"trials of random or tpe (default {DEFAULT_TRIALS})")
    add_config_flags(search)
    search.set_defaults(command=cmd_sweep)


def cmd_lr_find(args: argparse.Namespace) -> int:
    test = lr_find(**given_settings(args, ("plot",)))
    if test.suggestion is None:
        raise CnnkitError("the range test saw no finite loss, even at a rate of 1e-7: check the data and model")
    ended = "the loss diverged" if len(test.rates) < STEPS else "the last rate was reached"
    print(f"suggested --lr {test.suggestion:.3g}: {RULE} ({len(test.rates)} steps, until {ended})")
    try:
        figure = lr_find_figure(vars(test))
    except CnnkitError as e:  # no plotting library: the suggestion still stands
        print(printable(f"cnnkit: {e}"), file=sys.stderr)
        return 0
    print(printable(f"curve written to {save_figure(figure, Path(args.plot))}"))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    rows = sweep(args.search, args.method, args.trials, **given_settings(args, ("search", "method", "trials")))
    print(printable_lines(format_ranking(rows)))
    winner = rows[0]
    print(f"winner: {winner['trial']}, test accuracy {winner['test_accuracy']:.4f} (tested once, after the ranking)")
    return 0
