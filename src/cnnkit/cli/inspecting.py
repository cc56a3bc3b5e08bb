"""The `cnnkit` commands that look at models and runs: summary, report and compare (cli.py wires them in)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnkit.core.files import to_json
from cnnkit.core.progress import printable, printable_lines
from cnnkit.inspect.compare import compare_runs, comparison_table, write_curves
from cnnkit.inspect.report import write_report
from cnnkit.inspect.summary import format_summary, model_summary


def add_inspection_commands(commands) -> None:
    """Add summary, report and compare to the `cnnkit` command's sub-commands."""
    summary = commands.add_parser("summary", help="a model's layers, parameters, multiply-accumulates and memory")
    summary.add_argument("target", metavar="MODEL_OR_RUN", help="a model name (`cnnkit models`) or a run folder")
    summary.add_argument(
        "--input",
        metavar="CxHxW",
        help="one image's shape, for a model name (default 3x32x32, or the model's own size)",
    )
    summary.add_argument("--classes", type=int, help="the number of classes, for a model name (default 10)")
    summary.add_argument("--batch-size", type=int, help="batch of the memory figures (default: the run's, else 32)")
    summary.add_argument("--optimizer", help="optimiser whose state is counted (default: the run's, else adamw)")
    summary.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        help="of the memory figures (default: the run's; auto: bf16 where native)",
    )
    summary.add_argument("--json", action="store_true", help="print the summary as JSON")
    summary.set_defaults(command=cmd_summary)

    report = commands.add_parser("report", help="draw a run's plots and write its report.html")
    report.add_argument("run", help="run folder written by `cnnkit train`")
    report.set_defaults(command=cmd_report)

    compare = commands.add_parser("compare", help="runs side by side: settings that differ, results, curves")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="two or more run folders")
    compare.add_argument("--plot", default="compare.png", metavar="FILE", help="overlaid curves (default compare.png)")
    compare.set_defaults(command=cmd_compare)


def cmd_summary(args: argparse.Namespace) -> int:
    settings = (args.input, args.classes, args.batch_size, args.optimizer, args.precision)
    title, summary = model_summary(args.target, *settings)
    print(to_json(summary.as_dict()) if args.json else printable_lines(format_summary(title, summary)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    path, missing = write_report(Path(args.run))
    if missing:
        print(f"cnnkit: {printable(missing)}", file=sys.stderr)
    print(printable(f"report written to {path}"))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    runs = compare_runs([Path(r) for r in args.runs])
    print(printable_lines(comparison_table(runs)))
    print(printable(f"curves written to {write_curves(runs, Path(args.plot))}"))
    return 0
