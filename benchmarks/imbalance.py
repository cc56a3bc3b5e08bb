"""Imbalanced classes on a folder like a factory's inspection images: does --class-weights or --sampler help?

Generates (seeded) a folder of large grey images of a textured surface in four classes that differ in fine
detail: `good` (nothing), `scratch` (a hairline), `spot` (a small dark spot) and `crack` (a thin jagged line),
imbalanced 14:3:1:7 as the real inspection folder that issue 28 measured. Then trains the default (the automatic
recipe) as it is, with `--class-weights balanced` and with `--sampler balanced`, over several seeds (each seed its
own split), and prints test accuracy, balanced accuracy, macro-F1 and seconds as a Markdown table.

    python benchmarks/imbalance.py make /tmp/inspection
    python benchmarks/imbalance.py run /tmp/inspection --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

CLASSES = {"good": 560, "scratch": 120, "spot": 40, "crack": 280}  # 14:3:1:7
SIZE = 192  # large for a CPU recipe: the detail is a pixel or two wide at this size
CONFIGS = {
    "default": {},
    "no race": {"race": False},  # the automatic recipe's rules of thumb alone
    "no turns": {"turns": False},  # the race without its right-angle turns for grey images
    "turns": {"turns": True},  # right-angle turns always: what the race could win with them
    "class-weights balanced": {"class_weights": "balanced"},
    "sampler balanced": {"sampler": "balanced"},
}


def surface(rng: random.Random) -> Image.Image:
    """Brushed metal: a grey level, soft blotches and fine streaks, different for every image."""
    small = Image.new("L", (SIZE // 16, SIZE // 16))
    base = rng.randrange(90, 170)
    small.putdata([base + rng.randrange(-25, 26) for _ in range(small.width * small.height)])
    img = small.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    d = ImageDraw.Draw(img)
    for _ in range(40):  # streaks along the brushing, too faint and long to be a scratch
        y = rng.uniform(0, SIZE)
        d.line((0, y, SIZE, y + rng.uniform(-3, 3)), fill=base + rng.randrange(-8, 9), width=1)
    return img.filter(ImageFilter.GaussianBlur(0.6))


def add_defect(img: Image.Image, kind: str, rng: random.Random) -> None:
    """Faint, as real defects are: a few tens of grey levels off the surface around them."""
    d = ImageDraw.Draw(img)
    x, y = rng.uniform(0.2, 0.8) * SIZE, rng.uniform(0.2, 0.8) * SIZE
    around = img.getpixel((int(x), int(y)))
    shade = around + rng.choice((-1, 1)) * rng.randrange(20, 40)
    if kind == "scratch":  # straight, across the brushing
        length, angle = rng.uniform(0.2, 0.4) * SIZE, rng.uniform(0.6, 2.5)
        dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
        d.line((x - dx, y - dy, x + dx, y + dy), fill=shade, width=1)
    elif kind == "spot":
        r = rng.uniform(1.5, 3.5)
        d.ellipse((x - r, y - r, x + r, y + r), fill=around - rng.randrange(20, 40))
    elif kind == "crack":  # jagged: short segments that turn at random
        points = [(x, y)]
        for _ in range(rng.randrange(6, 12)):
            px, py = points[-1]
            points.append((px + rng.uniform(-8, 8), py + rng.uniform(-8, 8)))
        d.line(points, fill=shade, width=1)


def make(root: Path) -> None:
    rng = random.Random(0)
    for kind, count in CLASSES.items():
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img = surface(rng)
            add_defect(img, kind, rng)
            img.save(folder / f"{kind}_{i:04d}.png")
    print(f"wrote {sum(CLASSES.values())} images of {SIZE}x{SIZE} in {len(CLASSES)} classes under {root}")


def run(root: Path, seeds: list[int], configs: list[str], out: Path) -> None:
    import cnnkit

    rows = []
    for name in configs:
        results = []
        for seed in seeds:
            started = time.perf_counter()
            folder = str(out / f"{name}-{seed}".replace(" ", "-"))
            shutil.rmtree(folder, ignore_errors=True)  # a run folder is never overwritten: each run starts anew
            trained = cnnkit.train(data=str(root), seed=seed, report=False, out=folder, **CONFIGS[name])
            seconds = time.perf_counter() - started
            summary = json.loads((trained.dir / "summary.json").read_text())
            results.append(
                (summary["test_accuracy"], summary["test_balanced_accuracy"], summary["test_macro_f1"], seconds)
            )
        rows.append((name, results))
    print("| settings | seeds | test accuracy | balanced accuracy | macro-F1 | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, results in rows:
        cells = [_spread([r[i] for r in results]) for i in range(3)]
        print(f"| {name} | {len(results)} | {' | '.join(cells)} | {statistics.mean(r[3] for r in results):.0f} |")


def _spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("make", "run"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/imbalance-runs"))
    args = parser.parse_args()
    make(args.folder) if args.action == "make" else run(args.folder, args.seeds, args.configs, args.out)


if __name__ == "__main__":
    main()
