"""One process against two on this machine's CPU cores: the same run, the same global batch.

    python benchmarks/processes.py [--repeats 3] [-- extra train flags]

Each repeat runs `cnnkit train` once as one process and once under `torchrun --standalone --nproc-per-node 2`
(gloo; torchrun gives each process one thread), interleaved, each a fresh launch with the data's cache
already made. Printed per run: training seconds (cnnkit's own count), the whole launch's wall time, and
the test accuracy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = ["--data", "mnist", "--data-dir", str(SHARED), "--model", "simplecnn", "--no-report"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
LAUNCHERS = {"1 process": [sys.executable, "-m", "cnnkit"], "2 processes": [*TORCHRUN, "-m", "cnnkit"]}


def train(launcher: list[str], flags: list[str], out: Path) -> tuple[dict, float]:
    started = time.perf_counter()
    subprocess.run([*launcher, "train", *flags, "--out", str(out)], check=True, capture_output=True)
    return json.loads((out / "summary.json").read_text()), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("extra", nargs="*", help="more train flags, after --")
    args = parser.parse_args()
    flags = [*DATA, "--epochs", "1", *args.extra]
    with tempfile.TemporaryDirectory() as tmp:
        train(LAUNCHERS["1 process"], [*DATA, "--steps", "1"], Path(tmp) / "warm")  # makes the cache, untimed
        for repeat in range(args.repeats):
            for name, launcher in LAUNCHERS.items():
                summary, wall = train(launcher, flags, Path(tmp) / f"{repeat}-{name}")
                print(
                    f"{name}: train {summary['train_seconds']:.1f}s, launch wall {wall:.1f}s, "
                    f"test accuracy {summary['test_accuracy']:.4f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
