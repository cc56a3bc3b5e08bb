"""Behaviour check for a change meant to change no behaviour: train five fixed-seed runs on the CPU and print
each one's summary.json accuracies and a hash of its weights, to compare before and after the change.

    python scripts/same_behaviour.py [--data ../shared/data] [--out results.json]

The runs: `cnnkit train` (digits), `--preset mnist-fast` (real MNIST), the automatic recipe on a generated
folder, a run killed (SIGKILL) after its first checkpoint and resumed, and an `--lr auto` run. Each goes
through the `cnnkit` command in its own process, so the check holds whatever the code inside looks like.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from safetensors import safe_open

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
COMMON = ["--device", "cpu", "--no-report"]


def cnnkit_train(args: list[str], cwd: Path) -> subprocess.Popen:
    common = [] if "--resume" in args else COMMON  # a resume takes the run's own settings
    return subprocess.Popen([sys.executable, "-m", "cnnkit", "train", *args, *common], cwd=cwd, text=True)


def weights_hash(path: Path) -> str:
    """sha256 over every tensor's name and bytes, in name order (the file's metadata left out)."""
    digest = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        for name in sorted(f.keys()):
            digest.update(name.encode())
            digest.update(f.get_tensor(name).contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def result(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    return {
        "test_accuracy": summary["test_accuracy"],
        "per_class_accuracy": summary.get("per_class_accuracy"),
        "weights": weights_hash(run / "weights.safetensors"),
    }


def make_shapes_folder(root: Path) -> Path:
    """Three classes of 60 seeded 40x30 colour drawings: a small folder of the user's own kind."""
    rng = random.Random(0)
    for kind in ("circle", "square", "triangle"):
        (root / kind).mkdir(parents=True)
        for i in range(60):
            img = Image.new("RGB", (40, 30), tuple(rng.randrange(256) for _ in range(3)))
            r, cx, cy = rng.uniform(6, 12), rng.uniform(12, 28), rng.uniform(12, 18)
            fill = tuple(rng.randrange(256) for _ in range(3))
            box = (cx - r, cy - r, cx + r, cy + r)
            draw = ImageDraw.Draw(img)
            if kind == "circle":
                draw.ellipse(box, fill=fill)
            elif kind == "square":
                draw.rectangle(box, fill=fill)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
            img.save(root / kind / f"{i}.png")
    return root


def killed_and_resumed(run: Path, settings: list[str]) -> None:
    """Train, SIGKILL the process once its first checkpoint is written, then resume it to the end."""
    process = cnnkit_train([*settings, "--out", str(run)], run.parent)
    while not (run / "checkpoint.safetensors").exists() and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before the kill: nothing was resumed"
    assert cnnkit_train(["--resume", str(run)], run.parent).wait() == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--out", help="also write the results to this JSON file")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = make_shapes_folder(root / "shapes")
        runs = {
            "digits default": [],
            "preset mnist-fast": ["--preset", "mnist-fast", "--data-dir", args.data],
            "automatic recipe, folder": ["--data", str(folder)],
            "lr auto": ["--model", "simplecnn", "--lr", "auto", "--epochs", "3"],
        }
        for name, settings in runs.items():
            assert cnnkit_train([*settings, "--out", str(root / name)], root).wait() == 0, name
            results[name] = result(root / name)
        resumed = ["--model", "simplecnn", "--epochs", "12", "--checkpoint-every", "10"]
        killed_and_resumed(root / "resume", resumed)
        results["resume after a kill"] = result(root / "resume")
        assert cnnkit_train([*resumed, "--out", str(root / "unstopped")], root).wait() == 0
        results["resume after a kill"]["same as unstopped"] = (
            result(root / "unstopped") == results["resume after a kill"]
        )
    for name, figures in results.items():
        print(f"{name:28} test {figures['test_accuracy']:.4f}  weights {figures['weights']}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
