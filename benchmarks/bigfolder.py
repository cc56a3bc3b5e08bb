"""Folders larger than the memory budget: peak resident memory and training throughput with the decoded
images kept on disk, against kept in memory, as the folder grows.

    python benchmarks/bigfolder.py /tmp/big --images 4000 16000 --size 96 --budget-mb 100

Makes a folder of each size (noisy coloured discs and squares as JPEG files, 4 classes), then trains each
twice in a fresh process (`cnnkit train --model fastcnn-small --steps S --batch-size B`): with the default
budget (in memory) and with `--memory-budget` (on disk, decoded from an empty cache so the first decode
streams too). Peak memory is the child's own ru_maxrss (from wait4), which counts torch itself (a few hundred MB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(root: Path, count: int, size: int) -> Path:
    folder = root / f"images-{count}-{size}"
    if folder.is_dir():
        return folder
    rng = np.random.default_rng(count)
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    for i in range(count):
        label = i % 4
        image = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
        cy, cx, r = rng.uniform(-0.2, 0.2, 2).tolist() + [rng.uniform(0.15, 0.3)]
        shape = np.hypot(y - cy, x - cx) < r if label % 2 == 0 else np.maximum(abs(y - cy), abs(x - cx)) < r
        image[shape, label // 2] = 230  # discs and squares, in red or green
        path = folder / f"c{label}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, quality=90)
    return folder


def train(folder: Path, out: Path, steps: tuple[int, int], extra: list[str]) -> dict:
    """One run in a fresh process with an empty cache: its summary, peak memory and images per second."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "CNNKIT_CACHE": tempfile.mkdtemp(prefix="cnnkit-big-")}
    command = [
        "--data",
        str(folder),
        "--model",
        "fastcnn-small",
        "--steps",
        str(steps[0]),
        "--batch-size",
        str(steps[1]),
    ]
    child = subprocess.Popen(
        [sys.executable, "-m", "cnnkit", "train", *command, *extra, "--no-report", "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest of all children so far
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"cnnkit train failed on {folder}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "peak_mb": usage.ru_maxrss / 1024,  # KiB on Linux
        "images_per_s": steps[0] * steps[1] / summary["train_seconds"],
        "accuracy": summary["test_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--images", type=int, nargs="+", default=[4000, 16000])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--budget-mb", type=float, default=100)
    parser.add_argument("--split", help="passed on as --split, e.g. 98/1/1 to keep evaluation short")
    parser.add_argument("--only-on-disk", action="store_true", help="skip the in-memory runs (too large for RAM)")
    args = parser.parse_args()
    print("| images | decoded MB | kept | peak RSS MB | train images/s | test accuracy |")
    print("| --- | --- | --- | --- | --- | --- |")
    modes = [("on disk", ["--memory-budget", str(args.budget_mb / 1024)]), ("in memory", [])]
    for mode, extra in modes[:1] if args.only_on_disk else modes:
        extra = [*extra, "--split", args.split] if args.split else extra
        for count in args.images:
            folder = make_folder(args.root, count, args.size)
            row = train(folder, args.root / "runs" / f"{mode}-{count}", (args.steps, args.batch_size), extra)
            decoded = count * 3 * args.size**2 / 2**20
            print(
                f"| {count} | {decoded:.0f} | {mode} | {row['peak_mb']:.0f} | {row['images_per_s']:.0f} | "
                f"{row['accuracy']:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
