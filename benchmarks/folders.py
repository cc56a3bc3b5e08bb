"""Folders unlike the benchmarks: is cnnkit's default as good as its best model on a user's own images?

Generates folders of several kinds (seeded, so every run of this script sees the same files), then trains
on each the default (the automatic recipe) and `simplecnn`, `fastcnn-small` and `resnet9-small` at their
defaults, and prints test accuracy and wall seconds as a Markdown table. Each is trained with several seeds
(each seed draws its own validation/test split where the folder has no test/): on a few hundred test
images one run's accuracy moves by a few points from seed to seed, so the table gives the mean and range.

    python benchmarks/folders.py make /tmp/folders             # write the folders
    python benchmarks/folders.py run /tmp/folders              # train and print the table
    python benchmarks/folders.py run /tmp/folders --kinds shapes fewshot --configs default fastcnn-small --seeds 1

CIFAR-10 crops come from ../shared/data/cifar10-jpeg (see its README); wall seconds are those of
`cnnkit.train` in this process (imports excluded), with each folder's decoded cache made beforehand.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"
SHAPES = ("circle", "square", "triangle", "cross")
CELLS = ("rod", "bean", "pair", "budding")  # micrographs' classes: shapes with no up and no handedness
CONFIGS = {
    "default": {},
    "no-race": {"race": False},  # the automatic recipe's rules of thumb alone, unraced
    "no-turns": {"turns": False},  # the race without its right-angle turns for grey images
    "turns": {"turns": True},  # right-angle turns always
    "simplecnn": {"model": "simplecnn"},
    "fastcnn-small": {"model": "fastcnn-small"},
    "resnet9-small": {"model": "resnet9-small"},
}


def noise_background(rng: random.Random, w: int, h: int) -> Image.Image:
    """A blurred random texture in random colours: the shape must be found, not just seen."""
    small = Image.new("RGB", (max(2, w // 8), max(2, h // 8)))
    small.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(small.width * small.height)])
    return small.resize((w, h), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(1))


def draw_shape(img: Image.Image, kind: str, rng: random.Random) -> None:
    w, h = img.size
    r = rng.uniform(0.2, 0.4) * min(w, h)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    colour = tuple(rng.randrange(256) for _ in range(3))
    d = ImageDraw.Draw(img)
    if kind == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif kind == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif kind == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        t = r / 3
        d.rectangle((cx - r, cy - t, cx + r, cy + t), fill=colour)
        d.rectangle((cx - t, cy - r, cx + t, cy + r), fill=colour)


def save_mixed(img: Image.Image, path: Path, rng: random.Random) -> None:
    """Mixed formats and colour modes, as a real folder has: JPEG, grey PNG, RGBA PNG, palette GIF."""
    kind = rng.random()
    if kind < 0.55:
        img.convert("RGB").save(path.with_suffix(".jpg"), quality=rng.randrange(70, 95))
    elif kind < 0.7:
        img.convert("L").save(path.with_suffix(".png"))
    elif kind < 0.85:
        rgba = img.convert("RGBA")
        rgba.putalpha(rng.randrange(200, 256))
        rgba.save(path.with_suffix(".png"))
    else:
        img.convert("P", palette=Image.Palette.ADAPTIVE).save(path.with_suffix(".gif"))


def make_shapes(root: Path, per_class: int, seed: int = 0, split: str | None = None) -> None:
    """4 shapes on coloured noise, 40 to 128 px, some not square, mixed formats; two broken files (not in a
    split's folder)."""
    rng = random.Random(seed)
    out = root / split if split else root
    for kind in SHAPES:
        (out / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w = rng.randrange(40, 129)
            h = w if rng.random() < 0.7 else rng.randrange(40, 129)
            img = noise_background(rng, w, h)
            draw_shape(img, kind, rng)
            save_mixed(img, out / kind / f"{i:04d}", rng)
    if split is None:
        (root / SHAPES[0] / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        (root / SHAPES[1] / "empty.png").write_bytes(b"")


def make_glyphs(root: Path, chars: str, per_class: int, colour: bool, seed: int = 0) -> None:
    """One class per character, drawn at random sizes, places and angles: digit-like when grey."""
    rng = random.Random(seed)
    for c in chars:
        name = f"{c}_upper" if c.isupper() else c  # 'A' and 'a' would share a folder on a case-blind disk
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = rng.randrange(28, 49)
            img = noise_background(rng, size, size) if colour else Image.new("L", (size, size), rng.randrange(60))
            font = ImageFont.load_default(size=rng.uniform(0.55, 0.8) * size)
            layer = Image.new("L", (size, size), 0)
            ImageDraw.Draw(layer).text((size / 2, size / 2), c, fill=255, font=font, anchor="mm")
            layer = layer.rotate(rng.uniform(-15, 15), translate=(rng.uniform(-3, 3), rng.uniform(-3, 3)))
            ink = tuple(rng.randrange(256) for _ in range(3)) if colour else rng.randrange(180, 256)
            img.paste(Image.new(img.mode, img.size, ink), mask=layer)  # type: ignore[arg-type]
            img.save(root / name / f"{i:04d}.png")


def make_photos(
    root: Path, per_class: int, classes: list[str], split: str | None, seed: int = 0, mode: str = "RGB"
) -> None:
    """CIFAR-10 images enlarged to 48-96 px and cropped to other shapes, as photos of mixed sizes (in `mode`: "L"
    for grey photographs)."""
    rng = random.Random(seed)
    for c in classes:
        files = sorted((CIFAR / "train" / c).iterdir())
        rng.shuffle(files)
        out = root / split / c if split else root / c
        out.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(files[:per_class]):
            side = rng.randrange(48, 97)
            img = Image.open(f).convert(mode).resize((side, side), Image.Resampling.BICUBIC)
            w, h = side, int(side * rng.uniform(0.75, 1.0))
            if rng.random() < 0.5:
                w, h = h, w
            x, y = rng.randrange(side - w + 1), rng.randrange(side - h + 1)
            img.crop((x, y, x + w, y + h)).save(out / f"{i:04d}.jpg", quality=90)


def draw_cell(layer: Image.Image, kind: str, rng: random.Random) -> None:
    """One cell, drawn upright in white on black at the layer's centre (the caller turns it)."""
    w, h = layer.size
    cx, cy, r = w / 2, h / 2, rng.uniform(0.12, 0.16) * w
    d = ImageDraw.Draw(layer)
    if kind == "rod":  # a capsule
        d.rounded_rectangle((cx - 2.2 * r, cy - 0.8 * r, cx + 2.2 * r, cy + 0.8 * r), radius=0.8 * r, fill=255)
    elif kind == "bean":  # a capsule with a bite out of one long side
        d.rounded_rectangle((cx - 2 * r, cy - r, cx + 2 * r, cy + r), radius=r, fill=255)
        d.ellipse((cx - 1.1 * r, cy + 0.3 * r, cx + 1.1 * r, cy + 2.3 * r), fill=0)
    elif kind == "pair":  # two equal round cells touching
        for dx in (-0.95 * r, 0.95 * r):
            d.ellipse((cx + dx - r, cy - r, cx + dx + r, cy + r), fill=255)
    else:  # a round cell with a small bud
        d.ellipse((cx - 1.3 * r, cy - 1.3 * r, cx + 1.3 * r, cy + 1.3 * r), fill=255)
        d.ellipse((cx + 1.1 * r, cy - 0.55 * r, cx + 2.2 * r, cy + 0.55 * r), fill=255)


def make_micrographs(root: Path, per_class: int, seed: int = 0, size: int = 64) -> None:
    """Grey cells of four kinds at any angle, faint on a mottled background with noise and stray debris: a
    class is the same at any turn or mirror image, as in a microscope."""
    rng = random.Random(seed)
    for kind in CELLS:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            layer = Image.new("L", (size, size), 0)
            draw_cell(layer, kind, rng)
            offset = (rng.uniform(-6, 6), rng.uniform(-6, 6))
            layer = layer.rotate(rng.uniform(0, 360), Image.Resampling.BILINEAR, translate=offset)
            layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else layer
            base = rng.randrange(90, 140)
            img = Image.new("L", (size, size), base)
            cell = Image.new("L", (size, size), base + rng.choice((-1, 1)) * rng.randrange(16, 32))
            img.paste(cell, mask=layer.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 1.6))))
            d = ImageDraw.Draw(img)
            for _ in range(rng.randrange(4)):  # debris: small specks that belong to no class
                x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1, 3)
                d.ellipse((x - r, y - r, x + r, y + r), fill=base + rng.randrange(-40, 40))
            noise = Image.effect_noise((size, size), rng.uniform(10, 14))  # around 128, over cell and ground alike
            ImageChops.add(img, noise, offset=-128).save(root / kind / f"{i:04d}.png")


