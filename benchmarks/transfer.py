"""Does transfer learning pay? A backbone pretrained by cnnkit on five CIFAR-10 classes, fine-tuned on a
few-shot folder of the other five, against training from scratch on that folder for the same budget.

    python benchmarks/folders.py make /tmp/folders --kinds fewshot   # the few-shot folder (25 a class)
    python benchmarks/transfer.py /tmp/folders/fewshot --budget 30 --pretrain-budget 240 --model resnet9-small

The pretraining folder is made here from ../shared/data/cifar10-jpeg (hard links, so nothing is copied):
bird, cat, deer, dog and truck, none of which the few-shot folder holds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"
PRETRAIN_CLASSES = ("bird", "cat", "deer", "dog", "truck")


def pretraining_folder(root: Path) -> Path:
    for split in ("train", "test"):
        for c in PRETRAIN_CLASSES:
            out = root / split / c
            if out.is_dir():
                continue
            out.mkdir(parents=True)
            for f in (CIFAR / split / c).iterdir():
                os.link(f, out / f.name)
    return root


def train(args: list[str], out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "cnnkit", "train", *args, "--no-report", "--out", str(out)], check=True)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fewshot", type=Path)
    parser.add_argument("--budget", type=float, default=30)
    parser.add_argument("--pretrain-budget", type=float, default=240)
    parser.add_argument("--model", default="resnet9-small", help="the pretrained model, also trained from scratch")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cnnkit-transfer"))
    args = parser.parse_args()
    source = pretraining_folder(args.work / "pretrain-data")
    pre = args.work / "pretrained"
    if not (pre / "summary.json").is_file():
        result = train(["--data", str(source), "--model", args.model, "--budget", str(args.pretrain_budget)], pre)
        print(f"pretrained on {', '.join(PRETRAIN_CLASSES)}: test accuracy {result['test_accuracy']:.4f}")
    rows = []
    starts = (
        ("from scratch, the automatic recipe", []),
        (f"from scratch, {args.model}", ["--model", args.model]),
        (f"fine-tuned from the pretrained {args.model}", ["--init-from", str(pre)]),
    )
    for i, (name, extra) in enumerate(starts):
        out = args.work / f"run{i}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        result = train(["--data", str(args.fewshot), "--budget", str(args.budget), *extra], out)
        rows.append(f"| {name} | {args.budget:g} | {result['seconds_used']:.1f} | {result['test_accuracy']:.4f} |")
    print("| start | budget s | seconds used | test accuracy |\n| --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
