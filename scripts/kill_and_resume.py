"""Fault check: SIGKILL a real training run at random moments, resume it each time, and compare the
final weights bit for bit with a run that was never stopped.

    python scripts/kill_and_resume.py [--data ../shared/data] [--runs 2] [--kills 10] [--epochs 2]

It trains `simplecnn` on MNIST on the CPU, checkpointing every 50 steps, and prints one line per kill.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cnnkit.training.checkpoint import CHECKPOINT, load_checkpoint


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnkit", "train", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / CHECKPOINT)["model"]


def killed_and_resumed(
    settings: list[str], run: Path, kills: int, startup: float, span: float, rng: random.Random
) -> int:
    """Train, killing the process `kills` times at random moments and resuming each time; returns the
    number of kills that landed before the run finished."""
    process, landed = start([*settings, "--out", str(run)], run.parent), 0
    for _ in range(kills):
        delay = startup + rng.uniform(0, 2 * span / (kills + 2))  # on average a (kills+2)-th of the training
        time.sleep(delay)
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        landed += 1
        if (run / CHECKPOINT).exists():
            where = load_checkpoint(run / CHECKPOINT)["position"]
            print(
                f"  kill {landed} after {delay:.1f}s: resuming at epoch {where['epoch']}, step {where['step']}",
                flush=True,
            )
            process = start(["--resume", str(run)], run.parent)
        else:  # killed before the first checkpoint: nothing to resume, start again
            print(f"  kill {landed} after {delay:.1f}s: before the first checkpoint, starting again", flush=True)
            shutil.rmtree(run)
            process = start([*settings, "--out", str(run)], run.parent)
    assert process.wait() == 0, process.stderr.read()
    return landed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    settings = [
        "--data",
        "mnist",
        "--data-dir",
        args.data,
        "--model",
        "simplecnn",
        "--epochs",
        str(args.epochs),
        "--checkpoint-every",
        "50",
        "--device",
        "cpu",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "reference"
        started = time.monotonic()
        process = start([*settings, "--out", str(reference)], Path(tmp))
        while not (reference / "metrics.csv").exists():  # written once data and model are ready
            time.sleep(0.05)
        startup = time.monotonic() - started
        assert process.wait() == 0
        span = time.monotonic() - started - startup
        expected = final_weights(reference)
        total = 0
        for run_index in range(args.runs):
            run = Path(tmp) / f"run{run_index}"
            print(f"run {run_index + 1}:", flush=True)
            total += killed_and_resumed(settings, run, args.kills, startup, span, random.Random(run_index))
            got = final_weights(run)
            same = all(torch.equal(expected[k], got[k]) for k in expected)
            print(f"  final weights bit-identical to the uninterrupted run: {same}", flush=True)
            assert same
    print(f"{total} kills across {args.runs} runs, every resumed run bit-identical")


if __name__ == "__main__":
    main()