FOLDERS = {
    "shapes": lambda root: make_shapes(root, 300),
    "glyphs": lambda root: make_glyphs(root, "0123456789", 150, colour=False),
    "photos": lambda root: make_photos(root, 150, sorted(p.name for p in (CIFAR / "train").iterdir()), None),
    "fewshot": lambda root: (
        make_photos(root, 25, ["airplane", "automobile", "frog", "horse", "ship"], "train", seed=1),
        make_photos(root, 100, ["airplane", "automobile", "frog", "horse", "ship"], "test", seed=2),
    ),
    "greyphotos": lambda root: make_photos(
        root, 150, sorted(p.name for p in (CIFAR / "train").iterdir()), None, 5, "L"
    ),
    "fewshapes": lambda root: (make_shapes(root, 25, seed=3, split="train"), make_shapes(root, 100, 4, "test")),
    "many": lambda root: make_glyphs(root, "ABCDEFGHIJKLMNOPQRSTUVWXYabcdefghijkmnopqrstuvwxy", 40, colour=True),
    "micrographs": lambda root: make_micrographs(root, 300),
}


def run(root: Path, kinds: list[str], configs: list[str], seeds: int) -> list[dict]:
    import cnnkit  # here: `make` needs no torch

    rows = []
    for kind in kinds:
        for config in configs:
            runs = [
                _timed(cnnkit, root / kind, root / "runs" / f"{kind}-{config}", {**CONFIGS[config], "seed": seed})
                for seed in range(seeds)
            ]
            accuracies = [r["accuracy"] for r in runs]
            rows.append(
                {
                    "folder": kind,
                    "config": config,
                    "model": runs[0]["model"],
                    "accuracy": statistics.mean(accuracies),
                    "low": min(accuracies),
                    "high": max(accuracies),
                    "wall": statistics.mean(r["wall"] for r in runs),
                    "warnings": sum(r["warnings"] for r in runs),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _timed(cnnkit, folder: Path, out: Path, settings: dict) -> dict:
    started = time.perf_counter()
    summary = _train(cnnkit, folder, out, settings)
    wall = time.perf_counter() - started
    run = {
        "model": summary["model"],
        "accuracy": summary["test_accuracy"],
        "wall": wall,
        "warnings": len(summary["warnings"]),
    }
    print(json.dumps({**run, "folder": folder.name, **settings}), file=sys.stderr, flush=True)
    return run


def _train(cnnkit, folder: Path, out: Path, settings: dict) -> dict:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    cnnkit.train(data=str(folder), out=str(out), skip_bad_images=True, report=False, **settings)  # training alone
    return json.loads((out / "summary.json").read_text())


def warm_caches(root: Path, kinds: list[str]) -> None:
    """Decode every folder once at each size a config will ask for, so no timed run pays for decoding."""
    import cnnkit

    for kind in kinds:
        for config in ("default", "simplecnn"):
            out = root / "runs" / "warm"
            _train(cnnkit, root / kind, out, {**CONFIGS[config], "steps": 1, "val_fraction": 0.1})


def table(rows: list[dict]) -> str:
    lines = [
        "| folder | config | model | test accuracy (mean) | lowest-highest | wall s (mean) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['folder']} | {r['config']} | {r['model']} | {r['accuracy']:.4f} | {r['low']:.3f}-{r['high']:.3f} "
        f"| {r['wall']:.1f} |"
        for r in rows
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("make", "run"))
    parser.add_argument("root", type=Path)
    parser.add_argument("--kinds", nargs="+", default=list(FOLDERS), choices=list(FOLDERS))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", type=int, default=3, help="runs of each config, seeds 0 to N-1 (default 3)")
    args = parser.parse_args()
    if args.action == "make":
        for kind in args.kinds:
            FOLDERS[kind](args.root / kind)
            print(f"made {args.root / kind}", file=sys.stderr)
        return
    warm_caches(args.root, args.kinds)
    print(table(run(args.root, args.kinds, args.configs, args.seeds)))


if __name__ == "__main__":
    main()
