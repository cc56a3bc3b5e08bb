"""CPU benchmark: the tutorial program against cnnkit's presets, in one process on one machine.

    python benchmarks/cpu.py mnist [--data ../shared/data]
    python benchmarks/cpu.py cifar [--data ../shared/data]

Prints each system's test accuracy and wall time (data loading, training and testing; the Python start
and imports excluded for both) and cnnkit's time as a fraction of the tutorial's.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from tutorial_baselines import tutorial_cifar, tutorial_mnist

import cnnkit


def timed_cnnkit(**settings) -> tuple[float, float]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        run = cnnkit.train(out=f"{out}/run", report=False, **settings)
        return run.summary.test_accuracy, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", choices=["mnist", "cifar"])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {time.strftime('%Y-%m-%d')}"
    )
    rows = []
    if args.job == "mnist":
        rows.append(("tutorial: PyTorch MNIST example net, 5 epochs", *tutorial_mnist(args.data)))
        rows.append(("cnnkit --preset mnist-fast", *timed_cnnkit(preset="mnist-fast", data_dir=str(args.data))))
    else:
        folder = args.data / "cifar10-jpeg"
        rows.append(("tutorial: lenet, 2 epochs, batch 4", *tutorial_cifar(folder)))
        os.environ["CNNKIT_CACHE"] = tempfile.mkdtemp()  # first run decodes the JPEGs, the next reads the cache
        for label in ("cold: JPEG decode", "cached"):
            result = timed_cnnkit(preset="cifar10-cpu", data=str(folder))
            rows.append((f"cnnkit --preset cifar10-cpu ({label})", *result))
        rows.append(
            ("cnnkit --preset cifar10-cpu-best (cached)", *timed_cnnkit(preset="cifar10-cpu-best", data=str(folder)))
        )
    base = rows[0][2]
    print("\n| system | test accuracy | wall seconds | time / tutorial's |\n| --- | --- | --- | --- |")
    for name, acc, seconds in rows:
        print(f"| {name} | {acc:.4f} | {seconds:.1f} | {seconds / base:.3f} |")


if __name__ == "__main__":
    main()
