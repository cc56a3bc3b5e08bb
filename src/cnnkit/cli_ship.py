"""The `cnnkit` commands that take a trained model elsewhere: export (cli.py wires them in)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnkit.export import CHECKED_BATCHES, FORMATS, PARITY, export_run
from cnnkit.progress import printable
from cnnkit.run import load


def add_shipping_commands(commands) -> None:
    """Add export to the `cnnkit` command's sub-commands."""
    export = commands.add_parser(
        "export",
        help="a run's model as ONNX or a torch.export program, checked against the run",
        description=(
            "Export a run's whole prediction: uint8 images (N, C, H, W) of the run's channels and size in, "
            f"class probabilities out, for any N. Written only if, on the run's own test images at batch sizes "
            f"{', '.join(map(str, CHECKED_BATCHES))}, it gives the run's probabilities within {PARITY:g}."
        ),
    )
    export.add_argument("run", help="run folder written by `cnnkit train`")
    export.add_argument("--format", choices=tuple(FORMATS), default="onnx", help="onnx (default) or pt2")
    export.add_argument("--out", metavar="FILE", help="where to write it (default RUN/model.onnx or RUN/model.pt2)")
    export.set_defaults(command=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    exported = export_run(load(args.run, device="cpu"), args.format, Path(args.out) if args.out else None)
    size = exported.path.stat().st_size / 2**20
    print(
        printable(
            f"exported to {exported.path} ({size:.2f} MiB); on {exported.images} of the run's test images it gives "
            f"the run's probabilities within {exported.largest_difference:.1e}"
        )
    )
    return 0
