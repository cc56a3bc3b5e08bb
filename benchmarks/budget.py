"""`--budget SECONDS`: is the budget kept (within 10%), and does more budget give a better model?

    python benchmarks/budget.py cifar 30 120 600     # the CIFAR-10 JPEG copy, one run per budget
    python benchmarks/budget.py mnist 8

Each run is `cnnkit train --budget B` in a fresh process with the folder's decoded cache already made (a
first, untimed run makes it). `seconds_used` is cnnkit's own count, from the start of `train` to the
summary (Python's start-up and imports excluded, as everywhere in BENCHMARKS.md); the process's whole wall
time is printed beside it.
"""

from __future__ import annotations

import json
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


def train(args: list[str], out: Path) -> tuple[dict, float]:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnnkit", "train", *args, "--no-report", "--out", str(out)], check=True)
    return json.loads((out / "summary.json").read_text()), time.perf_counter() - started


def main() -> None:
    data, budgets = sys.argv[1], [float(b) for b in sys.argv[2:]]
    with tempfile.TemporaryDirectory() as tmp:
        train([*DATA[data], "--steps", "1"], Path(tmp) / "warm")  # decodes and caches the data, untimed
        rows = []
        for i, budget in enumerate(budgets):  # a budget may repeat: each run has its own folder
            summary, wall = train([*DATA[data], "--budget", str(budget)], Path(tmp) / f"run{i}-b{budget:g}")
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
