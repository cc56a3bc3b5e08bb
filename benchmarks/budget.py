"""`--budget SECONDS`: is the budget kept (within 10%), and does more budget give a better model?

    python benchmarks/budget.py cifar 30 120 600     # the CIFAR-10 JPEG copy, one run per budget
    python benchmarks/budget.py mnist 8
    python benchmarks/budget.py /tmp/folders/micrographs 40 --load-after 15   # any folder; a machine that slows

Each run is `cnnkit train --budget B` in a fresh process with the folder's decoded cache already made (a
first, untimed run makes it). `seconds_used` is cnnkit's own count, from the start of `train` to the
summary (Python's start-up and imports excluded, as everywhere in BENCHMARKS.md); the process's whole wall
time is printed beside it. `--load-after S` starts a busy loop on every core S seconds into each run, and ends
it with the run: a machine that slows part way, as a shared one does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = {
    "cifar": ["--data", str(SHARED / "cifar10-jpeg")],
    "mnist": ["--data", "mnist", "--data-dir", str(SHARED)],
}


def train(args: list[str], out: Path, load_after: float | None = None) -> tuple[dict, float]:
    started = time.perf_counter()
    run = subprocess.Popen([sys.executable, "-m", "cnnkit", "train", *args, "--no-report", "--out", str(out)])
    hogs = []
    if load_after is not None:
        try:
            run.wait(load_after)
        except subprocess.TimeoutExpired:  # still training: load every core until it ends
            busy = [sys.executable, "-c", "while True: pass"]
            hogs = [subprocess.Popen(busy) for _ in range(os.cpu_count() or 1)]
    try:
        if run.wait() != 0:
            raise SystemExit(f"cnnkit train failed (exit {run.returncode})")
    finally:
        for hog in hogs:
            hog.kill()
    return json.loads((out / "summary.json").read_text()), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="cifar, mnist or an image folder")
    parser.add_argument("budgets", type=float, nargs="+")
    parser.add_argument("--load-after", type=float, help="seconds into each run to load every core")
    args = parser.parse_args()
    data = DATA.get(args.data, ["--data", args.data])
    with tempfile.TemporaryDirectory() as tmp:
        train([*data, "--steps", "1"], Path(tmp) / "warm")  # decodes and caches the data, untimed
        rows = []
        for i, budget in enumerate(args.budgets):  # a budget may repeat: each run has its own folder
            out = Path(tmp) / f"run{i}-b{budget:g}"
            summary, wall = train([*data, "--budget", str(budget)], out, args.load_after)
            used = summary["seconds_used"]
            rows.append(
                f"| {budget:g} | {used:.1f} | {used / budget - 1:+.1%} | {wall:.1f} | {summary['steps']} | "
                f"{summary['model']} | {summary['test_accuracy']:.4f} |"
            )
            print(rows[-1], flush=True)
    print("| budget s | seconds used | off by | process wall s | steps | model | test accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
